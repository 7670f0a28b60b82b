"""Each --recipe against the real producer it reproduces, bit for bit.

onebitllms runs from PyPI (test extra); llama.cpp's and bitnet.cpp's converters run from
../shared/peers (see peer_tools.py for what lets them run here).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FIXTURES, make_checkpoint, read_all
from peer_tools import run_bitnet_converter, run_llama_cpp_converter

from bitconvert.convert import convert
from bitconvert.errors import UsageError
from bitconvert.formats.gguf import i2s_layouts
from bitconvert.formats.gguf.parser import GGUFFile
from bitconvert.dtypes import Dense
from bitconvert.ternary.recipes import Recipe, converter_fold, onebitllms_quantize, tq_block_d
from bitconvert.ternary import absmean_quantize, pack_codes

GGUF_DIMS = {"hidden": 256, "intermediate": 512, "layers": 2, "heads": 4, "kv_heads": 2}  # TQ rows: multiples of 256


def run_onebitllms(master: Path, out: Path) -> Path:
    q = pytest.importorskip("onebitllms.utils.quantization_utils", reason="pip install onebitllms==0.0.4 (test extra)")
    q.quantize_to_1bit(str(master), str(out))
    return out


@pytest.fixture(scope="module")
def onebitllms_out(tmp_path_factory) -> Path:
    return run_onebitllms(FIXTURES / "llama-master", tmp_path_factory.mktemp("onebitllms") / "out")


def test_onebitllms_recipe_reproduces_onebitllms(onebitllms_out, tmp_path):
    ours = tmp_path / "ours"
    convert(FIXTURES / "llama-master", ours, "hf-packed", {"recipe": "onebitllms"})
    theirs_t, ours_t = read_all(onebitllms_out), read_all(ours)
    assert sorted(theirs_t) == sorted(ours_t)
    for name, t in theirs_t.items():
        assert ours_t[name].dtype == t.dtype, name
        assert torch.equal(ours_t[name], t), name
    cfg_theirs = json.loads((onebitllms_out / "config.json").read_text())
    cfg_ours = json.loads((ours / "config.json").read_text())
    for key in ("is_bitnet_config", "pretraining_tp", "quantization_config"):
        assert cfg_ours[key] == cfg_theirs[key], key


def test_transformers_recipe_differs_from_onebitllms(onebitllms_out, tmp_path):
    """The reason the recipe exists: fp32 and bf16 arithmetic disagree in codes and scales."""
    ours = tmp_path / "ours"
    convert(FIXTURES / "llama-master", ours, "hf-packed", {"linear_class": "bitlinear"})
    theirs_t, ours_t = read_all(onebitllms_out), read_all(ours)
    packed = [n for n in theirs_t if theirs_t[n].dtype == torch.uint8]
    bytes_differ = sum(int((theirs_t[n] != ours_t[n]).sum()) for n in packed)
    total = sum(theirs_t[n].numel() for n in packed)
    scales_differ = sum(not torch.equal(theirs_t[n], ours_t[n]) for n in theirs_t if n.endswith("weight_scale"))
    print(
        f"\ntransformers vs onebitllms: {bytes_differ} of {total} packed bytes, {scales_differ} of {len(packed)} scales"
    )
    assert bytes_differ > 0 and scales_differ > 0


def test_onebitllms_math_alone_matches_its_weight_quant():
    """The pure function against onebitllms' own _weight_quant on a bf16 tensor, codes and scale."""
    q = pytest.importorskip("onebitllms.utils.quantization_utils", reason="pip install onebitllms==0.0.4")
    w = torch.randn(64, 96, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16) * 0.02
    u, scale = q._weight_quant(w.clone())
    tw = onebitllms_quantize(Dense.from_torch(w))
    assert torch.equal(torch.from_numpy(tw.codes).to(torch.bfloat16), u)
    stored = Dense.from_bytes(tw.scale.data, tw.scale.dtype_name, (1,)).torch()
    assert stored.dtype == scale.dtype == torch.bfloat16 and torch.equal(stored, scale.reshape(1))


@pytest.mark.parametrize("kind", ["llama", "1bitllm"])
def test_onebitllms_refuses_what_it_cannot_reproduce(kind, tmp_path):
    with pytest.raises(UsageError, match="never requantized"):
        convert(FIXTURES / f"{kind}-packed", tmp_path / "o", "hf-packed", {"recipe": "onebitllms"})
    with pytest.raises(UsageError, match="autobitlinear"):
        convert(
            FIXTURES / "llama-master",
            tmp_path / "o",
            "hf-packed",
            {"recipe": "onebitllms", "linear_class": "autobitlinear"},
        )
    with pytest.raises(UsageError, match="--recipe must be one of transformers, onebitllms"):
        convert(FIXTURES / "llama-master", tmp_path / "o", "hf-packed", {"recipe": "llama.cpp"})


