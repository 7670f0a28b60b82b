"""``verify --against`` and ``--roundtrip``: conversions pass against their source with zero code and
scale differences; a flipped code or a scale one bf16 ulp off fails naming the tensor (and the
exit code says so on the real command line); re-expressed scales need a stated tolerance; logits
show what unpack changes for transformers; round trips through every format come back exact, or
say which conversion cannot be made."""

from __future__ import annotations

import pytest
import torch
from conftest import FIXTURES, cli, read_all, run_cli
from verify_tools import PACKED, SOURCES, Q, damaged_copy, failing, fails, nonzero_field, verify_json

from bitconvert.convert import convert
from bitconvert.ternary import LinearClass
from bitconvert.verify import Thresholds, verify_against, verify_integrity, verify_roundtrip

Q_SCALE = "model.layers.1.self_attn.q_proj.weight_scale"


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


def test_a_flipped_code_fails_against_the_reference(tmp_path):
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


def test_a_scale_one_ulp_off_fails_against_the_reference(tmp_path):
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
def test_round_trips_through_the_hf_formats_are_exact(source, fmt):
    report = verify_roundtrip(FIXTURES / source, fmt)
    assert report.passed, fails(report)
    assert {c.name for c in report.checks} >= {"convert", "convert_back", "back.codes", "back.scale", "there.codes"}


def test_a_round_trip_through_nanotron_is_exact():
    # no Nanotron model has 2B-4T's sub-norms: lossy for Nanotron, kept beside it for the way back
    report = verify_roundtrip(FIXTURES / "bitnet-2b4t-master", "nanotron", options={"allow_lossy": True})
    assert report.passed, fails(report)


def test_a_round_trip_through_gguf_keeps_the_logits(wide_checkpoint):
    src = wide_checkpoint["bitnet-2b4t-packed"]
    r, data = verify_json(src, "--roundtrip", "gguf", "--logits")
    assert r.returncode == 0, failing(r)
    assert data["figures"]["roundtrip.back.logits_max_abs_diff"] == 0.0


def test_a_round_trip_names_the_conversion_that_cannot_be_made():
    report = verify_roundtrip(FIXTURES / "llama-packed", "gguf")  # 64-wide rows: no TQ2_0 blocks
    (fail,) = report.failures
    assert fail.name == "convert" and fail.tensor and "256" in fail.detail


def test_our_gguf_of_a_master_passes_on_its_own_and_against_it(wide_checkpoint, tmp_path):
    # the 2B-4T master's config says quantization_mode online; the GGUF holds codes and scales
    master = wide_checkpoint["bitnet-2b4t-master"]
    out = tmp_path / "m.gguf"
    assert cli("convert", master, out, "--to", "gguf").returncode == 0
    r, report = verify_json(out)
    assert r.returncode == 0 and report["passed"], failing(r)
    r, report = verify_json(out, "--against", master)
    assert r.returncode == 0 and report["passed"], failing(r)
