"""What the verification tests share: the fixtures they check, damaged copies, and reading a
report's failures from the library or from ``--json``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from conftest import FIXTURES, cli, read_all
from safetensors.torch import save_file

PACKED = FIXTURES / "bitnet-2b4t-packed"
LLAMA_PACKED = FIXTURES / "llama-packed"
Q = "model.layers.1.self_attn.q_proj.weight"
SOURCES = [f"{kind}-{layout}" for layout in ("master", "packed") for kind in ("bitnet-2b4t", "1bitllm", "llama")]


def damaged_copy(src: Path, out: Path, edit) -> Path:
    """Copy ``src`` and rewrite its model.safetensors after ``edit(tensors)`` changed the dict."""
    shutil.copytree(src, out)
    tensors = read_all(src)
    edit(tensors)
    (out / "model.safetensors").unlink()
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def failing(result) -> list[dict]:
    """The failed checks of a ``verify --json`` run."""
    data = json.loads(result.stdout)
    return [c for c in data["checks"] if not c["passed"]]


def fails(report) -> list[tuple[str, str | None]]:
    """(check, tensor) of each failure of a library report."""
    return [(c.name, c.tensor) for c in report.failures]


def verify_json(*args):
    r = cli("verify", *args, "--json")
    assert r.returncode in (0, 1), r.stderr
    return r, json.loads(r.stdout)


def nonzero_field(w: torch.Tensor) -> tuple[int, int]:
    """A byte position whose lowest 2-bit field (plane 0) holds a code of -1 or +1."""
    r, c = (int(v) for v in torch.nonzero(((w & 3) == 0) | ((w & 3) == 2))[0])
    return r, c
