"""Commands that need no tensor math start without importing torch (``import torch`` alone costs
seconds): each runs through the real entry point in a fresh interpreter, which then reports whether
torch was imported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES

PACKED = FIXTURES / "bitnet-2b4t-packed"

# Runs the CLI as `python -m bitconvert` does; an exit handler (the entry point runs them before it
# ends the process) says whether torch got imported along the way.
_WRAPPER = (
    "import atexit, runpy, sys\n"
    "sys.argv = ['bitconvert', *sys.argv[1:]]\n"
    "atexit.register(lambda: print('TORCH-IMPORTED' if 'torch' in sys.modules else 'TORCH-NOT-IMPORTED', file=sys.stderr))\n"
    "runpy.run_module('bitconvert', run_name='__main__')\n"
)


def torch_imported(*args: str) -> bool:
    proc = subprocess.run(
        [sys.executable, "-c", _WRAPPER, *map(str, args)], capture_output=True, text=True, timeout=600,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stderr.strip().splitlines()[-1] == "TORCH-IMPORTED"


def test_the_wrapper_sees_torch_when_it_is_imported(tmp_path):
    # the reference runtime computes with torch: the probe must say so
    assert torch_imported("logits", PACKED, "--tokens", "1,2", "--out", tmp_path / "logits.npy")


def test_no_torch_for_inspect_with_statistics():
    # code statistics are counted off the stored bytes (numpy)
    assert not torch_imported("inspect", PACKED)
    assert not torch_imported("inspect", "--json", FIXTURES / "bitnet-2b4t-master")


@pytest.mark.parametrize(
    "args", [["--help"], ["formats"], ["convert", "--help"], ["pack", "--help"], ["unpack", "--help"], ["--version"]]
)
def test_no_torch_is_imported_for_help_formats_and_version(args):
    assert not torch_imported(*args)


# Every format bitconvert reads, as shipped fixtures (HF) or converted from them once per module
# (GGUF, Nanotron, and an hf-bf16 whose scales are recorded, as `unpack` writes it).
HF_FIXTURES = ["bitnet-2b4t-packed", "1bitllm-packed", "llama-packed", "onebitllms-packed",
               "bitnet-2b4t-master", "1bitllm-master", "llama-master", "onebitllms-bf16"]  # fmt: skip
CONVERTED = {
    "gguf-tq2_0": ("bitnet-2b4t-256-packed", "gguf", {}),
    "gguf-i2_s": ("bitnet-2b4t-256-packed", "gguf", {"gguf_type": "i2_s"}),
    "nanotron-tp2": ("bitnet-2b4t-master", "nanotron", {"tp": 2, "flavor": "pr178", "allow_lossy": True}),
    "nanotron-tp2-from-packed": ("bitnet-2b4t-packed", "nanotron",
                                 {"tp": 2, "flavor": "pr178", "allow_lossy": True, "allow_approximate": True}),
    "hf-bf16-recorded": ("bitnet-2b4t-packed", "hf-bf16", {}),
}  # fmt: skip


@pytest.fixture(scope="module")
def formats(converted) -> dict[str, Path]:
    """Each converted input, made once per session."""
    return {key: converted(FIXTURES / src, fmt, **options) for key, (src, fmt, options) in CONVERTED.items()}


def _source(name: str, formats: dict[str, Path]) -> Path:
    return formats[name] if name in CONVERTED else FIXTURES / name


@pytest.mark.parametrize("name", HF_FIXTURES + list(CONVERTED))
def test_no_torch_for_inspect_no_stats(name, formats):
    src = _source(name, formats)
    assert not torch_imported("inspect", "--no-stats", src)
    assert not torch_imported("inspect", "--no-stats", "--json", src)


# upload's planning verifies SRC on stored bytes (numpy): packed codes and scales, floats as stored,
# GGUF blocks and I2_S codes counted by byte tables, recorded float weights and Nanotron shards by
# their bits (tests/verification/test_checks_off_stored_bytes.py shows those checks equal the checks of
# the loaded tensors).
@pytest.mark.parametrize("name", HF_FIXTURES + list(CONVERTED))
def test_no_torch_for_upload_dry_run(name, formats):
    assert not torch_imported("upload", _source(name, formats), "org/name", "--dry-run")


def test_no_torch_for_verify_without_a_manifest(formats):
    # the same checks back `verify`: torch is imported only once a tensor must be decoded
    for name in ("bitnet-2b4t-packed", "gguf-tq2_0", "nanotron-tp2-from-packed", "hf-bf16-recorded"):
        assert not torch_imported("verify", _source(name, formats))


def test_the_format_catalogue_matches_what_the_modules_register():
    from bitconvert.formats import CATALOGUE, READERS, WRITERS, load_all, modes

    load_all()
    for name in CATALOGUE:
        assert modes(name) == "/".join(m for m, reg in (("read", READERS), ("write", WRITERS)) if name in reg), name
    assert set(CATALOGUE) == set(READERS) | set(WRITERS)


def test_opening_a_checkpoint_loads_no_writer():
    # in a fresh interpreter: reading imports the readers that may take the path only (an HF folder: not
    # the GGUF nor the Nanotron reader), and no writer
    code = (
        "import sys; from bitconvert.formats import CATALOGUE, open_checkpoint\n"
        f"open_checkpoint({str(PACKED)!r})\n"
        "writers = {f'bitconvert.formats.{w}' for _, w in CATALOGUE.values()}\n"
        "readers = {f'bitconvert.formats.{r}' for r, _ in CATALOGUE.values()}\n"
        "print(sorted(writers & set(sys.modules)), sorted(readers & set(sys.modules)), 'torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[] ['bitconvert.formats.hf.bf16', 'bitconvert.formats.hf.packed'] False"
