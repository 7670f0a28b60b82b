"""`bitconvert verify`: passes on good checkpoints and conversions, fails naming the tensor on damage.

Damaged copies are written with the official safetensors library (not bitconvert's writer), one
defect each: a flipped ternary code, a 2-bit code 3, a scale one bf16 ulp off, a missing tensor,
a wrong shape, a truncated file.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
import torch
from conftest import FIXTURES, make_checkpoint, read_all, run_cli
from safetensors.torch import save_file
from typer.testing import CliRunner

from bitconvert.cli import app
from bitconvert.convert import convert
from bitconvert.ternary import LinearClass
from bitconvert.verify import Thresholds, verify_against, verify_integrity, verify_roundtrip

PACKED = FIXTURES / "bitnet-2b4t-packed"
LLAMA_PACKED = FIXTURES / "llama-packed"
Q = "model.layers.1.self_attn.q_proj.weight"
Q_SCALE = "model.layers.1.self_attn.q_proj.weight_scale"
SOURCES = [f"{kind}-{layout}" for layout in ("master", "packed") for kind in ("bitnet-2b4t", "1bitllm", "llama")]


def damaged_copy(src: Path, out: Path, edit) -> Path:
    """Copy ``src`` and rewrite its model.safetensors after ``edit(tensors)`` changed the dict."""
    shutil.copytree(src, out)
    tensors = read_all(src)
    edit(tensors)
    (out / "model.safetensors").unlink()
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def cli(*args):
    """The CLI in this process (fast); ``run_cli`` checks the real entry point where it matters."""
    r = CliRunner().invoke(app, [str(a) for a in args])
    r.returncode = r.exit_code
    return r


def failing(result) -> list[dict]:
    data = json.loads(result.stdout)
    return [c for c in data["checks"] if not c["passed"]]


def fails(report) -> list[tuple[str, str | None]]:
    return [(c.name, c.tensor) for c in report.failures]


def verify_json(*args):
    r = cli("verify", *args, "--json")
    assert r.returncode in (0, 1), r.stderr
    return r, json.loads(r.stdout)


# --- passes -------------------------------------------------------------------------------------


def test_every_fixture_passes(fixture_dir):
    report = verify_integrity(fixture_dir)
    assert report.passed, fails(report)
    names = {c.name for c in report.checks}
    assert {"open", "config", "tensor_set", "readable", "finite", "side_files", "quantization_config"} <= names
    if "packed" in fixture_dir.name:
        codes = [c for c in report.checks if c.name == "codes"]
        scales = [c for c in report.checks if c.name == "scale"]
        assert len(codes) == len(scales) == 14 and all(c.figure == 0 for c in codes)
        assert all(c.figure > 0 for c in scales)


def test_every_fixture_passes_from_the_command_line():
    for name in SOURCES[:2]:
        r = run_cli("verify", FIXTURES / name)
        assert r.returncode == 0 and "PASSED" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("source", SOURCES)
def test_pack_and_unpack_outputs_pass_against_their_source(tmp_path, source):
    src = FIXTURES / source
    packed, unpacked = tmp_path / "packed", tmp_path / "unpacked"
    convert(src, packed, "hf-packed")
    convert(packed, unpacked, "hf-bf16")
    for out, ref in ((packed, src), (unpacked, packed), (unpacked, src)):
        assert verify_integrity(out).passed
        report = verify_against(out, ref)
        assert report.passed, (out.name, ref.name, fails(report))
        codes = [c for c in report.checks if c.name == "codes"]
        assert len(codes) == 14 and all(c.figure == 0 for c in codes)
        assert report.figures["scale_max_rel_diff"] == 0 and report.figures["tensor_max_abs_diff"] == 0


def test_repacked_with_the_other_convention_needs_a_scale_tolerance(tmp_path):
    """bitlinear <-> autobitlinear re-expresses scales (1/x in bf16): exact codes, scales within 1 ulp."""
    out = tmp_path / "bitlinear"
    convert(PACKED, out, "hf-packed", {"linear_class": LinearClass.BITLINEAR})
    assert verify_against(out, PACKED).passed  # compared as SRC stores it: what the converter had to write
    back = verify_against(PACKED, out)
    worst = back.figures["scale_max_rel_diff"]
    assert 0 < worst < 2**-7 and not back.passed  # the reciprocal of a reciprocal, rounded twice
    assert {c.name for c in back.failures} == {"scale"}
    assert verify_against(PACKED, out, thresholds=Thresholds(scale_rtol=2**-7)).passed


# --- failures name the tensor -----------------------------------------------------------------


def nonzero_field(w: torch.Tensor) -> tuple[int, int]:
    """A byte position whose lowest 2-bit field (plane 0) holds a code of -1 or +1."""
    r, c = (int(v) for v in torch.nonzero(((w & 3) == 0) | ((w & 3) == 2))[0])
    return r, c


def test_flipped_code_fails_against_reference(tmp_path):
    where = {}

    def flip(t):
        w = t[Q].clone()
        r, c = nonzero_field(w)
        w[r, c] = int(w[r, c]) ^ 0b10  # field 0 <-> 2: -1 <-> +1
        t[Q] = w
        where["rc"] = (r, c)

    bad = damaged_copy(PACKED, tmp_path / "bad", flip)
    assert verify_integrity(bad).passed  # still a valid checkpoint on its own
    r, data = verify_json(bad, "--against", PACKED)
    assert r.returncode == 1 and not data["passed"]
    (fail,) = failing(r)
    assert fail["name"] == "against.codes" and fail["tensor"] == Q and fail["figure"] == 1
    assert f"row {where['rc'][0]}, column {where['rc'][1]}" in fail["detail"]
    human = run_cli("verify", bad, "--against", PACKED)  # the real entry point, as CI runs it
    assert human.returncode == 1 and "FAILED" in human.stdout
    assert f"FAIL against.codes: tensor '{Q}': figure 1 (limit 0)" in human.stderr


def test_code_3_fails_integrity(tmp_path):
    def three(t):
        w = t[Q].clone()
        w[2, 7] = int(w[2, 7]) | (3 << 4)  # plane 2: unpacked row 2 + 2 * 64/4 = 34
        t[Q] = w

    report = verify_integrity(damaged_copy(PACKED, tmp_path / "bad", three))
    assert fails(report) == [("readable", Q)]
    assert "code 3" in report.failures[0].detail and "row 34, column 7" in report.failures[0].detail


def test_scale_one_ulp_off_fails_against_reference(tmp_path):
    def nudge(t):
        s = t[Q_SCALE].clone()
        s.view(torch.int16)[0] += 1  # the next bf16 value up
        t[Q_SCALE] = s

    bad = damaged_copy(PACKED, tmp_path / "bad", nudge)
    assert verify_integrity(bad).passed
    r, data = verify_json(bad, "--against", PACKED)
    assert r.returncode == 1
    (fail,) = failing(r)
    assert fail["name"] == "against.scale" and fail["tensor"] == Q
    orig = float(read_all(PACKED)[Q_SCALE].float())
    assert fail["figure"] == pytest.approx(float(read_all(bad)[Q_SCALE].float()) / orig - 1, rel=1e-6)
    assert 0 < fail["figure"] < 2**-7
    assert cli("verify", bad, "--against", PACKED, "--scale-rtol", "0.01").returncode == 0


def test_missing_tensor_fails(tmp_path):
    name = "model.layers.0.mlp.ffn_sub_norm.weight"
    report = verify_integrity(damaged_copy(PACKED, tmp_path / "bad", lambda t: t.pop(name)))
    assert fails(report) == [("open", name)] and "missing" in report.failures[0].detail


def test_wrong_shape_fails(tmp_path):
    name = "model.layers.1.post_attention_layernorm.weight"
    report = verify_integrity(damaged_copy(PACKED, tmp_path / "bad", lambda t: t.__setitem__(name, t[name][:-1])))
    assert fails(report) == [("open", name)]
    assert "[63]" in report.failures[0].detail and "[64]" in report.failures[0].detail


def test_unexpected_tensor_fails(tmp_path):
    report = verify_integrity(
        damaged_copy(LLAMA_PACKED, tmp_path / "bad", lambda t: t.__setitem__("model.extra.weight", torch.ones(4)))
    )
    assert fails(report) == [("open", "model.extra.weight")] and "unexpected" in report.failures[0].detail


def test_truncated_file_fails_naming_the_cut_tensor(tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(PACKED, bad)
    f = bad / "model.safetensors"
    os.truncate(f, f.stat().st_size - 10)
    raw = (PACKED / "model.safetensors").read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    header.pop("__metadata__", None)
    last = max(header, key=lambda k: header[k]["data_offsets"][1])  # stored last: the one cut short
    r = cli("verify", bad, "--json")
    assert r.returncode == 1
    (fail,) = failing(r)
    assert fail["tensor"] == last and "truncated" in fail["detail"]
    from safetensors import safe_open

    with pytest.raises(Exception):  # the official reader agrees the file is broken
        with safe_open(str(f), "pt") as st:
            st.get_tensor(last)


def test_nan_in_dense_tensor_fails(tmp_path):
    name = "model.norm.weight"

    def poison(t):
        w = t[name].clone()
        w[[3, 9]] = float("nan")
        t[name] = w

    report = verify_integrity(damaged_copy(PACKED, tmp_path / "bad", poison))
    assert fails(report) == [("finite", name)] and report.failures[0].figure == 2


def test_config_inconsistency_fails(tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(PACKED, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["eos_token_id"] = 100000
    (bad / "config.json").write_text(json.dumps(cfg))
    report = verify_integrity(bad)
    assert fails(report) == [("config", None)] and "eos_token_id 100000" in report.failures[0].detail


def test_missing_tokenizer_fails(tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(PACKED, bad)
    (bad / "tokenizer.json").unlink()
    report = verify_integrity(bad)
    assert fails(report) == [("side_files", None)] and "tokenizer" in report.failures[0].detail


# --- manifest, JUnit, exit codes --------------------------------------------------------------


def test_manifest_round_trip_and_tamper(tmp_path):
    manifest = tmp_path / "m.json"
    assert cli("verify", PACKED, "--manifest", manifest).returncode == 0 and manifest.is_file()
    data = json.loads(manifest.read_text())
    assert len(data["tensors"]) == 24 and all(len(v["sha256"]) == 64 for v in data["tensors"].values())
    assert cli("verify", PACKED, "--manifest-check", manifest).returncode == 0
    # the same model re-packed into shards has the same content
    resharded = tmp_path / "resharded"
    convert(PACKED, resharded, "hf-packed", {"max_shard_size": 20_000})
    assert len(list(resharded.glob("*.safetensors"))) > 1
    report = verify_integrity(resharded, manifest_check=manifest)
    assert report.passed and sum(c.name == "manifest" for c in report.checks) == 24

    def flip(t):
        w = t[Q].clone()
        r, c = nonzero_field(w)
        w[r, c] = int(w[r, c]) ^ 0b10
        t[Q] = w

    bad = damaged_copy(PACKED, tmp_path / "bad", flip)
    r, d = verify_json(bad, "--manifest-check", manifest)
    assert r.returncode == 1
    assert [(f["name"], f["tensor"]) for f in failing(r)] == [("manifest", Q)]
    # a failing checkpoint writes no manifest
    out = tmp_path / "not-written.json"
    assert cli("verify", bad, "--manifest-check", manifest, "--manifest", out).returncode == 1
    assert not out.exists()


def test_junit_has_one_case_per_check(tmp_path):
    def nudge(t):
        s = t[Q_SCALE].clone()
        s.view(torch.int16)[0] -= 1
        t[Q_SCALE] = s

    bad = damaged_copy(PACKED, tmp_path / "bad", nudge)
    junit = tmp_path / "report.xml"
    r = cli("verify", bad, "--against", PACKED, "--junit", junit, "--json")
    assert r.returncode == 1
    data = json.loads(r.stdout)
    suite = ET.parse(junit).getroot().find("testsuite")
    cases = suite.findall("testcase")
    assert len(cases) == data["checks_total"] == int(suite.get("tests"))
    failed = [c for c in cases if c.find("failure") is not None]
    assert int(suite.get("failures")) == len(failed) == 1
    assert failed[0].get("classname") == "verify.against.scale" and failed[0].get("name") == Q
    assert "figure" in failed[0].find("failure").get("message")


def test_usage_errors_exit_2(tmp_path):
    assert run_cli("verify", tmp_path / "nope").returncode == 2
    assert cli("verify", PACKED, "--logits").returncode == 2
    assert cli("verify", PACKED, "--roundtrip", "no-such-format").returncode == 2
    assert cli("verify", PACKED, "--manifest-check", tmp_path / "nope.json").returncode == 2
    r = cli("verify", PACKED, "--against", PACKED, "--logits", "--tokens", "1,x")
    assert r.returncode == 2 and "'x'" in r.stderr
    r = cli("verify", PACKED, "--against", PACKED, "--logits", "--tokens", "1,99999")
    assert r.returncode == 2 and "99999" in r.stderr


# --- logits and round trips --------------------------------------------------------------------


def test_logits_agree_for_exact_conversions(tmp_path):
    """A master and its pack with fp32 bitlinear scales are the same model: the runtime agrees."""
    master = FIXTURES / "llama-master"
    packed = tmp_path / "packed"
    convert(master, packed, "hf-packed", {"linear_class": LinearClass.BITLINEAR, "scale_dtype": "F32"})
    r, data = verify_json(packed, "--against", master, "--logits")
    assert r.returncode == 0, failing(r)
    assert data["figures"]["against.logits_max_abs_diff"] == 0.0
    assert data["figures"]["against.argmax_agreement"] == 1.0


def test_logits_reveal_what_unpack_changes_for_transformers(tmp_path):
    """unpack output: same codes and scales for bitconvert, but online absmean sees p * scale."""
    unpacked = tmp_path / "u"
    convert(PACKED, unpacked, "hf-bf16")
    report = verify_against(unpacked, PACKED, logits=True)
    assert {c.name for c in report.failures} <= {"logits", "argmax"} and not report.passed
    assert report.figures["logits_max_abs_diff"] > 1e-2
    assert any("p x scale" in n for n in report.notes)


@pytest.mark.parametrize("source", ["bitnet-2b4t-master", "1bitllm-packed", "llama-packed"])
@pytest.mark.parametrize("fmt", ["hf-packed", "hf-bf16"])
def test_roundtrip_hf_formats(source, fmt):
    report = verify_roundtrip(FIXTURES / source, fmt)
    assert report.passed, fails(report)
    assert {c.name for c in report.checks} >= {"convert", "convert_back", "back.codes", "back.scale", "there.codes"}


def test_roundtrip_nanotron_master():
    # no Nanotron model has 2B-4T's sub-norms: lossy for Nanotron, kept beside it for the way back
    report = verify_roundtrip(FIXTURES / "bitnet-2b4t-master", "nanotron", options={"allow_lossy": True})
    assert report.passed, fails(report)


def test_roundtrip_gguf_with_logits(tmp_path):
    src = make_checkpoint(tmp_path / "src", "bitnet-2b4t", "packed", hidden=256, intermediate=512, heads=4, kv_heads=2)
    r, data = verify_json(src, "--roundtrip", "gguf", "--logits")
    assert r.returncode == 0, failing(r)
    assert data["figures"]["roundtrip.back.logits_max_abs_diff"] == 0.0


def test_roundtrip_reports_a_conversion_that_cannot_be_made():
    report = verify_roundtrip(FIXTURES / "llama-packed", "gguf")  # 64-wide rows: no TQ2_0 blocks
    (fail,) = report.failures
    assert fail.name == "convert" and fail.tensor and "256" in fail.detail


def test_integrity_api_report_shape():
    report = verify_integrity(PACKED)
    d = report.to_dict()
    assert report.passed and d["passed"] and d["checks_failed"] == 0
    assert set(d["checks"][0]) == {"name", "passed", "tensor", "figure", "threshold", "detail"}
    assert report.manifest is not None and len(report.manifest["tensors"]) == 24


def test_digests_are_skipped_when_no_manifest_is_wanted_and_checks_stay_the_same():
    hashed, plain = verify_integrity(PACKED), verify_integrity(PACKED, digests=False)
    assert hashed.manifest is not None and plain.manifest is None
    assert [(c.name, c.passed, c.detail, c.tensor) for c in plain.checks] == [
        (c.name, c.passed, c.detail, c.tensor) for c in hashed.checks
    ]


def test_200000_failing_manifest_entries_report_in_linear_time(tmp_path):
    """Each manifest entry the checkpoint lacks is one failed check; 200,000 of them are checked,
    summarized and written as JSON and JUnit through the library in seconds (once over two minutes)."""
    import time

    from bitconvert.verify import VerifyRequest, run

    entry = {"kind": "dense", "shape": [1], "dtype": "F32", "sha256": "0" * 64}
    manifest = {"bitconvert_manifest": 1, "tensors": {f"model.extra.{i}.weight": entry for i in range(200_000)}}
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    start = time.perf_counter()
    report = run(PACKED, VerifyRequest(manifest_check=tmp_path / "m.json"))
    report.write_json(tmp_path / "r.json")
    report.write_junit(tmp_path / "r.xml")
    summary, worst = report.summary(), report.largest_figures()
    elapsed = time.perf_counter() - start
    assert len(report.failures) == 200_000 + 24  # the manifest's tensors missing, the checkpoint's not in it
    assert summary["manifest"] == {"passed": 0, "failed": 200_024} and worst["manifest"] is None
    assert json.loads((tmp_path / "r.json").read_text())["checks_failed"] == 200_024
    assert (tmp_path / "r.xml").read_text().count('type="VerifyFailure"') == 200_024
    assert elapsed < 10, f"{elapsed:.1f} s"
    print(f"\n200,000 failing manifest entries: checked and reported in {elapsed:.1f} s")


def test_run_composes_the_checks_and_writes_the_manifest_only_when_src_passes(tmp_path):
    from bitconvert.errors import UsageError
    from bitconvert.verify import VerifyRequest, run

    manifest = tmp_path / "m.json"
    report = run(PACKED, VerifyRequest(against=LLAMA_PACKED, target="transformers", manifest=manifest))
    names = {c.name for c in report.checks}
    assert {"open", "codes", "against.config", "target.transformers.format"} <= names
    assert report.against == str(LLAMA_PACKED) and not report.passed  # another model: the config differs
    assert not manifest.exists() and report.manifest_written is None
    assert any("manifest not written" in n for n in report.notes)
    report = run(PACKED, VerifyRequest(manifest=manifest))
    assert report.passed and report.manifest_written == str(manifest)
    assert json.loads(manifest.read_text())["tensors"] == report.manifest["tensors"]
    assert run(PACKED, VerifyRequest(manifest_check=manifest)).passed
    for bad in (VerifyRequest(logits=True), VerifyRequest(tokens=[1]), VerifyRequest(recipe="onebitllms"),
                VerifyRequest(thresholds=Thresholds(atol=-1)), VerifyRequest(target="vllm"),
                VerifyRequest(manifest_check=tmp_path / "nope.json"), VerifyRequest(roundtrip="nope")):
        with pytest.raises(UsageError):
            run(PACKED, bad)


def test_verifying_and_inspecting_import_no_torch(tmp_path):
    """verify (with and without digests, against a reference, for a consumer) and inspect of every
    fixture and of GGUF and Nanotron outputs run on numpy: torch is never imported."""
    import subprocess
    import sys

    gguf, nt = tmp_path / "m.gguf", tmp_path / "nt"
    convert(FIXTURES / "bitnet-2b4t-256-packed", gguf, "gguf", {"gguf_type": "i2_s"})
    convert(FIXTURES / "llama-packed", nt, "nanotron", {"tp": 2, "allow_approximate": True, "allow_lossy": True})
    sources = [str(p) for p in sorted(FIXTURES.iterdir()) if (p / "config.json").is_file()] + [str(gguf), str(nt)]
    script = (
        "import sys\n"
        "from bitconvert.describe import describe_checkpoint\n"
        "from bitconvert.verify import VerifyRequest, run, verify_integrity\n"
        f"for src in {sources!r}:\n"
        "    assert verify_integrity(src, digests=False).passed and verify_integrity(src).passed, src\n"
        "    assert run(src, VerifyRequest(against=src, target='transformers')).checks, src\n"
        "    assert describe_checkpoint(src)['tensors'], src\n"
        "print('torch' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "False"
