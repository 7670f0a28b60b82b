"""Format registry: one reader and one writer per format, registered by name.

A reader knows how to recognise and open its layout; a writer how to lay a canonical
:class:`~bitconvert.model.checkpoint.Checkpoint` out. They never import each other: conversions go
reader -> Checkpoint -> writer.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import CheckpointError, UsageError
from ..io.suggest import no_such_path
from .options import build_options

if TYPE_CHECKING:  # the registry itself needs no tensors: `bitconvert formats` must not import torch
    from ..model.checkpoint import Checkpoint

#: progress(done, total, current tensor name)
Progress = Callable[[int, int, str], None]


def no_progress(done: int, total: int, name: str) -> None:
    return None


@dataclass
class WriteReport:
    format: str
    files: list[str] = field(default_factory=list)
    tensors: int = 0
    bytes_written: int = 0
    #: how each quantized weight was obtained: kept / recovered / quantized -> count
    ternary_sources: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


class Reader(Protocol):
    name: str

    def detect(self, path: Path) -> bool: ...

    def read(self, path: Path) -> Checkpoint: ...


class Writer(Protocol):
    name: str
    #: the frozen dataclass of this writer's options (see formats/options.py)
    Options: type
    #: the compiled loops (``ternary.fast.jit``) it runs when it quantizes a master, compiled ahead
    kernels: tuple[str, ...]

    def write(self, ckpt: Checkpoint, out: Path, options: Any, progress: Progress) -> WriteReport: ...


READERS: dict[str, Reader] = {}
WRITERS: dict[str, Writer] = {}

# Format modules register themselves on import; this table is the only place that names them, with
# the module that registers each half, so that listing the formats imports none of them (nor torch).
# Readers and writers live in separate modules: opening a checkpoint (inspect, upload's planning)
# imports the readers only, which need no torch until a tensor is loaded. A test checks the table
# against what the modules register.
CATALOGUE: dict[str, tuple[str | None, str | None]] = {
    # first: a folder of torch.save files with a config.json is this format's, not an HF directory
    "bitnet-gpu": ("bitnet_gpu.reader", "bitnet_gpu.writer"),
    "hf-bf16": ("hf.bf16", "hf.bf16_writer"),
    "hf-packed": ("hf.packed", "hf.packed_writer"),
    "gguf": ("gguf.reader", "gguf.writer"),
    "nanotron": ("nanotron.reader", "nanotron.writer"),
}

# What each writer's output is: a directory, or one file (GGUF). Data here rather than an attribute
# of the writer, so that the destination can be checked (and refused) before any writer, numpy or
# gguf-py is imported. A test converts into every format and checks the table.
OUTPUT_IS_DIRECTORY: dict[str, bool] = {
    "bitnet-gpu": True,
    "hf-bf16": True,
    "hf-packed": True,
    "gguf": False,
    "nanotron": True,
}

# Which readers could claim a path, judged from the path alone (a stat or two), so that opening a
# checkpoint imports only those readers (a GGUF file never loads the safetensors readers, nor an HF
# folder gguf-py). Each is a necessary condition of its reader's own ``detect``, which decides.
MAY_READ: dict[str, Callable[[Path], bool]] = {
    "bitnet-gpu": lambda p: p.is_dir() and (p / "model_state_int2.pt").is_file(),
    "hf-bf16": lambda p: p.is_dir() and (p / "config.json").is_file(),
    "hf-packed": lambda p: p.is_dir() and (p / "config.json").is_file(),
    "gguf": lambda p: p.is_file(),
    "nanotron": lambda p: p.is_dir() and (p / "model_config.json").is_file() and (p / "model").is_dir(),
}

# Each writer's options class, in a light module of its format (no numpy, no writer): the command
# line is generated from these classes (bitconvert/cli/options.py) and an option a format does not
# take is refused before anything is read. The order is the one `convert --help` lists them in.
# A test checks that every writer's ``Options`` is the class named here.
OPTIONS: dict[str, str] = {
    "hf-packed": "hf.options:HFPackedOptions",
    "hf-bf16": "hf.options:HFBF16Options",
    "gguf": "gguf.options:GGUFOptions",
    "nanotron": "nanotron.options:NanotronOptions",
    "bitnet-gpu": "bitnet_gpu.options:BitnetGPUOptions",
}


def modes(name: str) -> str:
    """``read``, ``write`` or ``read/write``: what bitconvert does with format ``name``."""
    reader, writer = CATALOGUE[name]
    return "/".join(mode for mode, module in (("read", reader), ("write", writer)) if module)


def register_reader(reader: Reader) -> Reader:
    READERS[reader.name] = reader
    return reader


def register_writer(writer: Writer) -> Writer:
    WRITERS[writer.name] = writer
    return writer


def _load(half: int, names: Iterable[str] | None = None) -> None:
    for name in CATALOGUE if names is None else names:
        module = CATALOGUE[name][half]
        if module:
            importlib.import_module(f"{__name__}.{module}")


def load_readers() -> None:
    _load(0)


def load_writers() -> None:
    _load(1)


def load_all() -> None:
    load_readers()
    load_writers()


def writer_names() -> list[str]:
    """The formats bitconvert writes, sorted (no module is imported)."""
    return sorted(name for name, (_, writer) in CATALOGUE.items() if writer)


def _unknown_writer(name: str) -> UsageError:
    return UsageError(f"unknown output format {name!r}; choose one of: {', '.join(writer_names())}")


def writes_directory(name: str) -> bool:
    """Whether writer ``name`` writes a directory (else one file); no module is imported."""
    if name not in OUTPUT_IS_DIRECTORY:
        raise _unknown_writer(name)
    return OUTPUT_IS_DIRECTORY[name]


def writer_for(name: str) -> Writer:
    """Writer ``name``, importing its module only (each writer imports what it needs)."""
    if CATALOGUE.get(name, (None, None))[1] is None:
        raise _unknown_writer(name)
    _load(1, [name])
    return WRITERS[name]


def options_class(fmt: str) -> type:
    """Writer ``fmt``'s options dataclass, imported from its light module (not the writer)."""
    if fmt not in OPTIONS:
        raise _unknown_writer(fmt)
    module, cls = OPTIONS[fmt].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def option_classes() -> dict[str, type]:
    """Every writer's options dataclass by format, in :data:`OPTIONS` order."""
    return {fmt: options_class(fmt) for fmt in OPTIONS}


