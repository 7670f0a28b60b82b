"""Uploads: everything ``upload`` would send, planned locally (verify, list, hash, model card), then one commit."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import CheckpointError, UsageError
from ..hub.errors import HubError, hub_errors
from ..hub.source import PICKLE_SUFFIXES, SourceRef, check_repo_id, resolve_source
from ..io.provenance import sha256_file, visible_files
from ..io.suggest import no_such_path
from ..secrets import one_line, scrub_secrets

CARD_NAME = "README.md"


@dataclass
class PlannedFile:
    path_in_repo: str
    size: int
    sha256: str
    origin: str  # "checkpoint", "card kept", "card generated", "card from FILE"
    local: Path | None = None  # None: content held in memory (a generated card)
    content: bytes | None = None
    mtime_ns: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path_in_repo, "size": self.size, "sha256": self.sha256, "origin": self.origin}


@dataclass
class UploadPlan:
    src: str
    repo_id: str
    revision: str | None
    create_pr: bool
    private: bool
    commit_message: str
    format: str
    files: list[PlannedFile]
    card: str
    card_origin: str
    verify: dict[str, Any]
    source: SourceRef | None = field(repr=False, default=None)
    #: files of SRC left out of the upload: {"path", "reason"}
    skipped: list[dict[str, str]] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {
            "src": self.src,
            "repo_id": self.repo_id,
            "revision": self.revision or "main",
            "create_pr": self.create_pr,
            "private": self.private,
            "commit_message": self.commit_message,
            "format": self.format,
            "verify": self.verify,
            "operations": [f.to_dict() for f in self.files],
            "skipped": self.skipped,
            "total_bytes": self.total_bytes,
            "card_origin": self.card_origin,
            "card": self.card,
        }


@dataclass
class UploadResult:
    repo_id: str
    revision: str
    commit: str
    commit_url: str
    pr_url: str | None
    parent_commit: str
    created_repo: bool
    created_branch: bool
    plan: UploadPlan

    def to_dict(self) -> dict[str, Any]:
        return {
            "repo_id": self.repo_id,
            "revision": self.revision,
            "commit": self.commit,
            "commit_url": self.commit_url,
            "pr_url": self.pr_url,
            "parent_commit": self.parent_commit,
            "created_repo": self.created_repo,
            "created_branch": self.created_branch,
            "files": [f.to_dict() for f in self.plan.files],
            "skipped": self.plan.skipped,
            "total_bytes": self.plan.total_bytes,
        }


def _open_verified(path: Path, progress) -> tuple[Any, dict[str, Any]]:
    """SRC opened once, and the verify issue's integrity checks of it; a failure stops the upload
    before any request. Returns the checkpoint and the plan's verify summary."""
    from ..formats import open_checkpoint
    from ..verify.integrity import open_failure, verify_integrity
    from ..verify.report import VerifyReport, check_line

    try:
        ckpt = open_checkpoint(path)
    except CheckpointError as exc:  # as verify reports it: the first check failed
        ckpt, report = None, VerifyReport(str(path), [open_failure(exc)])
    else:
        report = verify_integrity(ckpt, progress=progress, digests=False)
    failed = [one_line(check_line(c)) for c in report.checks if not c.passed]
    if failed:
        more = f" (+{len(failed) - 1} more)" if len(failed) > 1 else ""
        raise CheckpointError(path, f"fails its integrity checks, so nothing was uploaded: {failed[0]}{more}")
    return ckpt, {"passed": True, "checks": len(report.checks), "notes": list(report.notes)}


def default_commit_message(fmt: str) -> str:
    return f"Upload {fmt} BitNet b1.58 checkpoint (bitconvert {__version__})"


