"""``verify --reproduce MASTER``: an untouched producer file (onebitllms, bitnet.cpp, llama.cpp, made
here by the producers themselves) passes naming its recipe, an unrecorded ARM layout included;
one flipped code, one changed scale or one zeroed tensor fails naming the tensor."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FIXTURES, cli
from safetensors.torch import load_file, save_file

from bitconvert.errors import UsageError
from bitconvert.formats.gguf.parser import GGUFFile
from bitconvert.verify.reproduce import verify_reproduce

MASTER = FIXTURES / "llama-master"
TARGET = "model.layers.1.mlp.up_proj.weight"


@pytest.fixture(scope="module")
def gguf_master(wide_checkpoint) -> Path:
    """The wide 1bitLLM master (fp16 latent weights), what the GGUF producers convert here."""
    return wide_checkpoint["1bitllm-master"]


def edited_copy(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def failures(report) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for c in report.failures:
        out.setdefault(c.name, []).append(c.tensor)
    return out


def test_untouched_onebitllms_file_passes_naming_its_recipe(onebitllms_output):
    report = verify_reproduce(onebitllms_output, MASTER)
    assert report.passed, [c.detail for c in report.failures]
    assert report.figures["recipe"] == "onebitllms"
    assert report.checks[0].detail == "recipe onebitllms reproduces it bit for bit"
    assert report.figures["recipes"]["transformers"]["codes_differing"] > 0


def test_transformers_recipe_alone_names_the_difference(onebitllms_output):
    report = verify_reproduce(onebitllms_output, MASTER, recipe="transformers")
    assert not report.passed
    assert "no recipe reproduces it; closest: transformers" in report.checks[0].detail
    assert "reproduce.codes" in failures(report) or "reproduce.scale" in failures(report)


def test_one_flipped_code_fails_naming_the_tensor(onebitllms_output, tmp_path):
    def flip(t):
        packed = t[TARGET]
        byte = int(packed[3, 5])
        packed[3, 5] = (byte & ~3) | (2 if byte & 3 != 2 else 0)  # another valid code in the lowest field

    bad = edited_copy(onebitllms_output, tmp_path / "flipped", flip)
    report = verify_reproduce(bad, MASTER)
    assert failures(report) == {"reproduce.recipe": [None], "reproduce.codes": [TARGET]}
    check = next(c for c in report.failures if c.name == "reproduce.codes")
    assert check.figure == 1 and "first at [3, 5]" in check.detail
    assert report.figures["recipe"] == "onebitllms"  # still the closest


def test_one_changed_scale_fails_naming_the_tensor(onebitllms_output, tmp_path):
    name = TARGET.replace("weight", "weight_scale")

    def nudge(t):
        t[name] = (t[name].float() * 1.01).to(torch.bfloat16)

    report = verify_reproduce(edited_copy(onebitllms_output, tmp_path / "scaled", nudge), MASTER)
    assert failures(report) == {"reproduce.recipe": [None], "reproduce.scale": [TARGET]}
    check = next(c for c in report.failures if c.name == "reproduce.scale")
    assert "scale differs" in check.detail and 0.001 < check.figure < 0.02


def test_one_zeroed_tensor_fails_naming_it(onebitllms_output, tmp_path):
    def zero(t):
        t[TARGET] = torch.full_like(t[TARGET], 0b01010101)  # four codes 0 per byte

    report = verify_reproduce(edited_copy(onebitllms_output, tmp_path / "zeroed", zero), MASTER)
    f = failures(report)
    assert f["reproduce.nondegenerate"] == [TARGET] and f["reproduce.codes"] == [TARGET]
    assert next(c for c in report.failures if c.name == "reproduce.nondegenerate").detail == "tensor all zero"


def test_what_cannot_be_reproduced_is_refused(onebitllms_output):
    with pytest.raises(UsageError, match="does not write hf-packed"):
        verify_reproduce(onebitllms_output, MASTER, recipe="llama.cpp")
    with pytest.raises(UsageError, match="rebuilds hf-packed or gguf"):
        verify_reproduce(MASTER, MASTER)


def flip_first_code(path: Path, dst: Path, tensor: str) -> Path:
    f = GGUFFile(path)
    t = f.tensors[tensor]
    data = bytearray(path.read_bytes())
    data[t.offset] ^= 0b11000000 if data[t.offset] >> 6 != 1 else 0b01000000 | 0b10000000  # keep it a valid code
    dst.write_bytes(bytes(data))
    return dst


def test_bitnet_cpp_file_is_named_and_a_flip_is_found(gguf_master, bitnet_cpp_gguf, tmp_path):
    theirs = bitnet_cpp_gguf(gguf_master)
    report = verify_reproduce(theirs, gguf_master)
    assert report.passed, [c.detail for c in report.failures]
    assert report.figures["recipe"] == "bitnet.cpp"
    bad = flip_first_code(theirs, tmp_path / "flipped.gguf", "blk.0.attn_q.weight")
    f = failures(verify_reproduce(bad, gguf_master))
    assert f["reproduce.codes"] == ["model.layers.0.self_attn.q_proj.weight"]
    assert f["reproduce.bytes"] == ["model.layers.0.self_attn.q_proj.weight"]


def test_llama_cpp_file_is_named(gguf_master, llama_cpp_gguf):
    theirs = llama_cpp_gguf(gguf_master, "tq2_0")
    report = verify_reproduce(theirs, gguf_master)
    assert report.passed, [c.detail for c in report.failures]
    assert report.figures["recipe"] == "llama.cpp"


def test_the_command_line_reports_json_junit_and_exit_codes(onebitllms_output, tmp_path):
    ok = cli("verify", onebitllms_output, "--reproduce", MASTER, "--json")
    assert ok.returncode == 0, ok.stderr
    data = json.loads(ok.stdout)
    assert data["figures"]["recipe"] == "onebitllms" and data["passed"]
    bad = edited_copy(
        onebitllms_output, tmp_path / "z", lambda t: t.__setitem__(TARGET, torch.full_like(t[TARGET], 85))
    )
    junit = tmp_path / "r.xml"
    failed = cli("verify", bad, "--reproduce", MASTER, "--recipe", "onebitllms", "--junit", junit)
    assert failed.returncode == 1
    assert "reproduce.nondegenerate" in junit.read_text() and TARGET in failed.stderr
    assert np.isfinite(data["figures"]["failed"])


def rewritten_as(path: Path, dst: Path, layout: str) -> Path:
    """The same file with every I2_S tensor's codes re-laid out (sizes are equal), no layout key."""
    from bitconvert.formats.gguf import i2s_layouts

    f = GGUFFile(path)
    data = bytearray(path.read_bytes())
    for t in f.tensors.values():
        if t.type_name == "I2_S":
            raw = f.read_bytes(t.name)
            codes, scale = i2s_layouts.decode(raw, t.shape, "x86")
            data[t.offset : t.offset + t.nbytes] = i2s_layouts.encode(codes, float(scale[0]), layout).tobytes()
    dst.write_bytes(bytes(data))
    return dst


def test_unrecorded_arm_layout_is_found_by_reproduce(gguf_master, bitnet_cpp_gguf, tmp_path):
    theirs = bitnet_cpp_gguf(gguf_master)
    arm = rewritten_as(theirs, tmp_path / "arm.gguf", "arm")
    report = verify_reproduce(arm, gguf_master)
    assert report.passed, [c.detail for c in report.failures]
    assert report.figures["i2s_layout"] == "arm" and report.figures["recipe"] == "bitnet.cpp"
