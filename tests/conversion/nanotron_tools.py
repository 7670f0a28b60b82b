"""What the Nanotron conversion tests share: converting with the tests' defaults, reading one shard
with the official safetensors library, and a folder's files."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from bitconvert.convert import convert

KINDS = ["bitnet-2b4t", "1bitllm", "llama"]
PROVENANCE = "bitconvert_provenance.json"  # written by convert() itself, names the source: not compared
SHARD = "model_weight_pp-rank-0-of-1_tp-rank-{r}-of-{t}.safetensors"


def to(src: Path, dst: Path, fmt: str, dtype="BF16", **extra) -> dict:
    """Convert; into Nanotron with the whole Llama layout (pr178) and sub-norms kept beside unless told otherwise."""
    if fmt == "nanotron":
        extra = {"flavor": "pr178", "allow_lossy": True, **extra}
    return convert(src, dst, fmt, {"dtype": dtype, **extra}).report


def master_dtype(kind: str) -> str:
    return "F16" if kind == "1bitllm" else "BF16"


def shard(path: Path) -> tuple[torch.Tensor, dict]:
    """The tensor and metadata of one Nanotron file, read with the official safetensors library."""
    with safe_open(str(path), "pt") as f:
        assert list(f.keys()) == ["data"]
        return f.get_tensor("data"), (f.metadata() or {})


def tree(path: Path) -> dict[str, bytes]:
    return {
        p.relative_to(path).as_posix(): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.name != PROVENANCE
    }


def count_row_reads(monkeypatch) -> list[int]:
    """The bytes of each Nanotron shard read from now on (``shards.read_rows`` patched to count)."""
    from bitconvert.formats.nanotron import shards

    reads: list[int] = []
    real = shards.read_rows

    def counting(shard_, start, stop):
        out = real(shard_, start, stop)
        reads.append(out.nbytes)
        return out

    monkeypatch.setattr(shards, "read_rows", counting)
    return reads
