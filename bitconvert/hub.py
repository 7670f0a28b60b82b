"""The Hugging Face Hub: ``hf://`` sources resolved to local snapshots, and single-commit uploads.

All traffic goes through ``huggingface_hub``, which also decides the endpoint (``HF_ENDPOINT``), the
cache (``HF_HOME`` / ``HF_HUB_CACHE``), the token (``HF_TOKEN`` or the saved token file) and offline
mode (``HF_HUB_OFFLINE``). bitconvert never reads, prints or stores the token itself; the only thing
it does with it is remove it from any text it shows or writes (:func:`scrub_secrets`).

``huggingface_hub`` is imported inside the functions that talk to the Hub, so local-only commands do
not pay for the import.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Iterator
from urllib.parse import unquote

from . import __version__
from .errors import BitconvertError, CheckpointError, UsageError
from .provenance import PROVENANCE_NAME, read_provenance, sha256_file, visible_files

SCHEME = "hf://"
CARD_NAME = "README.md"

# Files the Hugging Face directory readers use, besides the weights (see formats/hf/common.py).
HF_SIDE_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "merges.txt",
    PROVENANCE_NAME,
)
LICENSE_GLOBS = ("LICENSE*", "LICENCE*", "NOTICE*", "USE_POLICY*")
HF_INDEX = "model.safetensors.index.json"
HF_SINGLE = "model.safetensors"
NANOTRON_FILES = ("config.yaml", "model_config.json", "checkpoint_metadata.json")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")  # as formats/hf/common.py (which imports torch)

_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"
_REPO_ID = re.compile(rf"{_NAME}/{_NAME}")


class HubError(BitconvertError):
    """The Hub refused or could not be reached. Exit code 1; the message is one line, token-free."""


# --- secrets ----------------------------------------------------------------------------------


def _known_tokens() -> list[str]:
    """The tokens the client may send: HF_TOKEN (or its old name) and the saved token file.

    Read directly, not with ``huggingface_hub.get_token()``, which may exchange or refresh a token
    over the network (OIDC, OAuth) -- scrubbing must never cause a request.
    """
    found = [os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN")]
    try:
        from huggingface_hub import constants

        text = Path(constants.HF_TOKEN_PATH).read_text(encoding="utf-8", errors="replace")
        found += [text.strip(), *re.findall(r'"([^"\s]{16,})"', text)]  # plain token, or tokens inside JSON
    except (OSError, ImportError, AttributeError):
        pass
    return sorted({t.strip() for t in found if t and len(t.strip()) >= 8}, key=len, reverse=True)


# Shapes of secrets even when their value is unknown here (an OIDC token, a header echoed back).
_SECRET_SHAPES = [(re.compile(r"\bhf_[A-Za-z0-9]{16,}"), "hf_***"), (re.compile(r"(?i)\bBearer\s+\S+"), "Bearer ***")]


def scrub_secrets(text: str) -> str:
    """``text`` without the Hub token: known token values and token-shaped strings become ``***``."""
    for token in _known_tokens():
        text = text.replace(token, "***")
    for shape, replacement in _SECRET_SHAPES:
        text = shape.sub(replacement, text)
    return text


def _one_line(text: str) -> str:
    return scrub_secrets(" ".join(str(text).split()))


# --- hf:// references -------------------------------------------------------------------------


@dataclass(frozen=True)
class HubRef:
    """``hf://ORG/NAME[@REVISION][/PATH]``: a model repo, an optional revision, an optional path in it."""

    repo_id: str
    revision: str | None = None
    subpath: str | None = None

    def __str__(self) -> str:
        rev = f"@{self.revision}".replace("/", "%2F") if self.revision else ""
        sub = f"/{self.subpath}" if self.subpath else ""
        return f"{SCHEME}{self.repo_id}{rev}{sub}"


def is_hf_uri(src: str | os.PathLike) -> bool:
    # pathlib folds "hf://a/b" into "hf:/a/b", so a Path that went through the CLI still counts.
    return str(src).startswith("hf:/")


