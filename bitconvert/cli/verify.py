"""`verify`: integrity and comparison checks for CI."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..errors import UsageError
from .common import Device, JsonOut, Src, emit_json, err, out, parse_tokens, progress_bar


def _write_atomically(path: Path, text: str) -> None:
    if not path.parent.is_dir():
        raise UsageError(f"{path.parent}: output folder does not exist")
    tmp = path.parent / f".{path.name}.bitconvert-partial"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def verify(
    src: Src,
    against: Annotated[
        Optional[Path], typer.Option("--against", help="Reference checkpoint (any format) to compare SRC with.")
    ] = None,
    logits: Annotated[
        bool,
        typer.Option("--logits", help="Also compare the reference runtime's logits (with --against or --roundtrip)."),
    ] = False,
    roundtrip: Annotated[
        Optional[str],
        typer.Option("--roundtrip", metavar="FORMAT", help="Convert SRC to FORMAT and back in a temp dir; compare."),
    ] = None,
    manifest: Annotated[
        Optional[Path],
        typer.Option("--manifest", metavar="FILE", help="Write a sha256 per tensor to FILE (when SRC passes)."),
    ] = None,
    manifest_check: Annotated[
        Optional[Path],
        typer.Option("--manifest-check", metavar="FILE", help="Check every tensor's sha256 against FILE."),
    ] = None,
    tokens: Annotated[
        Optional[str],
        typer.Option("--tokens", help="Token ids for --logits, e.g. 1,2,3 (default: a fixed sequence of 16)."),
    ] = None,
    max_code_mismatches: Annotated[
        int, typer.Option("--max-code-mismatches", help="Differing ternary codes allowed per tensor.")
    ] = 0,
    scale_rtol: Annotated[float, typer.Option("--scale-rtol", help="Relative difference allowed per scale.")] = 0.0,
    atol: Annotated[float, typer.Option("--atol", help="Max abs difference allowed per dense tensor.")] = 0.0,
    logits_atol: Annotated[float, typer.Option("--logits-atol", help="Max abs difference allowed in logits.")] = 1e-4,
    min_argmax_agreement: Annotated[
        float, typer.Option("--min-argmax-agreement", help="Fraction of positions whose top token must agree.")
    ] = 1.0,
    device: Device = "cpu",
    target: Annotated[
        Optional[str],
        typer.Option("--target", metavar="CONSUMER",
                     help="Check what CONSUMER computes from SRC (transformers, llama.cpp, bitnet.cpp, "
                          "bitnet.cpp-arm, nanotron-pr180, nanotron-pr178, nanotron-main); see docs/consumers.md."),
    ] = None,
    junit: Annotated[
        Optional[Path], typer.Option("--junit", metavar="FILE", help="Write JUnit XML, one test case per check.")
    ] = None,
    show_all: Annotated[bool, typer.Option("--all", help="List passing checks too, not only failures.")] = False,
    reproduce: Annotated[
        Optional[Path],
        typer.Option(
            "--reproduce", metavar="MASTER", help="Rebuild SRC (hf-packed or GGUF) from MASTER; compare bit for bit."
        ),
    ] = None,
    recipe: Annotated[
        str,
        typer.Option(
            "--recipe", help="With --reproduce: transformers, onebitllms, llama.cpp, bitnet.cpp, or auto (each)."
        ),
    ] = "auto",
    json_out: JsonOut = False,
) -> None:
    """Check SRC's integrity; --against, --roundtrip, --reproduce or --target compare it too. Exit 0 all pass, 1 any fail."""
    from ..verify import Thresholds

    _check_options(logits, against, roundtrip, tokens, manifest_check,
                   (max_code_mismatches, scale_rtol, atol, logits_atol, min_argmax_agreement))
    if reproduce is None and recipe != "auto":
        raise UsageError("--recipe is used by --reproduce only")
    ids = parse_tokens(tokens) if tokens is not None else None
    if target is not None:  # an unknown consumer is a usage error before any reading
        from ..verify.targets import consumer

        consumer(target)
    th = Thresholds(max_code_mismatches, scale_rtol, atol, logits_atol, min_argmax_agreement)
    with progress_bar(not json_out) as progress:
        report = _run_checks(src, against, roundtrip, manifest, manifest_check, th, logits, ids, device, progress)
        if reproduce is not None:
            _merge(report, _reproduce(src, reproduce, recipe, progress), "")
    if target is not None:  # what the consumer computes: bitconvert/verify/targets.py
        from ..verify.targets import verify_target

        _merge(report, verify_target(src, target), "target.")
    written = _write_manifest(report, manifest)
    if junit is not None:
        _write_atomically(junit, report.to_junit_xml())
    if json_out:
        emit_json({**report.to_dict(), "manifest_written": written})
    else:
        _render(report, show_all, written)
    if not report.passed:
        raise typer.Exit(1)


