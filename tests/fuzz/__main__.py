"""``python3 -m tests.fuzz [--seconds N | --inputs N] [--parser P ...] [--seed S] [--save]``.

Prints, per parser, how many inputs ended in each outcome and the rate; exits 1 when any input was
unexpected, slow or a memory spike (each is listed, and with ``--save`` kept in the corpus).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .runner import CORPUS, run_many
from .targets import PARSERS


def _line(result, seconds: float) -> str:
    counts = ", ".join(f"{k} {v}" for k, v in sorted(result.counts.items()))
    rate = result.total / seconds if seconds else 0.0
    return f"{result.parser:12s} {result.total:8d} inputs  {rate:7.1f}/s  {counts}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m tests.fuzz", description=__doc__.split("\n\n")[0])
    ap.add_argument("--parser", action="append", choices=PARSERS, help="repeatable; default: all")
    ap.add_argument("--seconds", type=float, help="time budget per parser")
    ap.add_argument("--inputs", type=int, help="inputs per parser (default 2000 unless --seconds is given)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save", action="store_true", help=f"keep failing inputs in {CORPUS}")
    ap.add_argument("--save-to", type=Path, metavar="DIR", help="keep failing inputs in DIR instead")
    ap.add_argument("--jobs", type=int, default=3, help="parsers fuzzed at the same time (default 3)")
    args = ap.parse_args(argv)
    inputs = args.inputs if args.inputs or args.seconds else 2000
    bad = 0
    start = time.perf_counter()
    results = run_many(
        list(args.parser or PARSERS),
        jobs=args.jobs,
        inputs=inputs,
        seconds=args.seconds,
        seed=args.seed,
        save_to=args.save_to or (CORPUS if args.save else None),
        verbose=True,
    )
    for result in results:
        print(_line(result, result.seconds) + f"  ({result.seconds:.1f} s)", flush=True)
        for f in result.findings[:50]:
            print(f"    #{f.index} {f.context} {f.outcome}: {f.detail}")
        bad += result.bad
    print(f"all parsers: {time.perf_counter() - start:.1f} s wall")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
