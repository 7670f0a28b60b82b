"""GGUF files in tests: written by bitconvert, or edited (metadata keys replaced or removed, tensors
copied byte for byte); random ternary codes to encode; what ``verify --target`` says of a file."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def random_codes(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1, 2, (rows, cols)).astype(np.int8)


def to_gguf(src: Path, dst: Path, gguf_type: str = "tq2_0", **extra) -> dict:
    """``convert SRC DST --to gguf`` through the library; the write report as a dict."""
    from bitconvert.convert import convert

    return convert(src, dst, "gguf", {"gguf_type": gguf_type, **extra}).to_dict()


def rewrite_gguf(src: Path, dst: Path, changes: dict) -> Path:
    """``src`` with metadata keys replaced (a KV) or removed (None); tensors copied byte for byte."""
    from bitconvert.formats.gguf.parser import GGUFFile
    from bitconvert.formats.gguf.stream_writer import GGUFStreamWriter, PlannedGGUFTensor

    f = GGUFFile(src)
    md = dict(f.metadata)
    for key, kv in changes.items():
        if kv is None:
            md.pop(key, None)
        else:
            md[key] = kv
    plan = [PlannedGGUFTensor(t.name, t.type, t.shape) for t in f.tensors.values()]
    with GGUFStreamWriter(dst, md, plan) as w:
        for t in f.tensors.values():
            w.write(t.name, f.read_bytes(t.name))
    return dst


def kv(kind: str, value):
    """A metadata value of ``kind`` (u32, str, f32, strs) as the stream writer stores it."""
    from bitconvert.formats.gguf import stream_writer as sw

    return {"u32": sw.kv_u32, "str": sw.kv_str, "f32": sw.kv_f32, "strs": sw.kv_strs}[kind](value)


#: (family, GGUF type) of the files the consumer-rule tests check: SiLU (1bitLLM) and relu² (2B-4T)
#: in TQ2_0, 2B-4T in I2_S
CONSUMER_GGUFS = (("1bitllm", "tq2_0"), ("bitnet-2b4t", "tq2_0"), ("bitnet-2b4t", "i2_s"))


def consumer_ggufs(wide_checkpoint, converted) -> dict[str, Path]:
    """The :data:`CONSUMER_GGUFS` of the wide packed checkpoints, by ``"family-type"``."""
    return {
        f"{kind}-{gtype}": converted(wide_checkpoint[f"{kind}-packed"], "gguf", gguf_type=gtype)
        for kind, gtype in CONSUMER_GGUFS
    }


def rule_outcomes(src, target: str) -> dict[str, bool]:
    """rule name -> passed, for one consumer (``verify --target``)."""
    from bitconvert.verify import verify_target

    return {c.name.split(".")[-1]: c.passed for c in verify_target(src, target).checks}


def rule_check(src, target: str, rule: str):
    """The check of one consumer rule on ``src``."""
    from bitconvert.verify import verify_target

    return next(c for c in verify_target(src, target).checks if c.name == f"{target}.{rule}")