def check_repo_id(text: str) -> str:
    """An ``ORG/NAME`` model repo id, or a usage error saying what is wrong with it."""
    if text.startswith(("datasets/", "spaces/")):
        raise UsageError(f"{text}: only model repositories are supported")
    if not _REPO_ID.fullmatch(text) or ".." in text or "--" in text:
        raise UsageError(f"{text!r} is not a Hub repository id; expected ORG/NAME (letters, digits, '-', '_', '.')")
    return text


def parse_hf_uri(src: str | os.PathLike) -> HubRef:
    text = str(src)
    if not is_hf_uri(text):
        raise UsageError(f"{text}: not an hf:// address")
    rest = text[len("hf:"):].lstrip("/")
    parts = rest.split("/")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise UsageError(f"{text}: expected hf://ORG/NAME[@REVISION][/PATH]")
    org, name_rev, sub = parts[0], parts[1], parts[2:]
    name, _, revision = name_rev.partition("@")
    repo_id = check_repo_id(f"{org}/{name}")
    if "@" in name_rev and not revision:
        raise UsageError(f"{text}: empty revision after '@'")
    # Revisions with a slash (refs/pr/1) are written %2F-encoded, as huggingface_hub's hf:// paths do.
    revision = unquote(revision) if revision else None
    subpath = None
    if sub:
        if any(p in ("", ".", "..") for p in sub):
            raise UsageError(f"{text}: the path inside the repository must be a plain relative path")
        subpath = "/".join(sub)
    return HubRef(repo_id, revision, subpath)


# --- resolving a source -----------------------------------------------------------------------


@dataclass
class SourceRef:
    """A SRC made local: ``path`` to open, and where it came from when it came from the Hub."""

    path: Path
    uri: str | None = None
    repo_id: str | None = None
    revision: str | None = None  # as asked (None: the default branch)
    commit: str | None = None  # the commit sha it resolved to
    #: source files relative to ``path`` (the downloaded selection); None: every file under ``path``
    files: list[str] | None = None
    license: str | None = None
    offline: bool = False

    def describe(self) -> dict[str, Any]:
        if self.repo_id is None:
            return {"path": str(self.path)}
        return {
            "uri": self.uri,
            "repo_id": self.repo_id,
            "revision": self.revision or "main",
            "commit": self.commit,
            "resolved_from_cache_only": self.offline,
        }


def _layout_files(paths: Iterable[str], prefix: str, ref: HubRef) -> tuple[str, list[str]]:
    """Which repo files a reader needs, from the repo's file list: (layout, selection).

    Mirrors what the readers open, so nothing else is downloaded: no pickles, no other formats' files.
    For an HF directory with an index, the shard names are added after the index is read.
    """
    top: list[str] = []
    nested: list[str] = []
    for p in paths:
        if not p.startswith(prefix):
            continue
        rel = p[len(prefix):]
        (nested if "/" in rel else top).append(rel)
    names = set(top)

    def side(name: str) -> bool:
        return name in HF_SIDE_FILES or any(fnmatch.fnmatch(name, g) for g in LICENSE_GLOBS)

    if "config.json" in names:
        if HF_INDEX in names:
            return "hf-index", sorted(n for n in top if side(n) or n == HF_INDEX)
        if HF_SINGLE in names:
            return "hf", sorted(n for n in top if side(n) or n == HF_SINGLE)
        shards = [n for n in top if n.endswith(".safetensors")]
        if shards:
            return "hf", sorted(n for n in top if side(n) or n in shards)
        pickles = sorted(n for n in top if n.endswith(PICKLE_SUFFIXES))
        if pickles:
            raise HubError(
                f"{ref}: only pickle weights ({pickles[0]}), which bitconvert never loads (unpickling can run "
                "arbitrary code); nothing was downloaded"
            )
    if "model_config.json" in names and any(n.startswith("model/") for n in nested):
        weights = [n for n in nested if n.startswith("model/") and n.endswith(".safetensors")]
        return "nanotron", sorted([n for n in top if n in NANOTRON_FILES or side(n)] + weights)
    ggufs = sorted(n for n in top if n.endswith(".gguf"))
    if len(ggufs) == 1:
        return "gguf", ggufs
    if len(ggufs) > 1:
        shown = ", ".join(ggufs[:4]) + (", ..." if len(ggufs) > 4 else "")
        raise HubError(f"{ref}: several GGUF files ({shown}); name one, e.g. {ref}/{ggufs[0]}")
    listed = ", ".join(sorted(names)[:6]) or "no files"
    raise HubError(f"{ref}: no checkpoint bitconvert can read (found {listed})")


