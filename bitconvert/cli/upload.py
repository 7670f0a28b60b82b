"""`upload` and the Hub half of `convert --push-to`: argument parsing and rendering only."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..errors import BitconvertError
from .common import JsonOut, emit_json, err, out, print_conversion, progress_bar, state


def _quiet_client(json_out: bool) -> None:
    """huggingface_hub's progress bars go to stderr; keep them only for a person at a terminal."""
    if json_out or state["quiet"] or not err.is_terminal:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


def _print_plan(plan, *, dry_run: bool) -> None:
    d = plan.to_dict()
    head = Table(show_header=False, box=None, pad_edge=False)
    target = "a pull request against " if d["create_pr"] else ""
    private = ", private if created" if d["private"] else ""
    head.add_row("repository", f"{d['repo_id']} ({target}branch {d['revision']}{private})")
    head.add_row("source", f"{d['src']} ({d['format']})")
    head.add_row("verify", f"passed ({d['verify']['checks']} checks)")
    head.add_row("commit message", d["commit_message"])
    head.add_row("README.md", d["card_origin"])
    out.print(head)
    # One line per operation, full sha256 (sha256sum style), so the plan can be checked by eye or script.
    for op in d["operations"]:
        line = f"add {op['sha256']} {op['size']:>14,} {op['path']}  ({op['origin']})"
        out.print(line, highlight=False, markup=False, soft_wrap=True)
    _print_skipped(d["skipped"])
    out.print(f"{len(d['operations'])} files, {d['total_bytes']:,} bytes, one commit", highlight=False)
    if dry_run:
        out.rule("README.md")
        out.print(d["card"], markup=False, highlight=False, soft_wrap=True)
        out.rule()
        out.print("dry run: nothing was sent to the Hub", highlight=False)


def _print_result(result) -> None:
    d = result.to_dict()
    created = " (repository created)" if d["created_repo"] else ""
    # soft_wrap: shas and URLs stay whole on one line, for people and for grep
    what = f"opened a pull request against {d['repo_id']}@{d['revision']} with" if d["pr_url"] else "committed"
    where = "" if d["pr_url"] else f" to {d['repo_id']}@{d['revision']}"
    out.print(f"{what} {d['commit']}{where}{created}", highlight=False, soft_wrap=True)
    out.print(f"parent {d['parent_commit']}; {len(d['files'])} files, {d['total_bytes']:,} bytes", highlight=False,
              soft_wrap=True)
    out.print(d["pr_url"] or d["commit_url"], highlight=False, markup=False, soft_wrap=True)
    _print_skipped(d["skipped"])


def _print_skipped(skipped: list[dict]) -> None:
    for skip in skipped:
        out.print(f"skip {skip['path']}  ({skip['reason']})", highlight=False, markup=False, soft_wrap=True)


def upload(
    src: Annotated[str, typer.Argument(metavar="SRC", help="Checkpoint to upload: a directory, a file, or hf://ORG/NAME\\[@REV].")],
    repo_id: Annotated[str, typer.Argument(metavar="ORG/NAME", help="Destination model repository.")],
    revision: Annotated[
        Optional[str], typer.Option("--revision", help="Branch to commit to (created if missing).")
    ] = None,
    create_pr: Annotated[bool, typer.Option("--create-pr", help="Open a pull request instead of committing.")] = False,
    private: Annotated[
        bool, typer.Option("--private", help="Create the repository private (if it is created).")
    ] = False,
    commit_message: Annotated[Optional[str], typer.Option("--commit-message", help="Commit summary line.")] = None,
    card: Annotated[
        Optional[Path], typer.Option("--card", help="Use this file as README.md (model card).", readable=False)
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the operations and the card; send nothing.")
    ] = False,
    include_pickles: Annotated[
        bool, typer.Option("--include-pickles", help="Also upload pickle files (*.bin, *.pt, ...); left out otherwise.")
    ] = False,
    json_out: JsonOut = False,
) -> None:
    """Verify SRC, then upload it to the Hub as one commit, with a model card. Token: HF_TOKEN or `hf auth login`."""
    from ..publish.upload import plan_upload
    from ..publish.upload import upload as send

    with progress_bar(not json_out) as progress:
        plan = plan_upload(
            src, repo_id, revision=revision, create_pr=create_pr, private=private,
            commit_message=commit_message, card_file=card, progress=progress, include_pickles=include_pickles,
        )
    if dry_run:
        if json_out:
            emit_json({"dry_run": True, **plan.to_dict()})
        else:
            _print_plan(plan, dry_run=True)
        return
    _quiet_client(json_out)
    result = send(plan)
    if json_out:
        emit_json(result.to_dict())
    else:
        _print_result(result)


def convert_and_push(
    src, dst, to: str, options, push_to: str, *, force: bool, json_out: bool, hash_sources: bool = False
) -> None:
    """``convert --push-to``: convert, then upload DST; one JSON object with both when --json."""
    from ..convert import convert
    from ..hub.errors import HubError
    from ..hub.source import check_repo_id
    from ..publish.upload import plan_upload
    from ..publish.upload import upload as send

    check_repo_id(push_to)  # a typo should fail before the conversion, not after it
    with progress_bar(not json_out) as progress:
        converted = convert(src, dst, to, options, force=force, progress=progress, hash_sources=hash_sources)
    if not json_out:
        print_conversion(converted)
    try:
        plan = plan_upload(dst, push_to)
        _quiet_client(json_out)
        result = send(plan)
    except BitconvertError as exc:
        # The conversion itself succeeded and stays on disk; say so in the one line.
        raise HubError(f"converted to {dst}, but the upload failed: {exc}") from exc
    if json_out:
        emit_json({**converted.to_dict(), "upload": result.to_dict()})
    else:
        _print_result(result)
