"""The conversion entry point the CLI and scripts call: open, write staged, move into place."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import UsageError
from .formats import Progress, WriteReport, no_progress, open_checkpoint, options_for, writer_for, writes_directory
from .io.staging import check_output, check_paths, staged_output
from .io.suggest import no_such_path


@dataclass
class ConvertResult:
    src: str
    src_format: str
    dst: str
    report: WriteReport
    seconds: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        r = self.report
        return {
            "src": self.src,
            "src_format": self.src_format,
            "dst": self.dst,
            "format": r.format,
            "files": r.files,
            "tensors": r.tensors,
            "bytes_written": r.bytes_written,
            "ternary_sources": r.ternary_sources,
            "warnings": r.warnings,
            "notes": self.notes,
            "details": r.details,
            "seconds": round(self.seconds, 3),
        }


def convert(
    src: str | Path,
    dst: str | Path,
    to: str,
    options: Mapping[str, Any] | Any = None,
    *,
    force: bool = False,
    src_format: str | None = None,
    progress: Progress = no_progress,
    hash_sources: bool = False,
) -> ConvertResult:
    """Convert the checkpoint at ``src`` into format ``to`` at ``dst``; ``dst`` appears only when complete.

    ``options``: the writer's options dataclass, or a mapping of its field names to values (strings
    as on the command line, or typed; None means not given); an option that ``to`` does not take
    is a UsageError.
    ``hash_sources``: record the sha256 of every source file in the provenance. Off, only the
    digests known without reading are recorded (a Hub snapshot's LFS blobs): hashing is a second
    full pass over the source, on a 2-core machine as long as the conversion itself.
    """
    from .hub.source import is_hf_uri, resolve_source
    from .io.provenance import (
        BackgroundHashes,
        conversion_provenance,
        known_source_files,
        source_files,
        write_conversion_provenance,
    )

    start = time.perf_counter()
    # Everything that can be refused from the arguments and the paths is, before any writer, reader,
    # numpy or gguf-py is imported: a usage error costs the command line's start-up only.
    options = options_for(to, options)
    directory = writes_directory(to)
    dst = Path(dst)
    if is_hf_uri(src):
        check_output(dst, directory=directory, force=force)  # an existing DST is refused before the download
    elif not Path(src).exists():
        raise UsageError(no_such_path(src))
    source = resolve_source(src)  # hf://ORG/NAME[@REV] -> local snapshot; local paths unchanged
    shown_src, src = source.uri or str(src), source.path
    check_paths(src, dst, force, directory=directory)
    writer = writer_for(to)
    ckpt = open_checkpoint(src, src_format)
    _compile_ahead(ckpt, writer.kernels)
    if source.repo_id is not None:  # writers that name the model or its origin (GGUF) read these
        ckpt.origin.model_name = source.repo_id.split("/")[-1]
        ckpt.origin.source_repo = source.repo_id
        if source.license:
            ckpt.origin.license = source.license
    hashes = None
    if directory and hash_sources:
        # computed alongside the conversion, for the provenance file written last
        hashes = BackgroundHashes(source.path, source.files)
    elif not directory:
        # A single file carries its provenance in its header, written before any tensor.
        files = source_files(source.path, source.files) if hash_sources else known_source_files(source.path, source.files)
        upstream = ckpt.origin.recorded_provenance
        ckpt.origin.provenance = conversion_provenance(source, ckpt.format, writer.name, [dst.name], files, upstream)
    try:
        with staged_output(dst, directory=directory, force=force) as scratch:
            report = writer.write(ckpt, scratch, options, progress)
            if directory:  # where it came from, for the model card (bitconvert_provenance.json)
                files = hashes.result() if hashes is not None else known_source_files(source.path, source.files)
                upstream = ckpt.origin.recorded_provenance
                report.files.append(write_conversion_provenance(scratch, source, ckpt.format, report, files, upstream))
    finally:
        if hashes is not None:
            hashes.cancel()
    if not directory:
        report.files = [dst.name]  # the writer only saw the staging path
    report.warnings[:0] = [f"source: {w}" for w in ckpt.warnings]
    return ConvertResult(shown_src, ckpt.format, str(dst), report, time.perf_counter() - start, list(ckpt.notes))


def _compile_ahead(ckpt, kernels: tuple[str, ...]) -> None:
    """Where the writer will quantize large master weights, its compiled loops are compiled (or
    loaded from numba's cache) in the background while the headers are planned and the first
    tensors copied, so that the first conversion after installing waits for the compiler as
    little as the next one."""
    from .model.checkpoint import Kind
    from .ternary.fast import jit

    if any(e.kind is Kind.LATENT and math.prod(e.shape) >= jit.MIN_VALUES for e in ckpt.tensors.values()):
        jit.prepare(*kernels)
