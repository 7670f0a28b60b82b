"""The bundled fixtures the README's GGUF examples run on (tests/cli/test_documented_commands.py runs
them): their 256-wide rows fill TQ blocks."""

from __future__ import annotations

import json

from conftest import ROOT


def test_the_wide_fixtures_rows_fill_tq_blocks():
    cfg = json.loads((ROOT / "fixtures" / "bitnet-2b4t-256-master" / "config.json").read_text())
    assert cfg["hidden_size"] % 256 == 0 and cfg["intermediate_size"] % 256 == 0
