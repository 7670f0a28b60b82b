"""A sha256 per tensor, of what the tensor *is* rather than how one format lays it out.

Ternary weights hash their int8 codes, shape and exact stored scale (value bytes, dtype and
convention); other tensors their dtype, shape and bytes. A packed checkpoint and the same model
re-packed or sharded differently therefore share a manifest, while any changed code, scale bit
or dense value changes the tensor's hash. The hashed text is fixed: a manifest written by any
earlier bitconvert checks against the same checkpoint.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..dtypes import Dense
from ..errors import CheckpointError
from ..io.jsonfile import parse_json_text
from ..io.files import read_regular
from ..io.staging import write_atomically
from ..ternary.scale import Scale
from ..ternary.stats import unpacked_chunks
from ..ternary.weight import TernaryWeight
from .report import Check

MANIFEST_VERSION = 1


def tensor_digest(value: Dense | TernaryWeight) -> dict[str, Any]:
    """The manifest entry of one loaded value: kind, shape, dtype and sha256."""
    if isinstance(value, TernaryWeight):
        return _ternary_digest(value.shape, value.scale, [np.ascontiguousarray(value.codes, dtype=np.int8)])
    return stored_dense_digest(value.shape, value.dtype_name, value.raw())


def stored_dense_digest(shape: tuple[int, ...], dtype_name: str, raw: np.ndarray) -> dict[str, Any]:
    """:func:`tensor_digest` of a dense tensor from its bytes (``raw``, uint8, row-major)."""
    h = hashlib.sha256()
    h.update(f"dense|{list(shape)}|{dtype_name}|".encode())
    if raw.size:
        h.update(memoryview(np.ascontiguousarray(raw).reshape(-1)))
    return {"kind": "dense", "shape": list(shape), "dtype": dtype_name, "sha256": h.hexdigest()}


def packed_ternary_digest(shape: tuple[int, ...], packed: np.ndarray, scale: Scale) -> dict[str, Any]:
    """:func:`tensor_digest` of a ternary weight from its packed bytes (HF row-block layout), unpacked
    a chunk at a time."""
    return _ternary_digest(shape, scale, unpacked_chunks(packed))


def _ternary_digest(shape: tuple[int, ...], scale: Scale, codes: Iterable[np.ndarray]) -> dict[str, Any]:
    h = hashlib.sha256()
    h.update(f"ternary|{list(shape)}|{scale.linear_class.value}|{scale.dtype_name}|".encode())
    for chunk in codes:  # int8 codes in row-major order, whole or in chunks
        if chunk.size:
            h.update(memoryview(np.ascontiguousarray(chunk).reshape(-1)))
    h.update(b"|")
    h.update(scale.data)
    return {"kind": "ternary", "shape": list(shape), "dtype": scale.dtype_name, "sha256": h.hexdigest()}


def new_manifest(src_format: str, tensors: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "bitconvert_manifest": MANIFEST_VERSION,
        "algorithm": "sha256",
        "content": "ternary: codes int8 + stored scale (value, dtype, linear class); dense: dtype + bytes",
        "src_format": src_format,
        "tensors": tensors,
    }


def write_manifest(manifest: dict[str, Any], path: str | Path) -> None:
    """Write ``manifest`` to ``path`` whole or not at all (replacing what is there)."""
    write_atomically(Path(path), json.dumps(manifest, indent=2, sort_keys=False) + "\n", "manifest")


def read_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    data = parse_json_text(read_regular(path, "manifest"), path, "manifest")
    if not isinstance(data, dict) or data.get("bitconvert_manifest") != MANIFEST_VERSION:
        raise CheckpointError(path, f"not a bitconvert manifest (version {MANIFEST_VERSION})")
    tensors = data.get("tensors")
    if not isinstance(tensors, dict) or not all(
        isinstance(v, dict) and isinstance(v.get("sha256"), str) for v in tensors.values()
    ):
        raise CheckpointError(path, "manifest 'tensors' must map names to objects with a sha256")
    return data


def check_manifest(expected: dict[str, Any], actual: dict[str, dict[str, Any] | None]) -> list[Check]:
    """One check per tensor named by either side; ``actual[name]`` is None when it could not be read.
    Linear in the names of both sides (each lookup is a dict's)."""
    want = expected["tensors"]
    checks = []
    for name, entry in want.items():
        if name not in actual:
            checks.append(Check("manifest", False, "tensor in the manifest is missing from the checkpoint", name))
            continue
        got = actual[name]
        if got is None:
            checks.append(Check("manifest", False, "tensor could not be read, so not hashed", name))
            continue
        ok = got["sha256"] == entry["sha256"]
        detail = "sha256 matches" if ok else (
            f"sha256 {got['sha256'][:16]}... differs from the manifest's {entry['sha256'][:16]}..."
            f" ({got['kind']} {got['dtype']} {got['shape']} vs {entry.get('kind')} "
            f"{entry.get('dtype')} {entry.get('shape')})"
        )
        checks.append(Check("manifest", ok, detail, name))
    checks += [Check("manifest", False, "tensor is not in the manifest", name) for name in actual if name not in want]
    return checks
