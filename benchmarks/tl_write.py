"""Benchmark: TL1/TL2 GGUF of the full-size synthetic 2B-4T master, bitconvert beside bitnet.cpp's converter.

    python benchmarks/tl_write.py --dir bench-out/2b4t-bf16 [--layers 30] [--types tl2,tl1] [--no-peer] [--json]

The master (4.8 GB, benchmarks/synthetic.py) is made at ``--dir`` when missing; the outputs go beside
it and are deleted at the end (the master too with ``--clean``). No preset fits 2B-4T's weight shapes
(setup_env.py gives it the 3B ones), so both run with a kernel configuration of its four shapes,
written here in kernel_config.ini's grammar (bitnet.cpp's codegen accepts the same numbers):
TL1 bm 128/128/256/128, bk 64/64/128/64, bmm 32; TL2 bm 128/128/256/128, bk 96, bmm 32.

Each job runs in its own process (peakmem.py: wall time, the child's own peak RSS):
- bitconvert            ``convert MASTER OUT.gguf --to gguf --gguf-type tl2 --kernel-config INI
                        --recipe bitnet.cpp`` (the converter's scale, so the bytes can be compared)
- bitnet.cpp converter  ``utils/convert-hf-to-gguf-bitnet.py MASTER --outtype tl2`` from
                        ../shared/peers, with the additions listed in tests/peers/bitnet_cpp_peers.py,
                        in a folder holding include/kernel_config.ini
Afterwards every tensor's bytes are compared (the headers differ by design).
"""

from __future__ import annotations

import json
import mmap
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "peers"))

from benchmarks.peakmem import BITCONVERT, run_measured  # noqa: E402
from benchmarks.synthetic import ensure_master, warm  # noqa: E402

SHAPES = ((2560, 2560), (640, 2560), (6912, 2560), (2560, 6912))
TILES = {"tl1": ((128, 64, 32), (128, 64, 32), (256, 128, 32), (128, 64, 32)),
         "tl2": ((128, 96, 32), (128, 96, 32), (256, 96, 32), (128, 96, 32))}  # fmt: skip

PEER = r"""
import runpy, sys
sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def write_config(kind: str, path: Path) -> Path:
    from bitconvert.formats.gguf.kernel_config import KernelConfig, Tile

    config = KernelConfig(f"2B-4T {kind}", tuple(Tile(m, k, *t) for (m, k), t in zip(SHAPES, TILES[kind])))
    path.write_text(config.to_ini())
    return path


def peer_job(master: Path, out: Path, kind: str, ini: Path, work: Path) -> dict:
    """bitnet.cpp's converter, measured like every job (its driver is the tests' one)."""
    from bitnet_cpp_peers import CONVERTER, CONVERTER_DRIVER, LLAMA_CPP, peer_env

    if not CONVERTER.is_file():
        return {"skipped": f"bitnet.cpp's converter not found at {CONVERTER}"}
    scratch = work / f"peer-{kind}"
    (scratch / "include").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ini, scratch / "include" / "kernel_config.ini")
    driver = scratch / "driver.py"
    driver.write_text(CONVERTER_DRIVER.format(gguf_py=str(LLAMA_CPP / "gguf-py"), script=str(CONVERTER),
                                              arch_name="bitnet-b1.58", writer="fork", vocab="none"))  # fmt: skip
    import os

    cwd = os.getcwd()
    os.chdir(scratch)  # the converter reads include/kernel_config.ini from its working directory
    try:
        return run_measured(PEER, str(driver), str(master), "--outfile", str(out), "--outtype", kind, env=peer_env())
    finally:
        os.chdir(cwd)


def compare(ours: Path, theirs: Path) -> str:
    """Tensor by tensor, by each header's own offsets, through mapped files (no copy of either)."""
    from bitnet_cpp_peers import read_gguf_header

    a, b = read_gguf_header(ours)[1], read_gguf_header(theirs)[1]
    if sorted(a) != sorted(b):
        return f"tensor names differ: {sorted(set(a) ^ set(b))[:4]}"
    with open(ours, "rb") as fa, open(theirs, "rb") as fb:
        ma, mb = mmap.mmap(fa.fileno(), 0, access=mmap.ACCESS_READ), mmap.mmap(fb.fileno(), 0, access=mmap.ACCESS_READ)
        differ = [n for n, (typ, dims, start, end) in b.items()
                  if a[n][:2] != (typ, dims) or ma[a[n][2] : a[n][3]] != mb[start:end]]  # fmt: skip
        ma.close()
        mb.close()
    return "every tensor byte-identical" if not differ else f"{len(differ)} tensors differ, e.g. {differ[:3]}"


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, required=True, help="where the synthetic master is (or is made)")
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--types", default="tl2")
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--clean", action="store_true", help="delete the master too when done")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    ensure_master(args.dir, args.layers)
    work = args.dir.parent / "tl-work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    rows = []
    try:
        for kind in args.types.split(","):
            ini = write_config(kind, work / f"kernel_config_{kind}.ini")
            ours, theirs = work / f"bitconvert-{kind}.gguf", work / f"bitnet-cpp-{kind}.gguf"
            warm(args.dir / "model.safetensors")
            job = run_measured(BITCONVERT, "convert", str(args.dir), str(ours), "--to", "gguf", "--gguf-type", kind,
                               "--kernel-config", str(ini), "--recipe", "bitnet.cpp")  # fmt: skip
            rows.append({"job": f"bitconvert {kind}", **job, "bytes": ours.stat().st_size if ours.exists() else None})
            if args.no_peer:
                continue
            warm(args.dir / "model.safetensors")
            job = peer_job(args.dir, theirs, kind, ini, work)
            rows.append({"job": f"bitnet.cpp converter {kind}", **job,
                         "bytes": theirs.stat().st_size if theirs.exists() else None})  # fmt: skip
            if ours.exists() and theirs.exists():
                rows.append({"job": f"compare {kind}", "result": compare(ours, theirs)})
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if args.clean:
            shutil.rmtree(args.dir, ignore_errors=True)
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    for r in rows:
        if "result" in r:
            print(f"{r['job']:28s} {r['result']}")
        elif "skipped" in r:
            print(f"{r['job']:28s} skipped: {r['skipped']}")
        else:
            print(
                f"{r['job']:28s} {r['wall_s']:8.1f} s  peak RSS {r['peak_rss_mb']:8.1f} MB  exit {r['returncode']}"
                f"  {r['bytes'] or 0:,} bytes" + (f"\n{r['stderr']}" if r["returncode"] else "")
            )


if __name__ == "__main__":
    main()
