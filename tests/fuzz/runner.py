"""Run a fuzz campaign: inputs generated here, executed in a forked worker, each one classified.

Outcomes: ``accepted`` (no exception), ``refused`` (a ``BitconvertError``: the promised one-line
error), ``unexpected`` (any other exception), ``slow`` (over ``SLOW_S``, or the worker had to be
killed at ``HANG_S``), ``memory`` (the worker's peak RSS grew by more than ``SPIKE_BYTES`` on one
input, or it hit its address-space limit). The worker runs under ``RLIMIT_AS`` so a runaway
allocation fails inside it and cannot take the machine down; it is replaced after a crash, a hang
or a spike. Input ``i`` of a campaign depends only on (parser, seed, i), so any finding can be
reproduced and is saved, with its context, into the regression corpus.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import random
import resource
import tempfile
import time
import traceback
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from .targets import PARSERS, all_targets

SLOW_S = 2.0
HANG_S = 20.0
SPIKE_BYTES = 200 * 2**20
#: address space the worker may add beyond what it has after importing everything (numeric libraries reserve a lot)
AS_HEADROOM = 1536 * 2**20
CORPUS = Path(__file__).resolve().parent / "corpus"
BAD = ("unexpected", "slow", "memory")
MAX_FINDINGS = 200


@dataclass
class Finding:
    parser: str
    index: int
    context: str
    outcome: str
    detail: str
    data: bytes = field(repr=False, default=b"")


@dataclass
class Result:
    parser: str
    counts: Counter = field(default_factory=Counter)
    findings: list[Finding] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def bad(self) -> int:
        return sum(self.counts[o] for o in BAD)


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _where(exc: BaseException) -> str:
    """The innermost bitconvert frame of a traceback: where the unexpected exception escaped from."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f"{os.sep}bitconvert{os.sep}" in f.filename]
    f = frames[-1] if frames else traceback.extract_tb(exc.__traceback__)[-1]
    return f"{Path(f.filename).name}:{f.lineno} {f.name}"


def classify(target, context: str, data: bytes, workdir: Path) -> tuple[str, str, float]:
    """Run one input in this process: (outcome, detail, seconds)."""
    from bitconvert.errors import BitconvertError

    start = time.perf_counter()
    try:
        target.run(context, data, workdir)
        outcome, detail = "accepted", ""
    except BitconvertError as exc:
        outcome, detail = "refused", str(exc)
        if "\n" in detail:
            outcome, detail = "unexpected", f"multi-line error: {detail[:300]!r}"
    except MemoryError:
        outcome, detail = "memory", "MemoryError (address-space limit reached)"
    except RecursionError as exc:
        outcome, detail = "unexpected", f"RecursionError at {_where(exc)}"
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - every other exception (a Rust panic too) is a finding
        outcome, detail = "unexpected", f"{type(exc).__name__} at {_where(exc)}: {str(exc)[:200]}"
    return outcome, detail, time.perf_counter() - start


def _worker(parser: str, cache: Path, conn) -> None:
    target = all_targets(cache)[parser]()
    with tempfile.TemporaryDirectory(prefix=f"bitconvert-fuzz-{parser}-", dir=_tmp_root()) as tmp:
        workdir = Path(tmp)
        # warm up on the seeds: imports, lazily built tables and copies happen before the limit is set
        for context, data in target.seeds.items():
            classify(target, context, data, workdir)
        vm = _vm_size()
        if vm:
            resource.setrlimit(resource.RLIMIT_AS, (vm + AS_HEADROOM, resource.RLIM_INFINITY))
        conn.send("ready")
        while True:
            job = conn.recv()
            if job is None:
                return
            context, data = job
            before = _peak_rss()
            outcome, detail, seconds = classify(target, context, data, workdir)
            grew = _peak_rss() - before
            if outcome != "memory" and grew > SPIKE_BYTES:
                outcome, detail = "memory", f"peak RSS grew by {grew / 2**20:.0f} MiB ({outcome}: {detail})"
            elif outcome in ("accepted", "refused") and seconds > SLOW_S:
                outcome, detail = "slow", f"{seconds:.1f} s ({outcome}: {detail})"
            conn.send((outcome, detail, seconds))


def _vm_size() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _tmp_root() -> str | None:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