def _escape(name: str) -> str:
    # allow_patterns are fnmatch patterns; a literal file name must not act as one
    return re.sub(r"([*?\[])", r"[\1]", name)


def _transport_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = []
    try:
        from huggingface_hub.errors import OfflineModeIsEnabled

        errors.append(OfflineModeIsEnabled)
    except ImportError:  # pragma: no cover - older clients
        pass
    try:
        import httpx2

        errors.append(httpx2.TransportError)
    except ImportError:  # pragma: no cover - clients built on httpx or requests
        pass
    return tuple(errors)


def _license_of(card_data: Any) -> str | None:
    lic = getattr(card_data, "license", None) if card_data is not None else None
    return lic if isinstance(lic, str) and lic else None


def resolve_source(src: str | os.PathLike, *, endpoint: str | None = None) -> SourceRef:
    """A local SRC as it is; ``hf://ORG/NAME[@REV][/PATH]`` downloaded (only what the format needs).

    Online, the repo's file list decides what to fetch; with ``HF_HUB_OFFLINE=1`` (or no network) the
    same choice is made from the cached listing, and the snapshot must already be in the cache.
    """
    if not is_hf_uri(src):
        return SourceRef(Path(src))
    ref = parse_hf_uri(src)
    with hub_errors(f"{ref}", "resolve"):
        return _download(ref, endpoint)


def local_source(src: str | os.PathLike) -> Path:
    """For readers: the local path of any SRC (hf:// resolved, anything else unchanged)."""
    return resolve_source(src).path if is_hf_uri(src) else Path(src)


def _download(ref: HubRef, endpoint: str | None) -> SourceRef:
    from huggingface_hub import HfApi, constants, snapshot_download

    api = HfApi(endpoint=endpoint, library_name="bitconvert", library_version=__version__)
    if constants.HF_HUB_OFFLINE:
        return _from_cache(ref, api)
    from huggingface_hub.errors import RevisionResolutionError

    try:
        # Resolve first: it also records branch -> commit in the cache, so the same address works offline.
        commit = api.resolve_revision(ref.repo_id, revision=ref.revision).resolved
        info = api.model_info(ref.repo_id, revision=commit)
    except (*_transport_errors(), RevisionResolutionError):  # no Hub: what does the cache hold?
        return _from_cache(ref, api)
    paths = [s.rfilename for s in info.siblings or []]

    def fetch(patterns):
        return snapshot_download(
            ref.repo_id, revision=commit, allow_patterns=patterns, endpoint=endpoint,
            library_name="bitconvert", library_version=__version__,
        )

    fetched = _fetch_selection(ref, paths, commit, fetch)
    return _source_ref(ref, fetched, commit, _license_of(getattr(info, "card_data", None)), offline=False)


def _from_cache(ref: HubRef, api) -> SourceRef:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import CachedRepoTreeNotFoundError, RevisionResolutionError

    try:
        commit = api.resolve_revision(ref.repo_id, revision=ref.revision, local_files_only=True).resolved
    except RevisionResolutionError:
        raise HubError(
            f"{ref}: the Hub cannot be reached (HF_HUB_OFFLINE or no network) and this revision is not in the "
            "local cache"
        ) from None

    def fetch(patterns):
        return snapshot_download(ref.repo_id, revision=commit, allow_patterns=patterns, local_files_only=True)

    try:
        from huggingface_hub import get_cached_repo_tree

        paths = [f.path for f in get_cached_repo_tree(ref.repo_id, revision=commit)]
    except CachedRepoTreeNotFoundError:
        # No cached listing (e.g. files fetched one by one): choose from what the snapshot holds.
        folder = Path(fetch(None))
        paths = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    return _source_ref(ref, _fetch_selection(ref, paths, commit, fetch), commit, None, offline=True)