def _check_options(logits, against, roundtrip, tokens, manifest_check, thresholds) -> None:
    """Refuse contradictory or out-of-range options before any checkpoint is read."""
    max_code_mismatches, scale_rtol, atol, logits_atol, min_argmax_agreement = thresholds
    if logits and against is None and roundtrip is None:
        raise UsageError("--logits compares two models: add --against REF or --roundtrip FORMAT")
    if tokens is not None and not logits:
        raise UsageError("--tokens is used by --logits only")
    if min_argmax_agreement < 0 or min_argmax_agreement > 1:
        raise UsageError(f"--min-argmax-agreement is a fraction between 0 and 1, got {min_argmax_agreement}")
    if min(max_code_mismatches, scale_rtol, atol, logits_atol) < 0:
        raise UsageError("thresholds must not be negative")
    if manifest_check is not None and not manifest_check.is_file():
        raise UsageError(f"{manifest_check}: no such file")


def _run_checks(src, against, roundtrip, manifest, manifest_check, th, logits, ids, device, progress):
    """Integrity first, then the comparisons asked for, merged into one report."""
    from ..verify import verify_integrity  # the comparisons compute on tensors: imported when asked for

    # digests only for a manifest written or checked: hashing is a quarter of the work
    wanted = manifest is not None or manifest_check is not None
    report = verify_integrity(src, manifest_check=manifest_check, progress=progress, digests=wanted)
    if against is not None:
        from ..verify import verify_against

        other = verify_against(src, against, thresholds=th, logits=logits, tokens=ids, device=device, progress=progress)
        _merge(report, other, "against.")
    if roundtrip is not None:
        from ..verify import verify_roundtrip

        _merge(report, verify_roundtrip(src, roundtrip, thresholds=th, logits=logits, progress=progress), "roundtrip.")
    return report


def _reproduce(src, master: Path, recipe: str, progress):
    from ..verify.reproduce import verify_reproduce

    if not master.exists():
        raise UsageError(f"{master}: no such file or directory")
    return verify_reproduce(src, master, recipe=recipe, progress=progress)


def _write_manifest(report, manifest: Path | None) -> str | None:
    """Write the per-tensor sha256 manifest when asked and SRC passed; returns where it went."""
    from ..verify import write_manifest

    if manifest is None:
        return None
    if report.passed and report.manifest is not None:
        write_manifest(report.manifest, manifest)
        return str(manifest)
    report.notes.append(f"manifest not written to {manifest}: SRC did not pass")
    return None


def _merge(report, other, prefix: str) -> None:
    report.extend(other, prefix)
    if other.against:
        report.against = other.against if report.against is None else f"{report.against}, {other.against}"


def _render(report, show_all: bool, manifest_written: str | None) -> None:
    from ..verify.report import check_line, format_figure

    verdict = "[bold green]PASSED[/]" if report.passed else "[bold red]FAILED[/]"
    against = f" against {report.against}" if report.against else ""
    out.print(f"verify {report.src}{against}: {verdict} ({len(report.checks)} checks, {len(report.failures)} failed)",
              highlight=False)
    summary = Table("check", "passed", "failed", "largest figure")
    for name, counts in report.summary().items():
        figs = [c.figure for c in report.checks if c.name == name and c.figure is not None]
        worst = format_figure(max(figs, key=abs)) if figs else ""
        style = "red" if counts["failed"] else None
        summary.add_row(name, str(counts["passed"]), str(counts["failed"]), worst, style=style)
    out.print(summary)
    rows = report.checks if show_all else report.failures
    if rows:
        table = Table("check", "tensor", "figure", "limit", "detail", title="all checks" if show_all else "failures")
        for c in rows:
            table.add_row(
                c.name, c.tensor or "", format_figure(c.figure), format_figure(c.threshold), c.detail,
                style=None if c.passed else "red",
            )
        out.print(table)
    for note in report.notes:
        out.print(f"[yellow]note:[/] {note}", highlight=False)
    if manifest_written:
        out.print(f"manifest written to {manifest_written}", highlight=False)
    for c in report.failures[:20]:  # one plain line per failure on stderr, for CI logs
        err.print(f"FAIL {check_line(c)}", highlight=False, markup=False, soft_wrap=True)
