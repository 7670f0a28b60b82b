"""Statistics and hashes taken on packed bytes equal those of the unpacked codes (the old, slow way)."""

from __future__ import annotations

import pytest
import torch

from bitconvert.describe import describe_checkpoint
from bitconvert.formats import open_checkpoint
from bitconvert.packed_stats import counts_stats, packed_code_counts, unpacked_chunks
from bitconvert.ternary import pack_codes, ternary_stats, unpack_codes
from bitconvert.verify.integrity import non_finite_count
from bitconvert.verify.manifest import packed_ternary_digest, tensor_digest
from tests.conftest import FIXTURES

PACKED = ["bitnet-2b4t-packed", "1bitllm-packed", "llama-packed"]


@pytest.mark.parametrize("rows,cols", [(4, 1), (64, 40), (2560, 96), (8, 70000)])
def test_counts_and_chunks_equal_unpacked(rows, cols):
    g = torch.Generator().manual_seed(rows)
    codes = torch.randint(-1, 2, (rows, cols), generator=g, dtype=torch.int8)
    packed = pack_codes(codes)
    packed.view(-1)[::97] |= 0b11 << 2  # some invalid fields, read back as 2 by unpack_codes
    unpacked = unpack_codes(packed)
    counts = packed_code_counts(packed)
    assert counts == tuple(int((unpacked == v).sum()) for v in (-1, 0, 1, 2))
    assert torch.equal(torch.cat([torch.from_numpy(c.copy()) for c in unpacked_chunks(packed)]), unpacked.reshape(-1))
    stats = counts_stats(*counts)
    assert stats == ternary_stats(unpacked)


@pytest.mark.parametrize("fixture", PACKED)
def test_packed_digest_and_inspect_equal_unpacked(fixture):
    ckpt = open_checkpoint(FIXTURES / fixture)
    info = {row["name"]: row for row in describe_checkpoint(FIXTURES / fixture)["tensors"]}
    n = 0
    for name, entry in ckpt.tensors.items():
        if entry.load_packed is None:
            continue
        value = entry.load()
        assert packed_ternary_digest(entry.shape, entry.load_packed(), entry.load_scale()) == tensor_digest(value)
        assert info[name]["codes"] == {k: round(v, 6) for k, v in ternary_stats(value.codes).items()}
        assert info[name]["scale"]["value"] == value.scale.item()
        n += 1
    assert n > 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_non_finite_count(dtype):
    x = torch.randn(3, 70001).to(dtype)
    x[0, 5], x[1, 7], x[2, 70000] = float("inf"), float("nan"), float("-inf")
    assert non_finite_count(x) == 3 == int((~torch.isfinite(x)).sum())
