"""Converting needs no torch: GGUF (every type and I2_S layout, both ways) and Nanotron (masters and
packed sources, writing and reading) run on numpy in a fresh interpreter that never imports it."""

from __future__ import annotations

import subprocess
import sys

from conftest import FIXTURES


def test_converting_to_and_from_gguf_imports_no_torch(tmp_path):
    import subprocess
    import sys

    code = f"""
import sys
from pathlib import Path
from bitconvert.convert import convert
from bitconvert.formats import open_checkpoint
out = Path({str(tmp_path)!r})
for t, lay in (("tq2_0", None), ("tq1_0", None), ("i2_s", "x86"), ("i2_s", "x86-rows"), ("i2_s", "arm")):
    dst = out / f"{{t}}-{{lay}}.gguf"
    convert({str(FIXTURES / "bitnet-2b4t-256-master")!r}, dst, "gguf", {{"gguf_type": t, "i2s_layout": lay}})
    ck = open_checkpoint(dst)
    for e in ck.tensors.values():
        e.load()
        s = e.stored()
        if s.counts is not None:
            s.counts()
convert(out / "tq2_0-None.gguf", out / "packed", "hf-packed")
convert(out / "i2_s-arm.gguf", out / "again.gguf", "gguf", {{"gguf_type": "tq1_0"}})
print(sorted(m for m in sys.modules if m.split(".")[0] == "torch"))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


NO_TORCH_SCRIPT = """
import sys
from pathlib import Path
from bitconvert.formats import no_progress
from bitconvert.formats.hf.bf16 import HFBF16Reader
from bitconvert.formats.hf.packed import HFPackedReader
from bitconvert.formats.nanotron.options import NanotronOptions
from bitconvert.formats.nanotron.reader import NanotronReader
from bitconvert.formats.nanotron.writer import NanotronWriter

master, packed, out = map(Path, sys.argv[1:4])
for name, reader, options in (
    ("m", HFBF16Reader(), NanotronOptions(flavor="pr178", tp=2, allow_lossy=True)),
    ("p", HFPackedReader(), NanotronOptions(tp=2, allow_lossy=True, allow_approximate=True, dtype="f32")),
):
    (out / name).mkdir()
    NanotronWriter().write(reader.read(master if name == "m" else packed), out / name, options, no_progress)
    for entry in NanotronReader().read(out / name).tensors.values():
        entry.load()
        stored = entry.stored()
        if stored.counts is not None:
            stored.counts()
print("torch" in sys.modules)
"""


def test_writing_and_reading_nanotron_import_no_torch(tmp_path):
    r = subprocess.run([sys.executable, "-c", NO_TORCH_SCRIPT, FIXTURES / "bitnet-2b4t-master",
                        FIXTURES / "llama-packed", tmp_path], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"
