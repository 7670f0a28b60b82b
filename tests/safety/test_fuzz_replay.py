"""The fuzz harness in CI: a bounded seeded pass per parser, and every kept failure replayed.

``BITCONVERT_FUZZ_INPUTS`` sets the inputs per parser (default 2000); the long run is
``python3 -m tests.fuzz --seconds N`` (tests/fuzz/README.md).
"""

from __future__ import annotations

import os

import pytest

from tests.fuzz.runner import BAD, Worker, corpus_cases, default_cache, run_many
from tests.fuzz.targets import PARSERS

INPUTS = int(os.environ.get("BITCONVERT_FUZZ_INPUTS", "2000"))


@pytest.fixture(scope="module")
def bounded_pass():
    """One seeded pass over every parser, three at a time (the CI budget: 90 s on two shared cores)."""
    return {r.parser: r for r in run_many(list(PARSERS), jobs=3, inputs=INPUTS, seed=0)}


@pytest.mark.parametrize("parser", PARSERS)
def test_a_bounded_seeded_pass_finds_no_bad_outcome(bounded_pass, parser):
    result = bounded_pass[parser]
    assert result.total == INPUTS
    listed = "\n".join(f"#{f.index} {f.context} {f.outcome}: {f.detail}" for f in result.findings[:20])
    assert result.bad == 0, f"{result.bad} of {result.total} inputs failed:\n{listed}"
    # both sides of the boundary are exercised: the seeds (and some mutants) open, many mutants are refused
    # (the tokenizer readers warn and carry on rather than refuse, so only they may refuse nothing)
    assert result.counts["accepted"] >= 1, result.counts
    assert parser == "tokenizer" or result.counts["refused"] >= INPUTS // 4, result.counts


CASES = corpus_cases()


@pytest.mark.parametrize("parser", sorted({c[0] for c in CASES}))
def test_every_kept_failure_now_replays_cleanly(parser):
    """Each input that once failed now ends as accepted or refused (one line), quickly, in bounded memory."""
    worker = Worker(parser, default_cache())
    try:
        failed = []
        for _, context, path in (c for c in CASES if c[0] == parser):
            outcome, detail, _ = worker.run(context, path.read_bytes())
            if outcome in BAD:
                failed.append(f"{path.name}: {outcome}: {detail}")
    finally:
        worker.stop()
    assert not failed, "\n".join(failed)
