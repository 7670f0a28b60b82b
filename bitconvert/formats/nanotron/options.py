"""The write options of ``nanotron``, apart from the writer so that the command line is built from
them without importing it (see ``formats/options.py``). Nothing heavy is imported here: the choices
are written out (``flavors.FLAVORS`` holds the same names; flavors.py checks)."""

from __future__ import annotations

from typing import Any

from ...errors import UsageError
from ..options import dtype_field, option, parse_flag, write_options

#: the flavors' names (``flavors.FLAVORS``) and the first one, which a non-Nanotron source gets
FLAVOR_CHOICES = ("pr180", "pr178", "main")
DEFAULT_FLAVOR = "pr180"
#: the checkpoint versions bitconvert writes
VERSIONS = ("1.4", "1.5")


def _parse_tp(value: Any) -> int:
    try:
        tp = int(value) if not isinstance(value, bool) else 0
    except (TypeError, ValueError):
        tp = 0
    if tp < 1 or str(tp) != str(value).strip():
        raise UsageError(f"--tp must be a positive integer, got {value!r}")
    return tp


def _parse_optional_flag(value: Any) -> bool | None:
    return None if value is None else bool(value)


@write_options
class NanotronOptions:
    #: None: a Nanotron source's own flavor (a reshard keeps it), else DEFAULT_FLAVOR
    flavor: str | None = option(
        None,
        "--nanotron-flavor",
        f"The Nanotron code the checkpoint is for: pr180 (BitNet PR head), pr178, main. "
        f"Default: a Nanotron source's own, else {DEFAULT_FLAVOR}.",
        choices=FLAVOR_CHOICES,
    )
    tp: int = option(1, "--tp", "Tensor-parallel size to write.", _parse_tp, metavar="N")
    #: None: the flavor's (the PRs' model interleaves; main's config default is HF order), or a
    #: Nanotron source's own where its flavor is kept
    rope_interleaved: bool | None = option(
        None, "--rope-interleaved", "RoPE row layout (main only).", _parse_optional_flag,
        negative="--no-rope-interleaved",
    )  # fmt: skip
    #: None: the version the flavor's own save_weights writes
    nanotron_version: str | None = option(
        None, "--nanotron-version", "Checkpoint version. Default: what the flavor's own save_weights writes.",
        choices=VERSIONS,
    )  # fmt: skip
    allow_approximate: bool = option(
        False, "--allow-approximate", "Accept a conversion that cannot be exact (packed -> Nanotron).", parse_flag
    )
    allow_lossy: bool = option(
        False, "--allow-lossy", "Convert although the flavor's model cannot hold all of the source model.", parse_flag
    )
    #: a dtype name ("BF16"); None: the source model's
    dtype: str | None = dtype_field("dtype of the written parameters. Default: the source model's.")
