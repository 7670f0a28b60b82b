"""Each --recipe is a record: the outputs it can write, what it refuses (packed sources it would have
to requantize, a linear class or GGUF type it never writes), floats already ternary left alone with
a warning, and the converters' folded magnitude over transformers' codes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import FIXTURES, read_all

from bitconvert.convert import convert
from bitconvert.dtypes import Dense
from bitconvert.errors import UsageError
from bitconvert.formats.gguf import i2s_layouts
from bitconvert.ternary import pack_codes
from bitconvert.ternary.recipes import Recipe, converter_fold, tq_block_d


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


def test_the_converters_fold_transformers_codes_and_round_the_magnitude():
    w = torch.randn(32, 256, generator=torch.Generator().manual_seed(2)).to(torch.float16)
    tw = converter_fold(Dense.from_torch(w))
    s = 1.0 / w.float().abs().mean().clamp(min=1e-5)  # the converters' weight_quant, in torch
    codes = (w.float() * s).round().clamp(-1, 1).to(torch.int8).numpy()  # transformers' WeightQuant codes
    assert np.array_equal(tw.codes, codes)
    assert tw.scale.dtype_name == "F16"  # fp16 masters: the folded magnitude is rounded to fp16
    assert tw.scale.item() == (1.0 / s).to(torch.float16).item()
    d = tq_block_d(tw.codes, tw.scale.item(), 256)
    assert d.shape == (32, 1) and bool((d == np.float16(tw.scale.item())).all())
    assert pack_codes(codes).shape == (8, 256)


def test_gguf_recipes_refuse_a_type_their_producer_never_writes(tiny_checkpoint, tmp_path):
    master = tiny_checkpoint("1bitllm", "master", wide=True)
    with pytest.raises(UsageError, match="llama.cpp"):
        convert(master, tmp_path / "a.gguf", "gguf", {"gguf_type": "i2_s", "recipe": "llama.cpp"})
    with pytest.raises(UsageError, match="bitnet.cpp"):
        convert(master, tmp_path / "b.gguf", "gguf", {"gguf_type": "tq2_0", "recipe": "bitnet.cpp"})
    with pytest.raises(UsageError, match="--recipe must be one of transformers, llama.cpp, bitnet.cpp"):
        convert(master, tmp_path / "c.gguf", "gguf", {"recipe": "onebitllms"})
    assert i2s_layouts.DEFAULT_LAYOUT == "x86" and Recipe("bitnet.cpp") is Recipe.BITNET_CPP
