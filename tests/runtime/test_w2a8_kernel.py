"""The Triton W2A8 unpack reads the int2 weights ``--to bitnet-gpu`` writes (and microsoft/BitNet's
converter writes) back to their codes, with the addresses and shifts of the CUDA kernel that
multiplies them. On a CPU it runs in Triton's interpreter (``TRITON_INTERPRET=1`` is set before
anything imports Triton); small shapes only."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything below can import triton

import numpy as np
import pytest
import torch

from bitconvert.convert import convert
from bitconvert.formats import open_checkpoint
from bitconvert.formats.bitnet_gpu.layout import INT2_FILE, decode_int2, encode_int2, to_interleaved
from bitconvert.kernels import triton_unavailable_reason, unpack_w2a8, uses_triton
from conftest import FIXTURES

pytestmark = pytest.mark.skipif(
    triton_unavailable_reason() is not None or not uses_triton("cpu"),
    reason=triton_unavailable_reason() or "Triton was imported without TRITON_INTERPRET=1",
)


@pytest.mark.parametrize("shape", [(16, 32), (48, 160), (32, 256), (64, 96)])
def test_kernel_decodes_the_layout(shape):
    rng = np.random.default_rng(sum(shape))
    codes = rng.integers(-1, 2, size=shape).astype(np.int8)
    got = unpack_w2a8(torch.from_numpy(encode_int2(codes).view(np.int8)))
    assert got.dtype == torch.int8 and np.array_equal(got.numpy(), codes)


def test_kernel_sees_a_wrong_layout():
    """Bytes in another order (the HF row blocks of the same codes) decode to other codes."""
    from bitconvert.ternary import pack_codes

    rng = np.random.default_rng(1)
    codes = rng.integers(-1, 2, size=(32, 128)).astype(np.int8)
    hf = pack_codes(codes)  # [8, 128]: reshape to the W2A8 shape, same bytes
    got = unpack_w2a8(torch.from_numpy(hf.reshape(32, 32)))
    assert not np.array_equal(got.numpy(), codes)
    assert np.array_equal(got.numpy(), decode_int2(hf.reshape(32, 32)))  # the same misreading as the format's


def test_kernel_unpacks_what_bitnet_gpu_wrote(tmp_path):
    src = open_checkpoint(FIXTURES / "bitnet-2b4t-packed")
    convert(src.path, tmp_path / "gpu", "bitnet-gpu")
    int2 = torch.load(tmp_path / "gpu" / INT2_FILE, weights_only=True)
    cfg = src.config
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        w = {n: src.tensors[p + n + ".weight"].load().codes for n in
             ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
              "mlp.up_proj", "mlp.down_proj")}  # fmt: skip
        want = {
            "attention.wqkv": np.concatenate([to_interleaved(w["self_attn.q_proj"], cfg.num_attention_heads),
                                              to_interleaved(w["self_attn.k_proj"], cfg.num_key_value_heads),
                                              w["self_attn.v_proj"]]),
            "attention.wo": w["self_attn.o_proj"],
            "feed_forward.w13": np.concatenate([w["mlp.gate_proj"], w["mlp.up_proj"]]),
            "feed_forward.w2": w["mlp.down_proj"],
        }  # fmt: skip
        for key, codes in want.items():
            got = unpack_w2a8(int2[f"layers.{i}.{key}.weight"])
            assert np.array_equal(got.numpy(), codes), key
