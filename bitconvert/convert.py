"""The conversion entry point the CLI and scripts call: open, write staged, move into place."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from .formats import Progress, WriteOptions, WriteReport, no_progress, open_checkpoint, writer_for
from .staging import check_paths, staged_output


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
    options: WriteOptions | None = None,
    *,
    force: bool = False,
    src_format: str | None = None,
    progress: Progress = no_progress,
) -> ConvertResult:
    """Convert the checkpoint at ``src`` into format ``to`` at ``dst``; ``dst`` appears only when complete."""
    src, dst = Path(src), Path(dst)
    start = time.perf_counter()
    writer = writer_for(to)
    check_paths(src, dst, force)
    ckpt = open_checkpoint(src, src_format)
    with staged_output(dst, directory=writer.writes_directory, force=force) as scratch:
        report = writer.write(ckpt, scratch, options or WriteOptions(), progress)
    return ConvertResult(str(src), ckpt.format, str(dst), report, time.perf_counter() - start, list(ckpt.notes))