class Worker:
    """A forked process running one target; replaced after a crash, hang or memory spike."""

    def __init__(self, parser: str, cache: Path) -> None:
        self.parser, self.cache = parser, cache
        self.proc = None
        self.start()

    def start(self) -> None:
        ctx = mp.get_context("fork")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(self.parser, self.cache, child), daemon=True)
        self.proc.start()
        child.close()
        if not self.conn.poll(600) or self.conn.recv() != "ready":
            raise RuntimeError(f"fuzz worker for {self.parser} did not start")

    def run(self, context: str, data: bytes) -> tuple[str, str, float]:
        start = time.perf_counter()
        try:
            self.conn.send((context, data))
            if self.conn.poll(HANG_S):
                outcome, detail, seconds = self.conn.recv()
                if outcome == "memory":
                    self.restart()  # its peak RSS is now high: measure the next input from a fresh one
                return outcome, detail, seconds
            outcome, detail = "slow", f"no answer within {HANG_S:.0f} s (killed)"
        except (EOFError, BrokenPipeError, ConnectionResetError):
            self.proc.join(5)
            code = self.proc.exitcode
            outcome, detail = ("memory" if code == -9 else "unexpected"), f"worker died (exit {code})"
        self.restart()
        return outcome, detail, time.perf_counter() - start

    def restart(self) -> None:
        self.stop()
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            try:
                self.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
            self.proc.join(2)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join()


def generate(target, seed: int, index: int) -> tuple[str, bytes]:
    """Input ``index`` of a campaign: a seed file chosen and mutated by a generator seeded from both."""
    rng = random.Random(f"{target.name}:{seed}:{index}")
    contexts = sorted(target.seeds)
    context = rng.choice(contexts)
    data = target.seeds[context]
    if index < len(contexts):  # the unmutated seeds first: they must be accepted
        context = contexts[index]
        return context, target.seeds[context]
    others = [target.seeds[c] for c in contexts]
    return context, target.mutate(rng, data, others)


def run_campaign(
    parser: str,
    *,
    inputs: int | None = None,
    seconds: float | None = None,
    seed: int = 0,
    cache: Path | None = None,
    progress=None,
    save_to: Path | None = None,
) -> Result:
    """Fuzz ``parser`` for ``inputs`` inputs or ``seconds`` seconds, whichever comes first."""
    if parser not in PARSERS:
        raise ValueError(f"unknown parser {parser!r}; choose from {', '.join(PARSERS)}")
    cache = cache or default_cache()
    target = all_targets(cache)[parser]()
    result = Result(parser)
    worker = Worker(parser, cache)
    kept: set[str] = set()
    start = time.perf_counter()
    try:
        i = 0
        while (inputs is None or i < inputs) and (seconds is None or time.perf_counter() - start < seconds):
            context, data = generate(target, seed, i)
            outcome, detail, _ = worker.run(context, data)
            result.counts[outcome] += 1
            if outcome in BAD:
                finding = Finding(parser, i, context, outcome, detail, data)
                if len(result.findings) < MAX_FINDINGS:  # counted always, kept (with their bytes) up to a bound
                    result.findings.append(finding)
                if save_to is not None and signature(finding) not in kept:  # one case per kind of failure
                    kept.add(signature(finding))
                    save_finding(finding, save_to)
            if progress and i and i % 500 == 0:
                progress(result, time.perf_counter() - start)
            i += 1
    finally:
        worker.stop()
    result.seconds = time.perf_counter() - start
    return result


def _drive(job: tuple[str, dict]) -> Result:
    parser, kwargs = job
    verbose = kwargs.pop("verbose", False)
    progress = (lambda r, s: print(f"  {r.parser:12s} {r.total:8d} inputs  {r.total / s:7.1f}/s", flush=True)) if verbose else None
    return run_campaign(parser, progress=progress, **kwargs)


def run_many(parsers: list[str], *, jobs: int = 2, **kwargs) -> Iterator[Result]:
    """Campaigns for several parsers, ``jobs`` at a time, each driven from its own spawned process
    (spawned, not forked: each driver forks its worker, which must not inherit another's threads).
    Results come in the order they finish."""
    if jobs <= 1:
        for parser in parsers:
            yield _drive((parser, dict(kwargs)))
        return
    with ProcessPoolExecutor(min(jobs, len(parsers)), mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(_drive, (p, dict(kwargs))) for p in parsers]
        for future in as_completed(futures):
            yield future.result()


def signature(finding: Finding) -> str:
    """What kind of failure: the outcome and where it escaped, without the input-specific message."""
    return f"{finding.outcome} {finding.detail.split(': ', 1)[0]}"


def default_cache() -> Path:
    path = Path(tempfile.gettempdir()) / "bitconvert-fuzz-seeds"
    path.mkdir(exist_ok=True)
    return path


def save_finding(finding: Finding, corpus: Path = CORPUS) -> Path:
    """Keep a failing input as a regression case: ``corpus/<parser>/<context>--<sha>.bin``."""
    digest = hashlib.sha256(finding.data).hexdigest()[:12]
    folder = corpus / finding.parser
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{finding.context.replace('/', '__')}--{digest}.bin"
    path.write_bytes(finding.data)
    return path


def corpus_cases(corpus: Path = CORPUS) -> list[tuple[str, str, Path]]:
    """(parser, context, file) of every kept regression case."""
    out = []
    for path in sorted(corpus.glob("*/*.bin")):
        context = path.name.rsplit("--", 1)[0].replace("__", "/")
        out.append((path.parent.name, context, path))
    return out
