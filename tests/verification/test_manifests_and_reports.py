"""Manifests and reports: a manifest written by a passing check verifies the same content in any
sharding and names the tensor that changed; JUnit has one case per check; 200,000 failing
manifest entries are checked and reported in seconds; ``verify.run`` composes every check and
writes a manifest only when SRC passes."""

from __future__ import annotations

import json
from xml.etree import ElementTree as ET

import pytest
import torch
from conftest import cli
from verify_tools import LLAMA_PACKED, PACKED, Q, damaged_copy, failing, nonzero_field, verify_json

from bitconvert.convert import convert
from bitconvert.verify import Thresholds, verify_integrity

Q_SCALE = "model.layers.1.self_attn.q_proj.weight_scale"


def test_a_manifest_verifies_any_sharding_and_names_a_changed_tensor(tmp_path):
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


def _report_missing(tmp_path, n: int) -> tuple[float, object]:
    """CPU seconds to check, summarize and write JSON and JUnit for a manifest of ``n`` entries the
    checkpoint lacks (CPU time: what the work costs, whatever else the machine runs)."""
    import time

    from bitconvert.verify import VerifyRequest, run

    entry = {"kind": "dense", "shape": [1], "dtype": "F32", "sha256": "0" * 64}
    manifest = {"bitconvert_manifest": 1, "tensors": {f"model.extra.{i}.weight": entry for i in range(n)}}
    (tmp_path / f"m{n}.json").write_text(json.dumps(manifest))
    start = time.process_time()
    report = run(PACKED, VerifyRequest(manifest_check=tmp_path / f"m{n}.json"))
    report.write_json(tmp_path / f"r{n}.json")
    report.write_junit(tmp_path / f"r{n}.xml")
    report.summary(), report.largest_figures()
    return time.process_time() - start, report


def test_200000_failing_manifest_entries_report_in_linear_time(tmp_path):
    """Each manifest entry the checkpoint lacks is one failed check; 200,000 of them are checked,
    summarized and written as JSON and JUnit in seconds of CPU (once over two minutes), and ten times
    the entries cost about ten times the time, not a hundred."""
    small, _ = _report_missing(tmp_path, 20_000)
    elapsed, report = _report_missing(tmp_path, 200_000)
    summary, worst = report.summary(), report.largest_figures()
    assert len(report.failures) == 200_000 + 24  # the manifest's tensors missing, the checkpoint's not in it
    assert summary["manifest"] == {"passed": 0, "failed": 200_024} and worst["manifest"] is None
    assert json.loads((tmp_path / "r200000.json").read_text())["checks_failed"] == 200_024
    assert (tmp_path / "r200000.xml").read_text().count('type="VerifyFailure"') == 200_024
    assert elapsed < 10, f"{elapsed:.1f} CPU-s"
    assert elapsed < 25 * max(small, 0.05), f"20,000 entries {small:.2f} CPU-s, 200,000 {elapsed:.2f} CPU-s"
    print(f"\n200,000 failing manifest entries: checked and reported in {elapsed:.1f} CPU-s ({small:.2f} for 20,000)")


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
    for bad in (
        VerifyRequest(logits=True),
        VerifyRequest(tokens=[1]),
        VerifyRequest(recipe="onebitllms"),
        VerifyRequest(thresholds=Thresholds(atol=-1)),
        VerifyRequest(target="vllm"),
        VerifyRequest(manifest_check=tmp_path / "nope.json"),
        VerifyRequest(roundtrip="nope"),
    ):
        with pytest.raises(UsageError):
            run(PACKED, bad)