def _fetch_selection(ref: HubRef, paths: list[str], commit: str, fetch) -> tuple[list[str], Path, str]:
    """Download the files a reader needs: (repo paths, snapshot folder, what to open inside it)."""
    if ref.subpath and ref.subpath in paths:  # one named file
        return [ref.subpath], Path(fetch([_escape(ref.subpath)])), ref.subpath
    prefix = f"{ref.subpath}/" if ref.subpath else ""
    if ref.subpath and not any(p.startswith(prefix) for p in paths):
        raise HubError(f"{ref}: no file or folder {ref.subpath!r} in {ref.repo_id} at {commit[:12]}")
    layout, rel = _layout_files(paths, prefix, ref)
    files = [prefix + r for r in rel]
    folder = Path(fetch([_escape(f) for f in files]))
    if layout == "gguf":  # a single-file format: open the file, not the folder
        return files, folder, files[0]
    if layout == "hf-index":
        index = folder / prefix / HF_INDEX
        shards = _index_shards(index, ref)
        missing = [s for s in shards if prefix + s not in paths]
        if missing:
            raise HubError(f"{ref}: {HF_INDEX} names shard {missing[0]!r}, which is not in the repository")
        files += [prefix + s for s in shards]
        folder = Path(fetch([_escape(f) for f in files]))
    return files, folder, ref.subpath or ""


def _index_shards(index: Path, ref: HubRef) -> list[str]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        names = sorted({v for v in weight_map.values()})
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(index, f"malformed index: {exc}") from None
    for n in names:
        # Same rule as the reader: a shard is a plain file name next to the index.
        if not isinstance(n, str) or not n or "/" in n or "\\" in n or n in (".", ".."):
            raise CheckpointError(index, f"index entry {n!r} points outside the checkpoint directory")
    return names


def _source_ref(ref: HubRef, fetched: tuple[list[str], Path, str], commit: str, license, offline: bool) -> SourceRef:
    files, folder, open_rel = fetched
    path = folder / open_rel if open_rel else folder
    if path.is_dir() or not open_rel:
        base = f"{open_rel}/" if open_rel else ""
        rel = [f[len(base):] for f in files]  # relative to the folder opened
    else:
        rel = [PurePosixPath(open_rel).name]
    return SourceRef(path, str(ref), ref.repo_id, ref.revision, commit, rel, license, offline)


# --- errors from the client -------------------------------------------------------------------


@contextmanager
def hub_errors(where: str, action: str) -> Iterator[None]:
    """Turn what ``huggingface_hub`` raises into one token-free line (HubError, exit 1)."""
    try:
        yield
    except BitconvertError:
        raise
    except Exception as exc:
        # The cause still shows under --debug: take any echoed secret out of it too.
        exc.args = tuple(scrub_secrets(a) if isinstance(a, str) else a for a in exc.args)
        raise HubError(f"{where}: {_explain(exc, action)}") from exc


def _explain(exc: Exception, action: str) -> str:
    from huggingface_hub import errors as e

    if isinstance(exc, e.HfHubHTTPError) and getattr(exc, "response", None) is not None:
        status = exc.response.status_code
        server = _one_line(getattr(exc, "server_message", None) or "")
        said = f" (Hub: {server})" if server else ""
        if status == 412:
            return (
                "the branch moved while uploading (another commit landed after this upload started); "
                f"nothing was committed, run the upload again{said}"
            )
        if isinstance(exc, e.RevisionNotFoundError):
            return f"no such revision{said}"
        if isinstance(exc, e.RepositoryNotFoundError) or status == 404:
            return f"repository not found, or not visible with the current token{said}"
        if status in (401, 403):
            return f"the Hub refused access (HTTP {status}); set HF_TOKEN to a token with write access{said}"
        return f"the Hub answered HTTP {status} to {action}{said}"
    if isinstance(exc, _transport_errors()):
        if "Offline" in type(exc).__name__:
            return f"cannot {action}: offline mode is on (HF_HUB_OFFLINE)"
        return f"cannot reach the Hub to {action}: {_one_line(exc) or type(exc).__name__}"
    if isinstance(exc, e.LocalEntryNotFoundError):
        return f"not available offline: {_one_line(exc)}"
    return f"{action} failed: {type(exc).__name__}: {_one_line(exc)}"