def options_for(fmt: str, given: Mapping[str, Any] | Any = None) -> Any:
    """The options of writer ``fmt`` from ``given`` (field name -> value, None meaning not given; or
    a ready instance). Imports no writer.

    An option that ``fmt`` does not take is a UsageError naming the formats that take it.
    """
    return build_options(fmt, options_class(fmt), given, option_classes())


def detect_format(path: Path) -> str:
    if not path.exists():
        raise UsageError(no_such_path(path))
    if path.is_file() and path.suffix == ".safetensors":  # a checkpoint is the folder: config.json lies beside
        raise UsageError(f"{path}: a .safetensors file is one part of a checkpoint; pass its folder ({path.parent})")
    # in CATALOGUE order (bitnet-gpu before the HF folders), whatever order the modules were imported in
    for name, (reader, _) in CATALOGUE.items():
        if reader and MAY_READ[name](path):
            _load(0, [name])
            if READERS[name].detect(path):
                return name
    raise CheckpointError(path, "not a checkpoint bitconvert can read (no config.json with safetensors weights, no GGUF)")


#: what readers parsed while one checkpoint is being opened, so that detection (several readers
#: looking at the same files) and reading parse each header once; empty outside open_checkpoint
_OPENING: ContextVar[dict | None] = ContextVar("bitconvert_opening", default=None)


def parsed_once(key: Any, parse: Callable[[], Any]) -> Any:
    """``parse()``, computed once per key while a checkpoint is being opened (every call otherwise)."""
    memo = _OPENING.get()
    if memo is None:
        return parse()
    if key not in memo:
        memo[key] = parse()
    return memo[key]


def open_checkpoint(path: str | Path, format: str | None = None) -> Checkpoint:
    from ..hub.source import local_source  # hf://ORG/NAME[@REV] -> local snapshot; other paths unchanged

    path = local_source(path)
    token = _OPENING.set({})
    try:
        if format is None:
            format = detect_format(path)
        elif CATALOGUE.get(format, (None, None))[0] is None:
            readable = sorted(name for name, (reader, _) in CATALOGUE.items() if reader)
            raise UsageError(f"unknown input format {format!r}; choose one of: {', '.join(readable)}")
        _load(0, [format])
        return READERS[format].read(path)
    finally:
        _OPENING.reset(token)
