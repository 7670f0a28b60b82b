"""``--recipe llama.cpp`` and ``--recipe bitnet.cpp`` write the quantized tensors of llama.cpp's and
bitnet.cpp's own converters byte for byte (run from the peers, unmodified but for their vocabulary,
see peer_tools.py); a bitnet.cpp file, which records no I2_S layout, reads as x86 and says so."""

from __future__ import annotations

from pathlib import Path

import pytest
from peer_tools import bf16_master_copy, run_llama_cpp_converter

from bitconvert.convert import convert
from bitconvert.describe import describe_checkpoint
from bitconvert.formats.gguf.parser import GGUFFile


def quantized_tensors(path: Path) -> dict[str, bytes]:
    f = GGUFFile(path)
    return {
        t.name: bytes(f.read_bytes(t.name))
        for t in f.tensors.values()
        if t.type_name in ("TQ1_0", "TQ2_0", "I2_S")
    }


@pytest.mark.parametrize("gguf_type,dtype", [("tq2_0", "f16"), ("tq1_0", "f16"), ("tq2_0", "bf16")])
def test_the_llama_cpp_recipe_writes_llama_cpps_bytes(tiny_checkpoint, llama_cpp_gguf, tmp_path, gguf_type, dtype):
    # 1bitLLM naming: llama.cpp's converter maps its sub-norms (inner_attn_ln, ffn_layernorm)
    master = tiny_checkpoint("1bitllm", "master", wide=True)  # an fp16 latent master, as 1bitLLM's
    if dtype == "bf16":
        master = bf16_master_copy(master, tmp_path / "bf16-master")
        theirs = quantized_tensors(run_llama_cpp_converter(master, tmp_path / "theirs.gguf", gguf_type))
    else:
        theirs = quantized_tensors(llama_cpp_gguf(master, gguf_type))
    convert(master, tmp_path / "ours.gguf", "gguf", {"gguf_type": gguf_type, "recipe": "llama.cpp"})
    ours = quantized_tensors(tmp_path / "ours.gguf")
    assert len(theirs) == 14 and sorted(theirs) == sorted(ours)
    for name in theirs:
        assert ours[name] == theirs[name], name


def test_the_bitnet_cpp_recipe_writes_bitnet_cpps_bytes(tiny_checkpoint, bitnet_cpp_gguf, tmp_path):
    for kind in ("1bitllm", "bitnet-2b4t"):
        master = tiny_checkpoint(kind, "master", wide=True)
        theirs = quantized_tensors(bitnet_cpp_gguf(master))
        convert(master, tmp_path / f"ours-{kind}.gguf", "gguf", {"gguf_type": "i2_s", "recipe": "bitnet.cpp"})
        ours = quantized_tensors(tmp_path / f"ours-{kind}.gguf")
        assert len(theirs) == 14 and sorted(theirs) == sorted(ours)
        for name in theirs:
            assert ours[name] == theirs[name], (kind, name)


def test_bitnet_cpps_unrecorded_layout_reads_as_x86_and_says_so(tiny_checkpoint, bitnet_cpp_gguf):
    theirs = bitnet_cpp_gguf(tiny_checkpoint("1bitllm", "master", wide=True))
    info = describe_checkpoint(theirs, stats=False)
    assert info["i2s_layout"] == "x86 (assumed: not recorded)"
    assert any("cannot tell x86, x86-rows and arm apart" in n for n in info["notes"])
