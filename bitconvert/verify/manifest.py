"""A sha256 per tensor, of what the tensor *is* rather than how one format lays it out.

Ternary weights hash their int8 codes, shape and exact stored scale (value bytes, dtype and
convention); other tensors their dtype, shape and bytes. A packed checkpoint and the same model
re-packed or sharded differently therefore share a manifest, while any changed code, scale bit
or dense value changes the tensor's hash.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from ..errors import CheckpointError
from ..io.jsonfile import parse_json_text
from ..ternary.stats import unpacked_chunks
from ..ternary.stored import StoredScale
from .report import Check

if TYPE_CHECKING:  # hashes of stored bytes (upload's planning) need no torch; of loaded tensors, they do
    import torch

    from ..ternary import TernaryScale, TernaryWeight

MANIFEST_VERSION = 1


def _feed(h: "hashlib._Hash", t: torch.Tensor) -> None:
    import torch

    t = t.detach().cpu().contiguous().reshape(-1)
    if t.numel():
        h.update(memoryview(t.view(torch.uint8).numpy()))


def tensor_digest(value: torch.Tensor | TernaryWeight) -> dict[str, Any]:
    """The manifest entry of one loaded tensor: kind, shape, dtype and sha256."""
    import torch

    from ..dtypes import dtype_name
    from ..ternary import TernaryWeight

    if isinstance(value, TernaryWeight):
        return _ternary_digest(value.shape, StoredScale.of(value.scale), [value.codes.to(torch.int8)])
    h = _dense_hash(list(value.shape), dtype_name(value.dtype))
    _feed(h, value)
    return _dense_entry(list(value.shape), dtype_name(value.dtype), h)


def stored_dense_digest(shape: tuple[int, ...], dtype_name: str, raw: np.ndarray) -> dict[str, Any]:
    """:func:`tensor_digest` of a dense tensor from its stored bytes (``raw``, uint8), without torch."""
    h = _dense_hash(list(shape), dtype_name)
    if raw.size:
        h.update(memoryview(np.ascontiguousarray(raw).reshape(-1)))
    return _dense_entry(list(shape), dtype_name, h)


def _dense_hash(shape: list[int], dtype_name: str) -> "hashlib._Hash":
    h = hashlib.sha256()
    h.update(f"dense|{shape}|{dtype_name}|".encode())
    return h


def _dense_entry(shape: list[int], dtype_name: str, h: "hashlib._Hash") -> dict[str, Any]:
    return {"kind": "dense", "shape": shape, "dtype": dtype_name, "sha256": h.hexdigest()}


def packed_ternary_digest(
    shape: tuple[int, ...], packed: Any, scale: TernaryScale | StoredScale
) -> dict[str, Any]:
    """:func:`tensor_digest` of a ternary weight from its packed bytes (HF row-block layout, numpy or
    a tensor), unpacked a chunk at a time; with a :class:`StoredScale`, without torch."""
    stored = scale if isinstance(scale, StoredScale) else StoredScale.of(scale)
    return _ternary_digest(shape, stored, unpacked_chunks(packed))


def _ternary_digest(shape: tuple[int, ...], scale: StoredScale, codes: Iterable) -> dict[str, Any]:
    h = hashlib.sha256()
    h.update(f"ternary|{list(shape)}|{scale.linear_class.value}|{scale.dtype_name}|".encode())
    for chunk in codes:  # int8 codes in row-major order, whole or in chunks
        if isinstance(chunk, np.ndarray):
            if chunk.size:
                h.update(memoryview(chunk))
        else:
            _feed(h, chunk)
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
    Path(path).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def read_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(path, f"cannot read manifest: {exc.strerror or exc}") from None
    data = parse_json_text(text, path, "manifest")
    if not isinstance(data, dict) or data.get("bitconvert_manifest") != MANIFEST_VERSION:
        raise CheckpointError(path, f"not a bitconvert manifest (version {MANIFEST_VERSION})")
    tensors = data.get("tensors")
    if not isinstance(tensors, dict) or not all(
        isinstance(v, dict) and isinstance(v.get("sha256"), str) for v in tensors.values()
    ):
        raise CheckpointError(path, "manifest 'tensors' must map names to objects with a sha256")
    return data


def check_manifest(expected: dict[str, Any], actual: dict[str, dict[str, Any] | None]) -> list[Check]:
    """One check per tensor named by either side; ``actual[name]`` is None when it could not be read."""
    want = expected["tensors"]
    checks = []
    for name in list(want) + [n for n in actual if n not in want]:
        if name not in want:
            checks.append(Check("manifest", False, "tensor is not in the manifest", name))
            continue
        if name not in actual:
            checks.append(Check("manifest", False, "tensor in the manifest is missing from the checkpoint", name))
            continue
        got = actual[name]
        if got is None:
            checks.append(Check("manifest", False, "tensor could not be read, so not hashed", name))
            continue
        ok = got["sha256"] == want[name]["sha256"]
        detail = "sha256 matches" if ok else (
            f"sha256 {got['sha256'][:16]}... differs from the manifest's {want[name]['sha256'][:16]}..."
            f" ({got['kind']} {got['dtype']} {got['shape']} vs {want[name].get('kind')} "
            f"{want[name].get('dtype')} {want[name].get('shape')})"
        )
        checks.append(Check("manifest", ok, detail, name))
    return checks
