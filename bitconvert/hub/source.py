"""``hf://`` sources resolved to local snapshots: what every reader opens when SRC is on the Hub.

Only what the reader needs is downloaded, chosen from the repository's file list. This module is
below the formats (``formats.open_checkpoint`` calls :func:`local_source`), so it imports nothing from
``bitconvert.formats``.
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterable
from urllib.parse import unquote

from .. import __version__
from ..errors import CheckpointError, UsageError
from ..io.jsonfile import read_json_object
from ..io.provenance import PROVENANCE_NAME
from .errors import HubError, hub_errors, transport_errors

SCHEME = "hf://"

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
# bitconvert_kept.safetensors: tensors a Nanotron flavor has no place for (formats/nanotron/config.py KEPT_FILE)
NANOTRON_FILES = ("config.yaml", "model_config.json", "checkpoint_metadata.json", "bitconvert_kept.safetensors")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")  # as formats/hf/common.py (which imports torch)
# microsoft/BitNet's W2A8 files (formats/bitnet_gpu/layout.py), read without unpickling beside a config.json
BITNET_GPU_FILES = ("model_state_int2.pt", "model_state_fp16.pt")

_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"
_REPO_ID = re.compile(rf"{_NAME}/{_NAME}")


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

    if "config.json" in names and BITNET_GPU_FILES[0] in names:
        return "bitnet-gpu", sorted(n for n in top if side(n) or n in BITNET_GPU_FILES)
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
    except (*transport_errors(), RevisionResolutionError):  # no Hub: what does the cache hold?
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
    weight_map = read_json_object(index).get("weight_map")
    if not isinstance(weight_map, dict):
        raise CheckpointError(index, "malformed index: no weight_map object")
    try:
        names = sorted({v for v in weight_map.values()})
    except TypeError as exc:  # unhashable or unorderable entries
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