# --- uploads ----------------------------------------------------------------------------------


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
            "total_bytes": self.plan.total_bytes,
        }


def _verify_or_refuse(path: Path, progress) -> dict[str, Any]:
    """The verify issue's integrity checks; a failure stops the upload before any request."""
    from .verify import check_line, verify_integrity

    report = verify_integrity(path, progress=progress)
    failed = [_one_line(check_line(c)) for c in report.checks if not c.passed]
    if not report.passed:
        more = f" (+{len(failed) - 1} more)" if len(failed) > 1 else ""
        first = failed[0] if failed else "integrity checks failed"
        raise CheckpointError(path, f"fails its integrity checks, so nothing was uploaded: {first}{more}")
    return {"passed": True, "checks": len(report.checks), "notes": list(report.notes)}


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
) -> UploadPlan:
    """Everything ``upload`` would send, computed locally: verify SRC, list files with sha256, make the card.

    No network for a local SRC (an hf:// SRC is first resolved, from the cache when offline). This
    is the whole of ``--dry-run``. ``progress(done, total, tensor)`` follows the integrity checks.
    """
    from .formats import no_progress, open_checkpoint
    from .modelcard import CardInput, render_card

    check_repo_id(repo_id)
    if revision is not None and not revision.strip():
        raise UsageError("--revision may not be empty")
    if commit_message is not None and not commit_message.strip():
        raise UsageError("--commit-message may not be empty")
    card_path = Path(card_file) if card_file is not None else None
    if card_path is not None and not card_path.is_file():
        raise UsageError(f"{card_path}: no such card file")

    source = resolve_source(src, endpoint=endpoint)
    root = source.path
    if not root.exists():
        raise UsageError(f"{src}: no such file or directory")
    verify = _verify_or_refuse(root, progress or no_progress)
    ckpt = open_checkpoint(root)

    files: list[PlannedFile] = []
    # An hf:// source uploads what was selected for it, not whatever else sits in the cached snapshot.
    if root.is_file():
        paths = [root]
    else:
        paths = [root / f for f in source.files] if source.files is not None else visible_files(root)
    for p in paths:
        rel = p.name if root.is_file() else p.relative_to(root).as_posix()
        if rel == CARD_NAME and card_path is not None:
            continue  # replaced by --card
        st = p.stat()
        origin = "card kept" if rel == CARD_NAME else "checkpoint"
        files.append(PlannedFile(rel, st.st_size, sha256_file(p), origin, local=p, mtime_ns=st.st_mtime_ns))

    existing = next((f for f in files if f.path_in_repo == CARD_NAME), None)
    if card_path is not None or existing is not None:
        given = card_path if card_path is not None else existing.local
        card_text = _read_card(given)
        card_origin = f"card from {card_path}" if card_path is not None else "card kept"
    else:
        provenance = read_provenance(root)
        if source.repo_id is not None:
            # Re-hosting an hf:// source: that repository is what these weights came from, unless its own
            # provenance names an earlier one.
            found = provenance or {"source": source.describe()}
            provenance = {**found, "base_model": found.get("base_model") or source.repo_id,
                          "license": found.get("license") or source.license}
        card_text = render_card(
            CardInput(
                repo_id=repo_id,
                format=ckpt.format,
                architecture=ckpt.config.architecture.value,
                files=[f.path_in_repo for f in files],
                provenance=provenance,
                storage=sorted({e.stored for e in ckpt.tensors.values() if e.ternary and e.stored}),
                linear_class=getattr(ckpt.source_linear_class(), "value", None),
            )
        )
        card_origin = "card generated"
    if existing is None or card_path is not None:
        data = card_text.encode("utf-8")
        files.append(PlannedFile(CARD_NAME, len(data), _sha256_bytes(data), card_origin, content=data))
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
            raise CheckpointError(path, f"the model card's metadata block does not parse: {_one_line(exc)}") from None
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
