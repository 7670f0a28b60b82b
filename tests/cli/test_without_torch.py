"""Converting, verifying, inspecting and uploading need no torch: in an interpreter where torch cannot be
imported (a ``torch`` package first on the path that refuses, and writes down every attempt), the
README's first command and every command of that kind succeed without trying to import it once;
``run``, ``logits`` and ``verify --logits`` refuse in one line naming the ``runtime`` extra."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES, ROOT, make_checkpoint

from bitconvert.formats.gguf.kernel_config import KernelConfig, Tile

HIDDEN_TORCH = """\
import os, traceback
with open(os.environ["TORCH_ATTEMPTS"], "a") as f:
    f.write("".join(traceback.format_stack()) + "\\n----\\n")
raise ImportError("No module named 'torch' (hidden by the test)")
"""

M, P, M256 = FIXTURES / "bitnet-2b4t-master", FIXTURES / "bitnet-2b4t-packed", FIXTURES / "bitnet-2b4t-256-master"
EMBED = FIXTURES / "bitnet-embedding-qwen3-master"
#: a TL1 kernel configuration for the 256-wide master's four weight shapes (bitnet.cpp's tiles: bm, bk, bmm)
TL1 = KernelConfig("tiny tl1", (Tile(256, 256, 128, 64, 64), Tile(128, 256, 128, 128, 32), Tile(512, 256, 256, 128, 32),
                                Tile(256, 512, 128, 64, 32)))  # fmt: skip


@pytest.fixture(scope="module")
def no_torch(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("no-torch")
    (root / "site" / "torch").mkdir(parents=True)
    (root / "site" / "torch" / "__init__.py").write_text(HIDDEN_TORCH)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root / "site"), str(ROOT)]), HF_HUB_OFFLINE="1",
               TORCH_ATTEMPTS=str(root / "attempts"))  # fmt: skip
    return {"root": root, "env": env}


def bitconvert(no_torch: dict, *args) -> tuple[subprocess.CompletedProcess, str]:
    attempts = Path(no_torch["env"]["TORCH_ATTEMPTS"])
    attempts.unlink(missing_ok=True)
    proc = subprocess.run([sys.executable, "-m", "bitconvert", *map(str, args)], cwd=ROOT, env=no_torch["env"],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    return proc, attempts.read_text() if attempts.exists() else ""


def test_the_hidden_torch_is_hidden(no_torch):
    # the stand-in must work, or every test below proves nothing
    proc = subprocess.run([sys.executable, "-c", "import torch"], env=no_torch["env"], capture_output=True, text=True)
    assert proc.returncode == 1 and "hidden by the test" in proc.stderr
    assert Path(no_torch["env"]["TORCH_ATTEMPTS"]).read_text().count("----") >= 1


def test_the_readme_first_command(no_torch, tmp_path):
    # python3 -m bitconvert pack fixtures/bitnet-2b4t-master /tmp/bitnet-2b4t-packed --force
    proc, attempts = bitconvert(no_torch, "pack", "fixtures/bitnet-2b4t-master", tmp_path / "bitnet-2b4t-packed", "--force")
    assert proc.returncode == 0, proc.stderr
    assert attempts == ""
    assert (tmp_path / "bitnet-2b4t-packed" / "model.safetensors").is_file()
    assert "ternary weights" in proc.stdout


def _steps(out: Path) -> list[list]:
    """Each command, in an order where every input exists by the time it is read."""
    tl = make_checkpoint(out / "tl-master", "llama", "master", hidden=256, intermediate=512, layers=2, heads=4, kv_heads=2)
    (out / "tl1.ini").write_text(TL1.to_ini())
    return [
        ["pack", M, out / "packed"],
        ["unpack", P, out / "unpacked"],
        ["convert", M256, out / "tq2.gguf", "--to", "gguf"],
        ["convert", M256, out / "tq1.gguf", "--to", "gguf", "--gguf-type", "tq1_0"],
        ["convert", M256, out / "i2s.gguf", "--to", "gguf", "--gguf-type", "i2_s"],
        ["convert", out / "tq2.gguf", out / "from-gguf", "--to", "hf-packed"],
        ["convert", M, out / "nanotron", "--to", "nanotron", "--allow-lossy"],
        ["convert", out / "nanotron", out / "from-nanotron", "--to", "hf-bf16"],
        ["inspect", P],
        ["inspect", "--json", M],
        ["inspect", out / "i2s.gguf"],
        ["inspect", out / "nanotron"],
        ["verify", P],
        ["verify", out / "packed", "--against", M],
        ["verify", out / "tq2.gguf", "--against", out / "from-gguf", "--scale-rtol", "0.01"],  # bf16 scales there
        ["verify", out / "packed", "--roundtrip", "hf-bf16"],
        ["verify", out / "tq2.gguf", "--reproduce", M256],
        ["verify", P, "--target", "transformers"],
        ["verify", out / "packed", "--manifest", out / "manifest.json"],
        ["verify", out / "packed", "--manifest-check", out / "manifest.json", "--json"],
        ["upload", P, "org/name", "--dry-run"],
        ["upload", out / "i2s.gguf", "org/name", "--dry-run"],
        # the W2A8 GPU layout, TL1, and an embedding model
        ["convert", M, out / "gpu", "--to", "bitnet-gpu"],
        ["inspect", out / "gpu"],
        ["verify", out / "gpu"],
        ["convert", out / "gpu", out / "from-gpu", "--to", "hf-packed"],
        ["convert", tl, out / "tl1.gguf", "--to", "gguf", "--gguf-type", "tl1", "--kernel-config", out / "tl1.ini"],
        ["inspect", out / "tl1.gguf"],
        ["convert", EMBED, out / "embed.gguf", "--to", "gguf", "--gguf-type", "i2_s", "--allow-lossy"],
        ["convert", EMBED, out / "embed-packed", "--to", "hf-packed"],
        ["verify", out / "embed-packed", "--against", EMBED],
        ["inspect", out / "embed.gguf"],
        ["upload", out / "embed-packed", "org/name", "--dry-run"],
    ]


def test_conversion_verification_and_upload_without_torch(no_torch, tmp_path):
    for step in _steps(tmp_path):
        proc, attempts = bitconvert(no_torch, *step)
        assert proc.returncode == 0, (step, proc.stderr[-2000:])
        assert attempts == "", (step, attempts[-3000:])


@pytest.mark.parametrize(
    "args, what",
    [
        (["run", P, "--tokens", "1,2"], "bitconvert run"),
        (["logits", P, "--tokens", "1,2", "--out", "{tmp}/l.npy"], "bitconvert logits"),
        (["verify", P, "--against", M, "--logits"], "verify --logits"),
        (["embed", EMBED, "--text", "hello"], "bitconvert embed"),
        (["verify", EMBED, "--against", EMBED, "--embeddings"], "verify --embeddings"),
    ],
)
def test_the_runtime_refuses_in_one_line_naming_the_extra(no_torch, tmp_path, args, what):
    proc, attempts = bitconvert(no_torch, *[str(a).replace("{tmp}", str(tmp_path)) for a in args])
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"error: {what} needs torch (the runtime extra): pip install 'bitconvert[runtime]'")
    assert attempts.count("----") >= 1 and "bitconvert/extras.py" in attempts  # asked, once needed, by extras
    assert not (tmp_path / "l.npy").exists()
