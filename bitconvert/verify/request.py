"""One ``verify`` run as the library composes it: what was asked (:class:`VerifyRequest`), and :func:`run`.

Integrity first, then the comparisons asked for (``--against``, ``--roundtrip``, ``--reproduce``,
``--target``), merged into one report with their checks prefixed (``against.codes``), and the
manifest written when SRC passed everything. Contradictory or out-of-range requests are refused as
usage errors before any checkpoint is read. Nothing is printed; the caller renders the report and
writes it with :meth:`VerifyReport.write_json` / :meth:`VerifyReport.write_junit`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import UsageError
from ..extras import require
from ..formats import Progress, no_progress
from ..io.staging import check_output
from ..io.suggest import no_such_path
from .report import Thresholds, VerifyReport


@dataclass(frozen=True)
class VerifyRequest:
    """What one ``verify SRC`` run checks besides SRC's integrity (every field optional)."""

    #: compare SRC with this reference checkpoint (any format)
    against: str | Path | None = None
    #: with ``against`` or ``roundtrip``: also compare the reference runtime's logits (torch)
    logits: bool = False
    #: with ``against`` or ``roundtrip``, for embedding models: compare the runtime's sentence embeddings
    embeddings: bool = False
    #: token ids for ``logits`` (default: a fixed sequence of 16)
    tokens: Sequence[int] | None = None
    #: where the runtime computes ``logits``
    device: str = "cpu"
    #: convert SRC to this format and back in a temporary folder, and compare
    roundtrip: str | None = None
    #: writer options for the first leg of ``roundtrip`` (default: SRC's own storage choices)
    roundtrip_options: Mapping[str, Any] | None = None
    #: check what this consumer (``transformers``, ``llama.cpp``, ...) computes from SRC
    target: str | None = None
    #: rebuild SRC (hf-packed or GGUF) from this master with ``recipe``, and compare bit for bit
    reproduce: str | Path | None = None
    #: with ``reproduce``: a recipe name, or ``auto`` for each the format takes
    recipe: str = "auto"
    #: write a sha256 per tensor to this file when SRC passes
    manifest: str | Path | None = None
    #: check every tensor's sha256 against this manifest (a path, or one already loaded)
    manifest_check: str | Path | dict[str, Any] | None = None
    thresholds: Thresholds = Thresholds()
    #: SRC's format, where it should not be detected
    format: str | None = None

    def check(self) -> None:
        """Refuse, as a UsageError, a request that contradicts itself or names what does not exist."""
        th = self.thresholds
        if self.logits and self.against is None and self.roundtrip is None:
            raise UsageError("--logits compares two models: add --against REF or --roundtrip FORMAT")
        if self.embeddings and self.against is None and self.roundtrip is None:
            raise UsageError("--embeddings compares two models: add --against REF or --roundtrip FORMAT")
        if self.embeddings and self.logits:
            raise UsageError("--logits compares causal LMs, --embeddings embedding models: give one")
        if self.tokens is not None and not self.logits:
            raise UsageError("--tokens is used by --logits only")
        if self.reproduce is None and self.recipe != "auto":
            raise UsageError("--recipe is used by --reproduce only")
        if not 0 <= th.argmax_agreement <= 1:
            raise UsageError(f"--min-argmax-agreement is a fraction between 0 and 1, got {th.argmax_agreement}")
        if min(th.code_mismatches, th.scale_rtol, th.atol, th.logits_atol) < 0:
            raise UsageError("thresholds must not be negative")
        if th.min_cosine is not None and not -1 <= th.min_cosine <= 1:
            raise UsageError(f"--min-cosine is a cosine between -1 and 1, got {th.min_cosine}")
        if isinstance(self.manifest_check, (str, Path)) and not Path(self.manifest_check).exists():
            raise UsageError(no_such_path(self.manifest_check, "no such file"))
        if self.manifest is not None:
            check_output(Path(self.manifest), force=True, what="manifest")
        if self.reproduce is not None and not Path(self.reproduce).exists():
            raise UsageError(no_such_path(self.reproduce))
        if self.roundtrip is not None:
            from ..formats import writes_directory

            writes_directory(self.roundtrip)  # an unknown format, before any work (no writer imported)
        if self.target is not None:
            from .targets import consumer

            consumer(self.target)  # an unknown consumer, before any reading
        if self.logits or self.embeddings:  # last: it imports torch
            require("runtime", "verify --logits" if self.logits else "verify --embeddings")

    @property
    def hashed(self) -> bool:
        """Whether tensors are hashed: only for a manifest written or checked (a quarter of the work)."""
        return self.manifest is not None or self.manifest_check is not None


def run(src: str | Path, request: VerifyRequest = VerifyRequest(), *, progress: Progress = no_progress) -> VerifyReport:
    """Every check ``request`` asks for on SRC, in one report; ``report.passed`` is the verdict.

    Raises UsageError for a request refused by :meth:`VerifyRequest.check` (or a missing SRC), and
    CheckpointError for an unreadable ``manifest_check``; every problem of a checkpoint is a check.
    When ``request.manifest`` is set, the manifest is written there (atomically) if SRC passed,
    and ``report.manifest_written`` names it; otherwise a note says why not.
    """
    request.check()  # before the checks' modules (and numpy) are imported: a refusal costs none
    from .integrity import verify_integrity

    th = request.thresholds
    report = verify_integrity(src, manifest_check=request.manifest_check, format=request.format,
                              progress=progress, digests=request.hashed)  # fmt: skip
    if request.against is not None:
        from .compare import verify_against

        report.merge(verify_against(src, request.against, thresholds=th, logits=request.logits,
                                    embeddings=request.embeddings, tokens=request.tokens, device=request.device, src_format=request.format,
                                    progress=progress), "against.")  # fmt: skip
    if request.roundtrip is not None:
        from .roundtrip import verify_roundtrip

        report.merge(verify_roundtrip(src, request.roundtrip, thresholds=th, options=request.roundtrip_options,
                                      logits=request.logits, embeddings=request.embeddings,
                                      progress=progress), "roundtrip.")  # fmt: skip
    if request.reproduce is not None:
        from .reproduce import verify_reproduce

        report.merge(verify_reproduce(src, request.reproduce, recipe=request.recipe, progress=progress))
    if request.target is not None:
        from .targets import verify_target

        report.merge(verify_target(src, request.target, format=request.format), "target.")
    if request.manifest is not None:
        _write_manifest(report, Path(request.manifest))
    return report


def _write_manifest(report: VerifyReport, path: Path) -> None:
    from .manifest import write_manifest

    if report.passed and report.manifest is not None:
        write_manifest(report.manifest, path)
        report.manifest_written = str(path)
    else:
        report.notes.append(f"manifest not written to {path}: SRC did not pass")
