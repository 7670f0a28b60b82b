"""The ``llama.cpp`` rules of ``verify --target`` hold in llama.cpp itself: its bitnet graph applies
SiLU whatever the file says, it refuses bitnet.cpp's I2_S files, and it applies ``.scale`` tensors
in the bitnet and (at 0c1e57098) the llama architecture, as the runtime does."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf_tools import consumer_ggufs, rule_check, rule_outcomes
from peer_tools import llama_cpp_logits as peer_logits

from bitconvert.formats.gguf.parser import GGUFFile
from bitconvert.runtime import compute_logits

TOKENS = [315, 39, 276, 75, 78, 270, 257, 75, 67, 0, 220, 51, 261, 220, 80, 84]


@pytest.fixture(scope="module")
def ggufs(wide_checkpoint, converted) -> dict[str, Path]:
    return consumer_ggufs(wide_checkpoint, converted)


def llama_cpp_logits(path: Path) -> torch.Tensor:
    return peer_logits(path, TOKENS)


def min_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1).min())


def test_llama_cpp_runs_silu_whatever_the_file_says(ggufs):
    silu, relu2 = ggufs["1bitllm-tq2_0"], ggufs["bitnet-2b4t-tq2_0"]
    cos_silu = min_cosine(compute_logits(silu, TOKENS), llama_cpp_logits(silu))
    cos_relu2 = min_cosine(compute_logits(relu2, TOKENS), llama_cpp_logits(relu2))
    print(f"\nllama.cpp vs runtime, min cosine: SiLU model {cos_silu:.6f}, relu² model {cos_relu2:.6f}")
    assert cos_silu > 0.9995 and cos_relu2 < 0.999
    assert all(rule_outcomes(silu, "llama.cpp").values())
    c = rule_check(relu2, "llama.cpp", "ffn_activation")
    assert not c.passed and "'relu2'" in c.detail


def test_llama_cpp_refuses_bitnet_cpp_files(ggufs):
    path = ggufs["bitnet-2b4t-i2_s"]
    with pytest.raises((ValueError, RuntimeError)):
        llama_cpp_logits(path)
    got = rule_outcomes(path, "llama.cpp")
    assert not got["architecture"] and not got["tensor_types"]
    assert "'bitnet-b1.58'" in rule_check(path, "llama.cpp", "architecture").detail


def test_llama_cpp_applies_scale_tensors_in_the_bitnet_architecture(ggufs, tmp_path):
    src = ggufs["1bitllm-tq2_0"]
    data = bytearray(src.read_bytes())
    for t in GGUFFile(src).tensors.values():
        if t.name.endswith(".scale"):
            v = np.frombuffer(bytes(data[t.offset : t.offset + 4]), dtype=np.float32) * 3
            data[t.offset : t.offset + 4] = v.tobytes()
    patched = tmp_path / "patched.gguf"
    patched.write_bytes(bytes(data))
    theirs = llama_cpp_logits(patched)
    assert min_cosine(theirs, llama_cpp_logits(src)) < 0.99  # the scales are used ...
    assert min_cosine(theirs, compute_logits(patched, TOKENS)) > 0.9995  # ... as the runtime uses them
    assert rule_outcomes(patched, "llama.cpp")["scale_tensors"]


def with_scale_tensors(src: Path, out: Path, value: float) -> Path:
    """A copy of a GGUF made with gguf-py (llama.cpp's own library), plus an F32 ``.scale`` tensor of
    ``value`` for every ternary weight, as the ``bitnet`` architecture has them."""
    reader = gguf.GGUFReader(str(src))
    writer = gguf.GGUFWriter(str(out), str(reader.fields["general.architecture"].contents()))
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF."):
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), kind, sub_type=sub)
    ternary = {gguf.GGMLQuantizationType.TQ1_0, gguf.GGMLQuantizationType.TQ2_0}
    extra = [(t.name.removesuffix(".weight") + ".scale", np.array([value], dtype=np.float32))
             for t in reader.tensors if t.tensor_type in ternary]
    for t in reader.tensors:
        writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    for name, data in extra:
        writer.add_tensor_info(name, data.shape, data.dtype, data.nbytes, gguf.GGMLQuantizationType.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t in reader.tensors:
        writer.write_tensor_data(t.data, tensor_endianess=reader.endianess)
    for _, data in extra:
        writer.write_tensor_data(data)
    writer.close()
    return out


def test_llama_cpp_applies_scale_tensors_in_the_llama_architecture_too(tiny_checkpoint, converted, tmp_path):
    # Older llama.cpp loaded .scale tensors for `bitnet` only; at 0c1e57098 a generic pass loads
    # them for every architecture. Measured: a `llama` file with .scale tensors of 2 is computed
    # as the runtime computes it (scales applied), not as the file without them.
    plain = converted(tiny_checkpoint("llama", "packed", wide=True), "gguf", gguf_type="tq2_0")
    scaled = with_scale_tensors(plain, tmp_path / "scaled.gguf", 2.0)
    ours, theirs = compute_logits(scaled, TOKENS), llama_cpp_logits(scaled)
    assert min_cosine(ours, compute_logits(plain, TOKENS)) < 0.99  # the scales matter ...
    assert min_cosine(theirs, ours) > 0.9995  # ... and llama.cpp applies them like the runtime
    for path in (plain, scaled):
        assert rule_outcomes(path, "llama.cpp")["scale_tensors"]
    c = rule_check(scaled, "llama.cpp", "scale_tensors")
    assert c.figure == 14 and "'llama' too" in c.detail