def test_recipe_leaves_already_ternary_floats_alone_and_says_so(tmp_path):
    unpacked = tmp_path / "unpacked"
    convert(FIXTURES / "llama-packed", unpacked, "hf-bf16")
    result = convert(unpacked, tmp_path / "repacked", "hf-packed", {"recipe": "onebitllms"})
    assert sum(result.report.ternary_sources.values()) == 14 and "quantized" not in result.report.ternary_sources
    assert any("not requantized with --recipe onebitllms" in w for w in result.report.warnings)
    original, repacked = read_all(FIXTURES / "llama-packed"), read_all(tmp_path / "repacked")
    assert all(torch.equal(original[n], repacked[n]) for n in original if original[n].dtype == torch.uint8)


# --- GGUF: the converters ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def masters(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("recipe-masters")
    return {
        kind: make_checkpoint(root / kind, kind, "master", **GGUF_DIMS, seed=7) for kind in ("1bitllm", "bitnet-2b4t")
    }


def quantized_tensors(path: Path) -> dict[str, bytes]:
    f = GGUFFile(path)
    return {
        t.name: bytes(f.read_bytes(t.name))
        for t in f.tensors.values()
        if t.type_name in ("TQ1_0", "TQ2_0", "I2_S")
    }


def as_bf16_master(master: Path, out: Path) -> Path:
    """The same model with bf16 weights: llama.cpp's converter folds those in fp32, not fp16."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(master, out)
    tensors = {k: v.to(torch.bfloat16) for k, v in load_file(str(master / "model.safetensors")).items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((out / "config.json").read_text())
    cfg["torch_dtype"] = "bfloat16"
    (out / "config.json").write_text(json.dumps(cfg))
    return out


@pytest.mark.parametrize("gguf_type,dtype", [("tq2_0", "f16"), ("tq1_0", "f16"), ("tq2_0", "bf16")])
def test_llama_cpp_recipe_reproduces_llama_cpp(masters, tmp_path, gguf_type, dtype):
    # 1bitLLM naming: llama.cpp's converter maps its sub-norms (inner_attn_ln, ffn_layernorm)
    master = masters["1bitllm"]  # an fp16 latent master, as 1bitLLM's
    if dtype == "bf16":
        master = as_bf16_master(master, tmp_path / "bf16-master")
    theirs = quantized_tensors(run_llama_cpp_converter(master, tmp_path / "theirs.gguf", gguf_type))
    convert(master, tmp_path / "ours.gguf", "gguf", {"gguf_type": gguf_type, "recipe": "llama.cpp"})
    ours = quantized_tensors(tmp_path / "ours.gguf")
    assert len(theirs) == 14 and sorted(theirs) == sorted(ours)
    for name in theirs:
        assert ours[name] == theirs[name], name


def test_bitnet_cpp_recipe_reproduces_bitnet_cpp(masters, tmp_path):
    for kind, master in masters.items():
        theirs = quantized_tensors(run_bitnet_converter(master, tmp_path / f"theirs-{kind}.gguf"))
        convert(master, tmp_path / f"ours-{kind}.gguf", "gguf", {"gguf_type": "i2_s", "recipe": "bitnet.cpp"})
        ours = quantized_tensors(tmp_path / f"ours-{kind}.gguf")
        assert len(theirs) == 14 and sorted(theirs) == sorted(ours)
        for name in theirs:
            assert ours[name] == theirs[name], (kind, name)


def test_converter_fold_codes_are_transformers_codes():
    w = torch.randn(32, 256, generator=torch.Generator().manual_seed(2)).to(torch.float16)
    tw = converter_fold(Dense.from_torch(w))
    codes, _ = absmean_quantize(Dense.from_torch(w))
    assert np.array_equal(tw.codes, codes)
    assert tw.scale.dtype_name == "F16"  # fp16 masters: the folded magnitude is rounded to fp16
    s = 1.0 / w.float().abs().mean().clamp(min=1e-5)  # the converters' weight_quant, in torch
    assert tw.scale.item() == (1.0 / s).to(torch.float16).item()
    d = tq_block_d(tw.codes, tw.scale.item(), 256)
    assert d.shape == (32, 1) and bool((d == np.float16(tw.scale.item())).all())
    assert pack_codes(codes).shape == (8, 256)


def test_gguf_recipes_refuse_the_wrong_type(masters, tmp_path):
    master = masters["1bitllm"]
    with pytest.raises(UsageError, match="llama.cpp"):
        convert(master, tmp_path / "a.gguf", "gguf", {"gguf_type": "i2_s", "recipe": "llama.cpp"})
    with pytest.raises(UsageError, match="bitnet.cpp"):
        convert(master, tmp_path / "b.gguf", "gguf", {"gguf_type": "tq2_0", "recipe": "bitnet.cpp"})
    with pytest.raises(UsageError, match="--recipe must be one of transformers, llama.cpp, bitnet.cpp"):
        convert(master, tmp_path / "c.gguf", "gguf", {"recipe": "onebitllms"})
    assert i2s_layouts.DEFAULT_LAYOUT == "x86" and Recipe("bitnet.cpp") is Recipe.BITNET_CPP
