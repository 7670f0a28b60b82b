"""The small provenance file ``convert`` leaves in a directory output; the model card reads it.

It answers "where did these weights come from?": the source (local path, or Hub repo with the
resolved commit), the sha256 of every source file, the bitconvert version and the command. It holds
nothing secret: the Hub token never reaches it (bitconvert takes the token only from the
environment or the token file, never from the command line), and any text that could carry it is
scrubbed before writing.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import sys
import threading
from pathlib import Path
from typing import Any, Iterable

from .. import __version__
from ..errors import CheckpointError
from .jsonfile import parse_json_text

PROVENANCE_NAME = "bitconvert_provenance.json"
#: where single-file outputs (GGUF) keep the same JSON: a string key of their own header
PROVENANCE_KEY = "bitconvert.provenance"
SCHEMA = 1
_CHUNK = 1024 * 1024


class HashingCancelled(Exception):
    pass


def sha256_file(path: Path, stop: threading.Event | None = None) -> str:
    """Streamed, so a multi-gigabyte shard never sits in memory; ``stop`` ends it early."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            if stop is not None and stop.is_set():
                raise HashingCancelled(str(path))
            h.update(chunk)
    return h.hexdigest()


class BackgroundHashes:
    """Hash the source files on a thread while a conversion reads them (hashlib releases the GIL)."""

    def __init__(self, root: Path, names: Iterable[str] | None = None) -> None:
        self._stop = threading.Event()
        self._result: list[dict[str, Any]] | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(root, names), daemon=True, name="bitconvert-sha256")
        self._thread.start()

    def _run(self, root: Path, names: Iterable[str] | None) -> None:
        try:
            self._result = source_files(root, names, self._stop)
        except BaseException as exc:  # handed to whoever asks for the result
            self._error = exc

    def result(self) -> list[dict[str, Any]]:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def cancel(self) -> None:
        self._stop.set()


def current_command() -> str | None:
    """The bitconvert command line of this process, or None when bitconvert runs as a library."""
    argv0 = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    is_cli = argv0 == "bitconvert" or (argv0 == "__main__.py" and Path(sys.argv[0]).parent.name == "bitconvert")
    return shlex.join(["bitconvert", *sys.argv[1:]]) if is_cli else None


def visible_files(root: Path) -> list[Path]:
    """Every file of a checkpoint directory, sorted; dot files and dot folders are local state, not content."""
    return sorted(
        p for p in root.rglob("*") if p.is_file() and not any(s.startswith(".") for s in p.relative_to(root).parts)
    )


def _source_paths(root: Path, names: Iterable[str] | None) -> dict[str, Path]:
    """Source files by their recorded name: ``root`` itself when it is a file, else ``names``
    (paths relative to ``root``) or every visible file below it."""
    if root.is_file():
        return {root.name: root}
    if names is None:
        names = [p.relative_to(root).as_posix() for p in visible_files(root)]
    return {name: root / name for name in names}


def source_files(
    root: Path, names: Iterable[str] | None = None, stop: threading.Event | None = None
) -> list[dict[str, Any]]:
    """Size and sha256 of each source file (see _source_paths for which)."""
    return [
        {"path": name, "size": p.stat().st_size, "sha256": sha256_file(p, stop)}
        for name, p in _source_paths(root, names).items()
    ]


def known_source_files(root: Path, names: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Size of each source file, and its sha256 only where known without reading the file.

    For single-file outputs (GGUF) the provenance goes into the header, which is written before
    any tensor, so there is no time to hash the source alongside. A Hub cache names each LFS blob
    by its sha256, so files that came from the Hub keep their hash; local files get ``None``.
    """
    out = []
    for name, p in _source_paths(root, names).items():
        blob = p.resolve().name if p.is_symlink() else ""
        sha = blob if len(blob) == 64 and all(c in "0123456789abcdef" for c in blob) else None
        out.append({"path": name, "size": p.stat().st_size, "sha256": sha})
    return out


def parse_provenance(text: object, source: str | Path) -> dict[str, Any] | None:
    """A provenance record from its JSON text (a file's, or a header value's), or None where it is not one.

    Provenance is informative only: a damaged record never blocks a conversion.
    """
    if not isinstance(text, (str, bytes)):
        return None
    try:
        data = parse_json_text(text, source, PROVENANCE_NAME)
    except (ValueError, CheckpointError):
        return None
    return data if isinstance(data, dict) else None


def read_provenance_file(folder: Path) -> dict[str, Any] | None:
    """The provenance file of a directory checkpoint (what its readers record as the source's), or None."""
    f = folder / PROVENANCE_NAME
    try:
        text = f.read_bytes() if f.is_file() else None
    except OSError:
        return None
    return parse_provenance(text, f)


def build_provenance(
    *,
    source: dict[str, Any],
    files: list[dict[str, Any]],
    output_format: str,
    output_files: list[str],
    base_model: str | None,
    license: str | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "tool": "bitconvert",
        "bitconvert_version": __version__,
        "command": command,
        "source": source,
        "source_files": files,
        "base_model": base_model,
        "license": license,
        "output": {"format": output_format, "files": output_files},
    }


def conversion_provenance(
    source, src_format: str, output_format: str, output_files: list[str], files: list[dict[str, Any]],
    upstream: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Provenance of one conversion: ``source`` is a :class:`bitconvert.hub.source.SourceRef`; ``files`` its
    files; ``upstream`` the provenance the source itself records (its reader's ``origin.recorded_provenance``)."""
    # The model these weights are a conversion of: the Hub repo they came from, else what the source says.
    return build_provenance(
        source={**source.describe(), "format": src_format},
        files=files,
        output_format=output_format,
        output_files=output_files,
        base_model=source.repo_id or (upstream or {}).get("base_model"),
        license=source.license or (upstream or {}).get("license"),
        command=current_command(),
    )


def provenance_text(data: dict[str, Any]) -> str:
    """``data`` as JSON with anything secret scrubbed."""
    from ..secrets import scrub_secrets

    return scrub_secrets(json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_conversion_provenance(
    out_dir: Path, source, src_format: str, report, files: list[dict[str, Any]] | None = None,
    upstream: dict[str, Any] | None = None,
) -> str:
    """Write a directory output's provenance file; ``files`` the source hashes when already computed
    (see :class:`BackgroundHashes`). Returns the file's name."""
    if files is None:
        files = source_files(source.path, source.files)
    data = conversion_provenance(source, src_format, report.format, [*report.files, PROVENANCE_NAME], files, upstream)
    (out_dir / PROVENANCE_NAME).write_text(provenance_text(data), encoding="utf-8")
    return PROVENANCE_NAME
