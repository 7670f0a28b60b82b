"""Memory that does not grow with the vocabulary: large float tensors (the embedding, an untied lm_head)
are read, converted and written in blocks of rows, by every writer that streams and by verify, with
the same bytes as whole-tensor production."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, make_checkpoint

from bitconvert.convert import convert
from bitconvert.formats import open_checkpoint
from bitconvert.formats.gguf import production
from bitconvert.formats.hf import common
from bitconvert.model.checkpoint import dense_rows, row_blocks
from bitconvert.verify import run

WIDE = {"hidden": 1024, "intermediate": 1024, "layers": 1, "heads": 8, "kv_heads": 8}


@pytest.fixture(scope="module")
def masters(tmp_path_factory) -> dict[int, Path]:
    """One untied model (llama: embedding and lm_head both vocabulary x hidden) at two vocabularies."""
    root = tmp_path_factory.mktemp("vocab")
    return {v: make_checkpoint(root / f"v{v}", "llama", "master", vocab=v, **WIDE) for v in (4096, 65536)}


def _peak_mb(*args) -> float:
    script = ROOT / "benchmarks" / "peakmem.py"
    done = subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True, timeout=900)
    r = json.loads(done.stdout)
    assert r["returncode"] == 0, r["stderr"]
    return r["peak_rss_mb"]


@pytest.mark.parametrize(
    "command, out_bytes",
    [
        (["pack"], 2),
        (["unpack", "--dtype", "f32"], 4),
        (["convert", "--to", "gguf", "--embed-type", "f16"], 2),
        (["convert", "--to", "gguf", "--gguf-type", "i2_s", "--embed-type", "f32"], 4),
        (["verify"], 0),
    ],
)
def test_peak_memory_does_not_follow_the_vocabulary(masters, tmp_path, command, out_bytes):
    # 61,440 more rows of 1024 values in each of two tensors: 240 MB more to read (bf16). Held whole,
    # the peak grows by a tensor or more (120 MB; 240 MB as float32). By rows it grows by the share
    # of the output the pipeline may queue ahead of the writer (an eighth, up to its cap) and no more.
    grown = {}
    for v, src in masters.items():
        dst = tmp_path / (f"v{v}.gguf" if "gguf" in command else f"v{v}")
        args = [command[0], src] if command[0] == "verify" else [command[0], src, dst, *command[1:]]
        grown[v] = _peak_mb(*args)
    added_out_mb = 2 * (65536 - 4096) * 1024 * out_bytes / 2**20
    print(f"\n{' '.join(command)}: peak {grown[4096]:.0f} MB at vocabulary 4096, {grown[65536]:.0f} MB at 65536")
    assert grown[65536] - grown[4096] < added_out_mb / 8 + 24, grown


@pytest.fixture(scope="module")
def widths(tmp_path_factory) -> dict[int, Path]:
    """One model at two FFN widths: gate, up and down 2048 x 1024 (4 MB of bf16) or 32768 x 1024 (64 MB)."""
    root = tmp_path_factory.mktemp("width")
    dims = {**WIDE, "vocab": 4096}
    return {w: make_checkpoint(root / f"i{w}", "llama", "master", **{**dims, "intermediate": w}) for w in (2048, 32768)}


@pytest.mark.parametrize(
    "command",
    [
        ["pack"],
        ["convert", "--to", "gguf", "--gguf-type", "tq2_0"],
        ["convert", "--to", "gguf", "--gguf-type", "i2_s"],
        ["verify"],
    ],
)
def test_peak_memory_does_not_follow_the_size_of_a_quantized_weight(widths, tmp_path, command):
    # Three weights grow from 4 MB to 64 MB each. Mapped and read whole, a weight stays resident until
    # it is done: the peak grows by one at least (60 MB; 80 MB with its packed output). Read, quantized
    # and written by blocks of rows, it grows by what is in flight: a few MB of mapped pages per thread
    # not yet handed back, a block of output, the queue's share (measured: 15-30 MB).
    peaks = {}
    for w, src in widths.items():
        dst = tmp_path / (f"i{w}.gguf" if "gguf" in command else f"i{w}")
        args = [command[0], src] if command[0] == "verify" else [command[0], src, dst, *command[1:]]
        peaks[w] = _peak_mb(*args)
    print(f"\n{' '.join(command)}: peak {peaks[2048]:.0f} MB with 4 MB weights, {peaks[32768]:.0f} MB with 64 MB ones")
    assert peaks[32768] - peaks[2048] < 40, peaks


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted([path] if path.is_file() else path.glob("*.safetensors")):
        h.update(f.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize(
    "to, options",
    [
        ("hf-packed", {}),
        ("hf-packed", {"dtype": "f32"}),
        ("hf-bf16", {"dtype": "f16"}),
        ("gguf", {"embed_type": "f16"}),
        ("gguf", {"embed_type": "q8_0"}),
        ("gguf", {"gguf_type": "i2_s", "embed_type": "bf16"}),
        ("gguf", {"gguf_type": "tq1_0"}),
        ("gguf", {"gguf_type": "i2_s", "i2s_layout": "arm"}),
        ("gguf", {"gguf_type": "i2_s", "i2s_layout": "x86-rows"}),
    ],
)
def test_blocks_of_rows_write_the_bytes_of_whole_tensors(masters, tmp_path, monkeypatch, to, options):
    # quantized weights too: 1024 x 1024, packed or encoded three rows at a time
    _same_bytes_by_blocks(masters[4096], tmp_path, monkeypatch, to, options)


@pytest.mark.parametrize(
    "to, options", [("hf-packed", {}), ("gguf", {"gguf_type": "tq2_0"}), ("gguf", {"gguf_type": "i2_s"})]
)
def test_blocks_of_weights_not_quantized_from_bf16_bits_are_slices_of_the_whole(tmp_path, monkeypatch, to, options):
    # an fp16 master (1bitLLM's) is quantized whole by the arithmetic path, then written by blocks
    src = make_checkpoint(tmp_path / "fp16", "1bitllm", "master", **WIDE)
    _same_bytes_by_blocks(src, tmp_path, monkeypatch, to, options)


def _same_bytes_by_blocks(src: Path, tmp_path: Path, monkeypatch, to: str, options: dict) -> None:
    name = "m.gguf" if to == "gguf" else "m"
    (tmp_path / "whole").mkdir()
    (tmp_path / "blocks").mkdir()
    convert(src, tmp_path / "whole" / name, to, options)  # 4M values a block: one block for 4096 x 1024
    for module, name_ in ((common, "ROW_BLOCK_VALUES"), (production, "DENSE_SLAB"), (production, "TERNARY_SLAB")):
        monkeypatch.setattr(module, name_, 3 * 1024 + 5)
    convert(src, tmp_path / "blocks" / name, to, options)  # three rows a block: 342 blocks per tensor
    whole, blocks = tmp_path / "whole" / name, tmp_path / "blocks" / name
    if to == "gguf":  # the header records the command's DST: compare from the first tensor on
        from bitconvert.formats.gguf.parser import GGUFFile

        start = GGUFFile(whole).data_start
        assert GGUFFile(blocks).data_start == start
        assert whole.read_bytes()[start:] == blocks.read_bytes()[start:]
    else:
        assert _digest(whole) == _digest(blocks)


@pytest.mark.parametrize("fmt", ["hf-bf16", "gguf"])
def test_rows_read_on_their_own_are_the_rows_of_the_loaded_value(masters, tmp_path, fmt):
    src = masters[4096]
    if fmt == "gguf":
        src = convert(src, tmp_path / "m.gguf", "gguf", {"embed_type": "q8_0"}).dst
    ckpt = open_checkpoint(src)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        entry = ckpt.tensors[name]
        assert entry.rows is not None, name
        whole = entry.load()
        for start, stop in row_blocks(entry.shape, 100_000) + [(7, 7), (4095, 4096)]:
            part = dense_rows(entry, start, stop)
            assert part.dtype_name == whole.dtype_name and part.data.tobytes() == whole.data[start:stop].tobytes()
        with pytest.raises(ValueError, match="outside tensor"):
            entry.rows(0, entry.shape[0] + 1)


def test_verify_by_rows_finds_a_non_finite_value(masters, tmp_path):
    # the block-by-block check can fail: one inf in the embedding's last block is found and counted
    import shutil

    import numpy as np

    from bitconvert.io.safetensors import SafetensorsFile

    src = tmp_path / "bad"
    shutil.copytree(masters[4096], src)
    f = SafetensorsFile(src / "model.safetensors")
    t = f.tensors["model.embed_tokens.weight"]
    with open(src / "model.safetensors", "r+b") as raw:
        raw.seek(t.offset + t.nbytes - 2)
        raw.write(np.array([0x7F80], dtype=np.uint16).tobytes())  # bf16 +inf, the very last value
    report = run(src)
    bad = [c for c in report.failures if c.tensor == "model.embed_tokens.weight"]
    assert [(c.name, c.figure, c.detail) for c in bad] == [("finite", 1.0, "1 of 4194304 values are inf or nan")]
    assert run(masters[4096]).passed
