"""bitnet.cpp's TL1/TL2 kernel configurations: which tile each weight shape is packed with.

A TL build of bitnet.cpp compiles lookup-table kernels for a fixed list of weight shapes, generated
by its ``utils/codegen_tl1.py`` / ``codegen_tl2.py`` together with ``include/kernel_config.ini``.
Each section of that file gives one shape and its tile::

    [Kernels_0]
    m = 3200      # rows of the weight (out_features)
    k = 8640      # columns (in_features)
    bm = 160      # row tile
    bk = 96       # column tile
    bmm = 32      # rows per SIMD block

The byte order of a TL tensor depends on its tile (see :mod:`.tl_layouts`), and the file does not
say which tile was used: a reader needs the configuration of the build that is to run the file.
bitconvert records the tiles it wrote under ``bitconvert.kernel_config`` (:func:`record`).

Three sets of tiles ship with bitnet.cpp as presets (its ``preset_kernels/``): their numbers are
:data:`PRESETS`. Parsing here is bounded and strict (decimal numbers only, every key once, known
keys only); a problem is one ``CheckpointError`` line naming the file and the line. numpy-free.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

from ...errors import CheckpointError, UsageError

#: the largest kernel_config.ini read (a real one is a few hundred bytes per shape)
MAX_BYTES = 1 << 20
#: the largest weight dimension accepted (ggml counts in int64; real models stay far below)
MAX_DIM = 1 << 31
KEYS = ("m", "k", "bm", "bk", "bmm")
#: bitconvert's metadata key: the configuration a TL file was written with (:func:`record`)
RECORD_KEY = "bitconvert.kernel_config"


@dataclass(frozen=True)
class Tile:
    """One section of a kernel configuration: weight shape ``m x k`` and its tiles."""

    m: int
    k: int
    bm: int  # row tile (the ini's ``bm``; the codegen's ``BM``)
    bk: int  # column tile (``bk``; ``BK``)
    bmm: int  # rows per SIMD block (``bmm``; the codegen's ``bm``)

    def describe(self) -> str:
        return f"{self.m}×{self.k}: {self.tiles()}"

    def tiles(self) -> str:
        return f"bm {self.bm}, bk {self.bk}, bmm {self.bmm}"


@dataclass(frozen=True)
class KernelConfig:
    """A kernel configuration: where it came from (for messages) and its tiles in file order."""

    name: str
    tiles: tuple[Tile, ...]

    def tile(self, m: int, k: int) -> Tile | None:
        """The tile of shape ``m x k`` (the first section naming it, as bitnet.cpp's converter takes)."""
        return next((t for t in self.tiles if t.m == m and t.k == k), None)

    def shapes(self) -> str:
        return ", ".join(f"{t.m}×{t.k}" for t in self.tiles) or "no shapes"

    def to_ini(self) -> str:
        """The configuration as bitnet.cpp's codegen writes ``kernel_config.ini``."""
        return "".join(
            f"[Kernels_{i}]\n" + "".join(f"{key} = {getattr(t, key)}\n" for key in KEYS) + "\n"
            for i, t in enumerate(self.tiles)
        )


# --- parsing kernel_config.ini ------------------------------------------------------------------

_SECTION = re.compile(r"\[([^\[\]]+)\]")
_ENTRY = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*[=:]\s*(.*)")
_NUMBER = re.compile(r"[0-9]{1,12}")


def parse_ini(text: str, source: str | Path, name: str | None = None) -> KernelConfig:
    """A ``kernel_config.ini`` as bitnet.cpp's codegen writes it (configparser syntax: ``[section]``
    headers, ``key = value`` lines, ``#``/``;`` comment lines; keys in any case). ``name``: how the
    configuration is called in messages and records (default: ``source``)."""
    if len(text) > MAX_BYTES:
        raise CheckpointError(source, f"kernel configuration of {len(text)} characters; at most {MAX_BYTES} read")
    sections: list[tuple[int, str, dict[str, int]]] = []
    names: set[str] = set()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        where = f"line {number}"
        if (m := _SECTION.fullmatch(line)) is not None:
            section = m.group(1).strip()
            if section in names:
                raise CheckpointError(source, f"{where}: section [{section}] appears twice")
            names.add(section)
            sections.append((number, section, {}))
            continue
        m = _ENTRY.fullmatch(line)
        if m is None:
            raise CheckpointError(source, f"{where}: neither a [section] nor a `key = value` line: {line[:60]!r}")
        if not sections:
            raise CheckpointError(source, f"{where}: `{m.group(1)}` before any [section]")
        key, value = m.group(1).lower(), m.group(2).strip()
        entries = sections[-1][2]
        if key not in KEYS:
            raise CheckpointError(source, f"{where}: unknown key {key!r} (a section has {', '.join(KEYS)})")
        if key in entries:
            raise CheckpointError(source, f"{where}: {key} given twice in [{sections[-1][1]}]")
        if _NUMBER.fullmatch(value) is None or not 0 < int(value) <= MAX_DIM:
            raise CheckpointError(source, f"{where}: {key} = {value[:40]!r} is not a whole number from 1 to {MAX_DIM}")
        entries[key] = int(value)
    tiles = []
    for number, section, entries in sections:
        missing = [key for key in KEYS if key not in entries]
        if missing:
            raise CheckpointError(source, f"[{section}] (line {number}) has no {', '.join(missing)}")
        tiles.append(Tile(**entries))
    return _checked(KernelConfig(name or str(source), tuple(tiles)), source)


def _checked(config: KernelConfig, source: str | Path) -> KernelConfig:
    """No shape given twice with different tiles (which one a build compiled would be a guess)."""
    if not config.tiles:
        raise CheckpointError(source, "kernel configuration names no weight shape")
    for t in config.tiles:
        if config.tile(t.m, t.k) != t:
            raise CheckpointError(source, f"shape {t.m}×{t.k} is given twice with different tiles")
    return config


def read_ini(path: Path) -> KernelConfig:
    """``kernel_config.ini`` from a file (bounded read; a missing or unreadable file is one line)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise CheckpointError(path, f"cannot read the kernel configuration: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(path, f"kernel configuration is not UTF-8 text (byte {exc.start})") from None
    return parse_ini(text, path, path.name)  # a file's name, not where it sits on this machine


# --- the presets shipped with bitnet.cpp (preset_kernels/<model>/kernel_config_tl{1,2}.ini) -------

#: the weight shapes (m, k) of each preset model, in its files' order
_PRESET_SHAPES = {
    "bitnet_b1_58-large": ((1536, 4096), (1536, 1536), (4096, 1536)),
    "bitnet_b1_58-3B": ((3200, 8640), (3200, 3200), (8640, 3200)),
    "Llama3-8B-1.58-100B-tokens": ((14336, 4096), (4096, 14336), (1024, 4096), (4096, 4096)),
}
#: (bm, bk, bmm) per shape, per type. Note bitnet_b1_58-large's TL2 tile for 4096×1536 has bmm 64,
#: which TL2 cannot pack (bitnet.cpp's codegen refuses it; its converter fails on it too).
_PRESET_TILES = {
    ("bitnet_b1_58-large", "tl1"): ((256, 128, 32), (128, 64, 64), (256, 128, 32)),
    ("bitnet_b1_58-large", "tl2"): ((256, 96, 32), (128, 192, 32), (256, 96, 64)),
    ("bitnet_b1_58-3B", "tl1"): ((160, 64, 32), (320, 128, 64), (320, 64, 32)),
    ("bitnet_b1_58-3B", "tl2"): ((160, 96, 32), (320, 96, 32), (320, 96, 32)),
    ("Llama3-8B-1.58-100B-tokens", "tl1"): ((256, 128, 64), (256, 128, 32), (128, 64, 64), (128, 64, 32)),
    ("Llama3-8B-1.58-100B-tokens", "tl2"): ((256, 96, 32), (128, 96, 32), (256, 96, 32), (128, 96, 32)),
}
PRESET_NAMES = tuple(_PRESET_SHAPES)


def preset(name: str, kind: str) -> KernelConfig:
    """The preset tiles of ``name`` for ``kind`` (``tl1``/``tl2``)."""
    tiles = tuple(Tile(m, k, *tile) for (m, k), tile in zip(_PRESET_SHAPES[name], _PRESET_TILES[(name, kind)]))
    return KernelConfig(f"preset {name} ({kind})", tiles)


def preset_name(value: object, flag: str = "--kernel-preset") -> str:
    """A preset's name as bitnet.cpp spells it, from any spelling of its case."""
    found = {n.lower(): n for n in PRESET_NAMES}.get(str(value).lower())
    if found is None:
        raise UsageError(f"{flag} must be one of {', '.join(PRESET_NAMES)}, got {value!r}")
    return found


@dataclass(frozen=True)
class KernelChoice:
    """What a user named: a kernel_config.ini (for either type) or a preset (one per type)."""

    path: Path | KernelConfig | None = None  # a configuration already read passes as it is
    preset: str | None = None

    def __bool__(self) -> bool:
        return self.path is not None or self.preset is not None

    def resolve(self, kind: str) -> KernelConfig:
        if self.path is not None and self.preset is not None:
            raise UsageError("name one kernel configuration: --kernel-config FILE or --kernel-preset NAME, not both")
        if isinstance(self.path, KernelConfig):
            return self.path
        if self.path is not None:
            return read_ini(Path(self.path))
        if self.preset is None:
            raise UsageError("no kernel configuration named (--kernel-config FILE or --kernel-preset NAME)")
        return preset(preset_name(self.preset), kind)


#: the configuration to read TL files with when they record none (the CLI's --kernel-config /
#: --kernel-preset given before the command); the GGUF reader takes it when a file is opened
ASSUMED: ContextVar[KernelChoice | None] = ContextVar("bitconvert_kernel_config", default=None)


@contextmanager
def assumed(choice: KernelChoice) -> Iterator[None]:
    token = ASSUMED.set(choice)
    try:
        yield
    finally:
        ASSUMED.reset(token)


# --- the record in a TL file's metadata ----------------------------------------------------------


def record(config: KernelConfig, used: list[tuple[int, int]]) -> str:
    """JSON for ``bitconvert.kernel_config``: the configuration's name and the tiles of the shapes
    the file holds, as ``[m, k, bm, bk, bmm]``."""
    tiles = [config.tile(m, k) for m, k in dict.fromkeys(used)]
    rows = [[t.m, t.k, t.bm, t.bk, t.bmm] for t in tiles if t is not None]
    return json.dumps({"name": config.name, "kernels": rows}, separators=(",", ":"))


def from_record(text: object, source: str | Path) -> KernelConfig:
    """The configuration a TL file records (see :func:`record`), checked as read."""
    what = f"{RECORD_KEY} is"
    if not isinstance(text, str) or len(text) > MAX_BYTES:
        raise CheckpointError(source, f"{what} not a string of at most {MAX_BYTES} characters")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise CheckpointError(source, f"{what} not JSON") from None
    if (
        not isinstance(value, dict)
        or not isinstance(value.get("name"), str)
        or not isinstance(value.get("kernels"), list)
    ):
        raise CheckpointError(source, f"{what} not an object with a name and a list of kernels")
    tiles = []
    for row in value["kernels"]:
        if not (isinstance(row, list) and len(row) == len(KEYS)
                and all(type(v) is int and 0 < v <= MAX_DIM for v in row)):  # fmt: skip
            raise CheckpointError(source, f"{what} malformed: a kernel is not [m, k, bm, bk, bmm] of positive integers")
        tiles.append(Tile(*row))
    return _checked(KernelConfig(value["name"][:200], tuple(tiles)), source)
