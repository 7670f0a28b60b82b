"""Statistics and hashes taken on packed bytes equal those of the unpacked codes (the old, slow way)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bitconvert.describe import describe_checkpoint
from bitconvert.dtypes import Dense, non_finite_count
from bitconvert.formats import open_checkpoint
from bitconvert.model.checkpoint import Stored
from bitconvert.ternary import pack_codes, unpack_codes
from bitconvert.ternary.stats import code_counts, counts_stats, packed_code_counts, unpacked_chunks
from bitconvert.verify.manifest import packed_ternary_digest, tensor_digest
from tests.conftest import FIXTURES

PACKED = ["bitnet-2b4t-packed", "1bitllm-packed", "llama-packed"]


@pytest.mark.parametrize("rows,cols", [(4, 1), (64, 40), (2560, 96), (8, 70000)])
def test_counts_and_chunks_equal_unpacked(rows, cols):
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
def test_packed_digest_and_inspect_equal_unpacked(fixture):
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
def test_non_finite_count(dtype):
    x = torch.randn(3, 70001).to(dtype)
    x[0, 5], x[1, 7], x[2, 70000] = float("inf"), float("nan"), float("-inf")
    value = Dense.from_torch(x)
    assert non_finite_count(value.raw(), value.dtype_name) == 3 == int((~torch.isfinite(x)).sum())


def _without_stored_bytes(monkeypatch):
    """Make verify_integrity load every tensor: each entry's stored() says nothing the checks can use."""
    import dataclasses

    from bitconvert.verify import integrity

    def opaque():
        return Stored(np.empty(0, dtype=np.uint8), "opaque")

    def opened(*args, **kwargs):
        ckpt = open_checkpoint(*args, **kwargs)
        for name, e in ckpt.tensors.items():
            ckpt.tensors[name] = dataclasses.replace(e, stored=opaque)
        return ckpt

    monkeypatch.setattr(integrity, "open_checkpoint", opened)


def _damaged(tmp_path, fixture: str):
    """A copy of ``fixture`` with a NaN in a dense tensor and, if packed, a code 3, a zero and an inf scale."""
    import shutil

    from safetensors.torch import load_file, save_file

    dst = tmp_path / fixture
    shutil.copytree(FIXTURES / fixture, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    tensors["model.norm.weight"] = tensors["model.norm.weight"].clone()
    tensors["model.norm.weight"][3] = float("nan")
    if "model.layers.0.mlp.up_proj.weight_scale" in tensors:
        tensors["model.layers.0.mlp.up_proj.weight"].view(-1)[5] = 0xFF
        tensors["model.layers.0.mlp.down_proj.weight_scale"].zero_()
        tensors["model.layers.1.mlp.down_proj.weight_scale"].fill_(float("inf"))
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


@pytest.mark.parametrize("fixture", PACKED + ["bitnet-2b4t-master", "onebitllms-bf16"])
@pytest.mark.parametrize("damaged", [False, True])
def test_integrity_on_stored_bytes_equals_integrity_on_loaded_tensors(fixture, damaged, tmp_path, monkeypatch):
    # `upload --dry-run` checks stored bytes without decoding them: same checks, messages, figures and hashes
    from bitconvert.verify import verify_integrity

    src = _damaged(tmp_path, fixture) if damaged else FIXTURES / fixture

    def report():
        r = verify_integrity(src)
        return [(c.name, c.passed, c.detail, c.tensor, c.figure) for c in r.checks], r.manifest

    on_bytes = report()
    _without_stored_bytes(monkeypatch)
    assert on_bytes == report()
    failed = [c for c in on_bytes[0] if not c[1]]
    assert bool(failed) == damaged
    if damaged and fixture in PACKED:
        assert {c[3] for c in failed} == {"model.norm.weight", "model.layers.0.mlp.up_proj.weight",
                                          "model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"}
