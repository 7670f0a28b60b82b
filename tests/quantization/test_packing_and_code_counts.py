"""Four codes to a byte in transformers' row-block layout (``pack_weights``/``unpack_weights`` agree
byte for byte), code 3 found where it sits, and the statistics and digests taken on packed bytes
equal those of the unpacked codes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import FIXTURES

from bitconvert.describe import describe_checkpoint
from bitconvert.dtypes import Dense, non_finite_count
from bitconvert.formats import open_checkpoint
from bitconvert.ternary import first_invalid_code, pack_codes, unpack_codes
from bitconvert.ternary.stats import code_counts, counts_stats, packed_code_counts, unpacked_chunks
from bitconvert.verify.manifest import packed_ternary_digest, tensor_digest

bitnet = pytest.importorskip("transformers.integrations.bitnet", reason="transformers (test extra) is the oracle")
PACKED = ["bitnet-2b4t-packed", "1bitllm-packed", "llama-packed"]


@pytest.mark.parametrize("rows,cols", [(4, 1), (8, 3), (64, 40), (2560, 16)])
def test_packing_round_trips_in_transformers_row_block_layout(rows, cols):
    g = torch.Generator().manual_seed(rows + cols)
    codes = torch.randint(-1, 2, (rows, cols), generator=g, dtype=torch.int8).numpy()
    before = codes.copy()
    packed = pack_codes(codes)
    assert np.array_equal(codes, before)  # input untouched
    assert packed.dtype == np.uint8 and packed.shape == (rows // 4, cols)
    p = rows // 4
    r, c = rows // 2 % p, cols - 1  # spot-check the bit layout from its definition
    expect = sum((int(codes[r + i * p, c]) + 1) << (2 * i) for i in range(4))
    assert int(packed[r, c]) == expect
    assert np.array_equal(unpack_codes(packed), codes)
    assert torch.equal(torch.from_numpy(packed), bitnet.pack_weights(torch.from_numpy(codes).to(torch.int32)))


def test_packed_bytes_are_transformers_pack_weights():
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(-1, 2, (64, 40), generator=g, dtype=torch.int8)
    assert torch.equal(torch.from_numpy(pack_codes(codes.numpy())), bitnet.pack_weights(codes.clone().to(torch.int32)))


def test_unpacking_is_transformers_unpack_weights():
    g = torch.Generator().manual_seed(3)
    packed = pack_codes(torch.randint(-1, 2, (32, 24), generator=g, dtype=torch.int8).numpy())
    theirs = bitnet.unpack_weights(torch.from_numpy(packed.copy()), dtype=torch.float32)
    assert torch.equal(torch.from_numpy(unpack_codes(packed)).float(), theirs)


def test_rows_not_a_multiple_of_four_cannot_be_packed():
    with pytest.raises(ValueError, match="multiple of 4"):
        pack_codes(np.zeros((6, 4), dtype=np.int8))


def test_the_first_code_3_is_found_at_its_unpacked_row():
    packed = pack_codes(np.zeros((16, 5), dtype=np.int8))
    assert first_invalid_code(packed) is None
    packed[2, 3] |= 0b11 << 4  # plane 2 -> unpacked row 2 + 2*4 = 10
    assert first_invalid_code(packed) == (10, 3)


@pytest.mark.parametrize("rows,cols", [(4, 1), (64, 40), (2560, 96), (8, 70000)])
def test_code_counts_and_chunks_off_packed_bytes_equal_the_unpacked_codes(rows, cols):
    g = torch.Generator().manual_seed(rows)
    codes = torch.randint(-1, 2, (rows, cols), generator=g, dtype=torch.int8).numpy()
    packed = pack_codes(codes)
    packed.reshape(-1)[::97] |= 0b11 << 2  # some invalid fields, read back as 2 by unpack_codes
    unpacked = unpack_codes(packed)
    counts = packed_code_counts(packed)
    assert counts == tuple(int((unpacked == v).sum()) for v in (-1, 0, 1, 2))
    assert np.array_equal(np.concatenate([c.copy() for c in unpacked_chunks(packed)]), unpacked.reshape(-1))
    assert counts_stats(*counts) == counts_stats(*code_counts(unpacked))


@pytest.mark.parametrize("fixture", PACKED)
def test_packed_digests_and_inspect_figures_equal_those_of_the_codes(fixture):
    ckpt = open_checkpoint(FIXTURES / fixture)
    info = {row["name"]: row for row in describe_checkpoint(FIXTURES / fixture)["tensors"]}
    n = 0
    for name, entry in ckpt.tensors.items():
        stored = entry.stored()
        if stored.layout != "hf-packed":
            continue
        value = entry.load()
        assert packed_ternary_digest(entry.shape, stored.data, stored.scale) == tensor_digest(value)
        assert info[name]["codes"] == {k: round(v, 6) for k, v in counts_stats(*code_counts(value.codes)).items()}
        assert info[name]["scale"]["value"] == value.scale.item()
        n += 1
    assert n > 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_non_finite_values_are_counted_off_the_stored_words(dtype):
    x = torch.randn(3, 70001).to(dtype)
    x[0, 5], x[1, 7], x[2, 70000] = float("inf"), float("nan"), float("-inf")
    value = Dense.from_torch(x)
    assert non_finite_count(value.raw(), value.dtype_name) == 3 == int((~torch.isfinite(x)).sum())