def plan_upload(
    src: str | os.PathLike,
    repo_id: str,
    *,
    revision: str | None = None,
    create_pr: bool = False,
    private: bool = False,
    commit_message: str | None = None,
    card_file: str | os.PathLike | None = None,
    endpoint: str | None = None,
    progress=None,
    include_pickles: bool = False,
) -> UploadPlan:
    """Everything ``upload`` would send, computed locally: verify SRC, list files with sha256, make the card.

    No network for a local SRC (an hf:// SRC is first resolved, from the cache when offline). This
    is the whole of ``--dry-run``. ``progress(done, total, tensor)`` follows the integrity checks.
    Stages: check the request, resolve and verify SRC, list its files, choose the card.
    Pickles (``*.bin``, ``*.pt``, ...) are left out and listed in ``skipped`` unless ``include_pickles``;
    a symlink that resolves outside SRC is refused (a local file must not leave the machine by accident).
    """
    from ..formats import no_progress

    card_path = _check_request(repo_id, revision, commit_message, card_file)
    source = resolve_source(src, endpoint=endpoint)
    if not source.path.exists():
        raise UsageError(no_such_path(src))
    ckpt, verify = _open_verified(source.path, progress or no_progress)
    files, skipped = _checkpoint_files(source, replaced_card=card_path is not None, include_pickles=include_pickles)
    card_text, card_origin, card_file_entry = _choose_card(source, ckpt, repo_id, files, card_path)
    if card_file_entry is not None:
        files.append(card_file_entry)
    files.sort(key=lambda f: f.path_in_repo)
    return UploadPlan(
        src=str(source.uri or src),
        repo_id=repo_id,
        revision=revision,
        create_pr=create_pr,
        private=private,
        commit_message=commit_message or default_commit_message(ckpt.format),
        format=ckpt.format,
        files=files,
        card=card_text,
        card_origin=card_origin,
        verify=verify,
        source=source,
        skipped=skipped,
    )


def _check_request(
    repo_id: str, revision: str | None, commit_message: str | None, card_file: str | os.PathLike | None
) -> Path | None:
    """Refuse a malformed request before any work; returns the --card path, if any."""
    check_repo_id(repo_id)
    if revision is not None and not revision.strip():
        raise UsageError("--revision may not be empty")
    if commit_message is not None and not commit_message.strip():
        raise UsageError("--commit-message may not be empty")
    card_path = Path(card_file) if card_file is not None else None
    if card_path is not None and not card_path.is_file():
        raise UsageError(f"{card_path}: no such card file")
    return card_path


def _checkpoint_files(
    source: SourceRef, *, replaced_card: bool, include_pickles: bool
) -> tuple[list[PlannedFile], list[dict[str, str]]]:
    """SRC's files with size and sha256, and those left out: an existing README.md when --card replaces
    it, pickles unless asked for."""
    root = source.path
    # An hf:// source uploads what was selected for it, not whatever else sits in the cached snapshot.
    if root.is_file():
        paths = [root]
    else:
        paths = [root / f for f in source.files] if source.files is not None else visible_files(root)
    files, skipped = [], []
    for p in paths:
        rel = p.name if root.is_file() else p.relative_to(root).as_posix()
        if rel == CARD_NAME and replaced_card:
            skipped.append({"path": rel, "reason": "replaced by --card"})
            continue
        if rel.lower().endswith(PICKLE_SUFFIXES) and not include_pickles:
            skipped.append({"path": rel, "reason": "pickle (add --include-pickles to upload it)"})
            continue
        if source.repo_id is None and not root.is_file():
            _refuse_outside_link(root, p)
        st = p.stat()
        origin = "card kept" if rel == CARD_NAME else "checkpoint"
        files.append(PlannedFile(rel, st.st_size, sha256_file(p), origin, local=p, mtime_ns=st.st_mtime_ns))
    return files, skipped


def _refuse_outside_link(root: Path, path: Path) -> None:
    """A file reached through a symlink that leads out of SRC (``notes.txt -> ~/.cache/huggingface/token``)
    is refused, not uploaded; the rule every reader applies (the Hugging Face cache's snapshot -> blob
    links are its own and followed)."""
    from ..formats.hf.common import check_inside

    try:
        check_inside(path, root)
    except CheckpointError as exc:
        raise CheckpointError(exc.path, f"{exc.problem}; nothing was uploaded") from None


def _choose_card(
    source: SourceRef, ckpt, repo_id: str, files: list[PlannedFile], card_path: Path | None
) -> tuple[str, str, PlannedFile | None]:
    """(card text, where it came from, the file to add for it): --card, else SRC's README.md, else generated."""
    existing = next((f for f in files if f.path_in_repo == CARD_NAME), None)
    if card_path is not None:
        text, origin = _read_card(card_path), f"card from {card_path}"
    elif existing is not None:
        return _read_card(existing.local), "card kept", None  # already among the files
    else:
        text, origin = _generated_card(source, ckpt, repo_id, files), "card generated"
    data = text.encode("utf-8")
    return text, origin, PlannedFile(CARD_NAME, len(data), _sha256_bytes(data), origin, content=data)


