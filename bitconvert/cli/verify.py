"""`verify`: integrity and comparison checks for CI. The library composes the run
(:class:`bitconvert.verify.VerifyRequest`, :func:`bitconvert.verify.run`); this module parses the
options into a request and renders, prints and writes the report."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator, Literal, Optional

import typer
from rich.table import Table

from ..formats import OPTIONS, writer_names
from .common import Device, JsonOut, Src, err, out, parse_tokens, progress_bar
from .options import cli_options

#: ``--recipe``: ``auto`` (each recipe the format takes) or one of the writers' recipes
RECIPES = ("auto", *next(o.choices for o in cli_options(tuple(OPTIONS)) if o.name == "recipe"))


def verify(
    src: Src,
    against: Annotated[
        Optional[Path],
        typer.Option("--against", help="Reference checkpoint (any format) to compare SRC with.", readable=False),
    ] = None,
    logits: Annotated[
        bool,
        typer.Option("--logits", help="Also compare the reference runtime's logits (with --against or --roundtrip)."),
    ] = False,
    embeddings: Annotated[
        bool,
        typer.Option("--embeddings", help="Also compare the runtime's sentence embeddings (embedding models; "
                     "with --against or --roundtrip)."),
    ] = False,
    roundtrip: Annotated[
        Optional[Literal[tuple(writer_names())]],
        typer.Option("--roundtrip", help="Convert SRC to this format and back in a temp dir; compare.",
                     case_sensitive=False),
    ] = None,
    manifest: Annotated[
        Optional[Path],
        typer.Option("--manifest", metavar="FILE", help="Write a sha256 per tensor to FILE (when SRC passes)."),
    ] = None,
    manifest_check: Annotated[
        Optional[Path],
        typer.Option("--manifest-check", metavar="FILE", help="Check every tensor's sha256 against FILE.",
                     readable=False),
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
    min_cosine: Annotated[
        Optional[float],
        typer.Option("--min-cosine", help="Lowest cosine allowed per text with --embeddings "
                     "(default 1-1e-6: float32 arithmetic, REF running with the weights as SRC holds them)."),
    ] = None,
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
            "--reproduce", metavar="MASTER", help="Rebuild SRC (hf-packed or GGUF) from MASTER; compare bit for bit.",
            readable=False,
        ),
    ] = None,
    recipe: Annotated[
        Literal[RECIPES],
        typer.Option("--recipe", help="With --reproduce: one recipe, or auto (each the format takes).",
                     case_sensitive=False),
    ] = "auto",
    json_out: JsonOut = False,
) -> None:
    """Check SRC's integrity; --against, --roundtrip, --reproduce or --target compare it too. Exit 0 all pass, 1 any fail."""
    from ..io.staging import check_output
    from ..verify import Thresholds, VerifyRequest, run

    if junit is not None:
        check_output(junit, force=True, what="JUnit report")  # before any work, and before an error report
    with _reported_errors(src, junit, json_out):
        report = _run(src, against, logits, embeddings, tokens, device, roundtrip, target, reproduce, recipe,
                      manifest, manifest_check, Thresholds(max_code_mismatches, scale_rtol, atol, logits_atol,
                                                           min_argmax_agreement, min_cosine), json_out)  # fmt: skip
    if junit is not None:
        report.write_junit(junit)
    if json_out:
        sys.stdout.write(report.to_json(manifest_written=report.manifest_written))
    else:
        _render(report, show_all)
    if not report.passed:
        raise typer.Exit(1)


def _run(src, against, logits, embeddings, tokens, device, roundtrip, target, reproduce, recipe, manifest, manifest_check,
         thresholds, json_out):  # fmt: skip
    from ..verify import VerifyRequest, run

    request = VerifyRequest(
        against=against, logits=logits, embeddings=embeddings, tokens=parse_tokens(tokens) if tokens is not None else None, device=device,
        roundtrip=roundtrip, target=target, reproduce=reproduce, recipe=recipe, manifest=manifest,
        manifest_check=manifest_check, thresholds=thresholds,
    )  # fmt: skip
    with progress_bar(not json_out) as progress:
        return run(src, request, progress=progress)  # refuses a contradictory request before reading


@contextmanager
def _reported_errors(src: Path, junit: Path | None, json_out: bool) -> Iterator[None]:
    """A run that ends in an error (usage, an unreadable manifest) still leaves its reports: a JUnit
    file with one error case, a JSON object on stdout; the error line and exit code follow as usual."""
    from ..errors import BitconvertError
    from ..io.staging import write_atomically
    from ..verify.report import junit_error_xml

    try:
        yield
    except BitconvertError as exc:
        if junit is not None:
            write_atomically(junit, junit_error_xml(str(src), str(exc)), "JUnit report")
        if json_out:
            sys.stdout.write(json.dumps({"passed": False, "src": str(src), "error": str(exc),
                                         "exit_code": exc.exit_code}, indent=2) + "\n")
        raise


def _render(report, show_all: bool) -> None:
    from ..verify.report import check_line, format_figure

    verdict = "[bold green]PASSED[/]" if report.passed else "[bold red]FAILED[/]"
    against = f" against {report.against}" if report.against else ""
    out.print(f"verify {report.src}{against}: {verdict} ({len(report.checks)} checks, {len(report.failures)} failed)",
              highlight=False)
    summary = Table("check", "passed", "failed", "largest figure")
    largest = report.largest_figures()
    for name, counts in report.summary().items():
        worst = format_figure(largest[name]) if largest[name] is not None else ""
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
    if report.manifest_written:
        out.print(f"manifest written to {report.manifest_written}", highlight=False)
    for c in report.failures[:20]:  # one plain line per failure on stderr, for CI logs
        err.print(f"FAIL {check_line(c)}", highlight=False, markup=False, soft_wrap=True)