def _generated_card(source: SourceRef, ckpt, repo_id: str, files: list[PlannedFile]) -> str:
    from ..model.checkpoint import Kind  # numpy: only once there is a checkpoint (a refusal costs none)
    from ..model.sentence_transformers import read_embedding_setup
    from .card import CardInput, render_card

    # what the source records of its own origin, as its reader found it (no second parse of the file)
    provenance = dict(ckpt.origin.recorded_provenance) if ckpt.origin.recorded_provenance else None
    if source.repo_id is not None:
        # Re-hosting an hf:// source: that repository is what these weights came from, unless its own
        # provenance names an earlier one.
        found = provenance or {"source": source.describe()}
        provenance = {**found, "base_model": found.get("base_model") or source.repo_id,
                      "license": found.get("license") or source.license}
    return render_card(
        CardInput(
            repo_id=repo_id,
            format=ckpt.format,
            architecture=ckpt.config.family.key,
            files=[f.path_in_repo for f in files],
            provenance=provenance,
            storage=sorted({e.label for e in ckpt.tensors.values() if e.kind is Kind.TERNARY and e.label}),
            linear_class=getattr(ckpt.source_linear_class(), "value", None),
            embedding=read_embedding_setup(ckpt.side_file_names()),
        )
    )


def _read_card(path: Path) -> str:
    """A card given by the user, checked here as the Hub will parse it, so a bad one fails before any request."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CheckpointError(path, "the model card is not UTF-8 text") from None
    if text.lstrip().startswith("---"):  # without a metadata block the Hub takes it as plain text
        from huggingface_hub import ModelCard

        try:
            ModelCard(text)
        except Exception as exc:  # yaml's and huggingface_hub's own errors, whatever their class
            raise CheckpointError(path, f"the model card's metadata block does not parse: {one_line(exc)}") from None
    return text


def _sha256_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _operations(plan: UploadPlan) -> list:
    from huggingface_hub import CommitOperationAdd

    ops = []
    for f in plan.files:
        if f.local is not None:
            st = f.local.stat()
            if st.st_size != f.size or st.st_mtime_ns != f.mtime_ns:
                raise CheckpointError(f.local, "changed after it was verified and hashed; nothing was uploaded")
            op = CommitOperationAdd(path_in_repo=f.path_in_repo, path_or_fileobj=str(f.local))
            # Hashed once while planning; the client would otherwise read every file again.
            op.upload_info.sha256 = bytes.fromhex(f.sha256)
        else:
            op = CommitOperationAdd(path_in_repo=f.path_in_repo, path_or_fileobj=f.content)
        ops.append(op)
    return ops


def upload(plan: UploadPlan, *, endpoint: str | None = None) -> UploadResult:
    """Send ``plan`` as exactly one commit: create the repo (and branch) if missing, then ``create_commit``
    with ``parent_commit`` set to the branch head seen at the start, so a concurrent push makes the
    Hub refuse this commit (HTTP 412) instead of being silently overwritten."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    api = HfApi(endpoint=endpoint, library_name="bitconvert", library_version=__version__)
    repo_id, branch = plan.repo_id, plan.revision or "main"
    created_repo = created_branch = False
    with hub_errors(repo_id, "create the repository"):
        try:
            api.repo_info(repo_id)
        except RepositoryNotFoundError:
            api.create_repo(repo_id, private=plan.private, exist_ok=True)
            created_repo = True
    with hub_errors(f"{repo_id}@{branch}", "read the branch head"):
        try:
            parent = api.repo_info(repo_id, revision=branch).sha
        except RevisionNotFoundError:
            if plan.create_pr:
                raise HubError(f"{repo_id}: no branch {branch!r} to open a pull request against") from None
            api.create_branch(repo_id, branch=branch, exist_ok=True)
            created_branch = True
            parent = api.repo_info(repo_id, revision=branch).sha
    if not parent:
        raise HubError(f"{repo_id}@{branch}: the Hub did not report the branch head commit")
    operations = _operations(plan)
    with hub_errors(f"{repo_id}@{branch}", "commit"):
        info = api.create_commit(
            repo_id,
            operations,
            commit_message=plan.commit_message,
            commit_description=_commit_description(plan),
            revision=plan.revision,
            create_pr=plan.create_pr,
            parent_commit=parent,
        )
    return UploadResult(
        repo_id=repo_id,
        revision=branch,
        commit=info.oid,
        commit_url=str(info.commit_url),
        pr_url=info.pr_url,
        parent_commit=parent,
        created_repo=created_repo,
        created_branch=created_branch,
        plan=plan,
    )


def _commit_description(plan: UploadPlan) -> str:
    src = plan.source
    origin = f"{src.uri} ({src.commit})" if src is not None and src.repo_id else "a local checkpoint"
    return scrub_secrets(
        f"{len(plan.files)} files, {plan.total_bytes:,} bytes, from {origin}; integrity checks passed "
        f"({plan.verify.get('checks', 0)} checks)."
    )
