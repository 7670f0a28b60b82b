"""What the two Hugging Face safetensors layouts share: the directory, the index, side files, shards."""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from ...dtypes import Dense
from ...errors import CheckpointError
from ...io.jsonfile import read_json_object
from ...io.output import FileSlice
from ...io.pipeline import ahead_budget, produced_ahead
from ...io.safetensors import PlannedTensor, SafetensorsFile, SafetensorsWriter, StoredTensor
from ...model.checkpoint import (
    ROW_BLOCK_VALUES,
    Checkpoint,
    TensorEntry,
    dense_rows,
    row_blocks,
    rows_copied_as,
    side_file_name,
)
from ...model.config import ModelConfig, read_hf_config
from ...model.sentence_transformers import MODULES_FILE, read_modules
from .. import Progress, WriteReport, parsed_once

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
#: Weight files in formats that can run code when loaded, or that another reader owns.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
NOT_SIDE_FILES = PICKLE_SUFFIXES + (".safetensors", ".gguf", ".h5", ".msgpack", ".onnx", ".npz", ".npy")
#: What a trainer's ``checkpoint-N/`` folder holds beside the model (transformers' Trainer, Axolotl):
#: training state, not part of a release. The pickles among them are never loaded either way.
TRAINER_STATE_FILES = ("trainer_state.json",)


@dataclass
class HFDirectory:
    path: Path
    config: ModelConfig
    stored: dict[str, tuple[SafetensorsFile, StoredTensor]]
    side_files: list[Path]
    notes: list[str]

    def metadata_value(self, key: str) -> str | None:
        for f, _ in self.stored.values():
            if key in f.metadata:
                return f.metadata[key]
        return None


def looks_like_hf(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


#: the longest file name Linux, macOS and Windows file systems accept, in bytes
MAX_NAME_BYTES = 255


def _weight_files(path: Path) -> list[Path]:
    index = path / INDEX_NAME
    if index.is_file():
        weight_map = read_json_object(index, "index").get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(index, "malformed index: weight_map is missing or not an object")
        files: list[Path] = []
        for tensor, fname in weight_map.items():
            if (
                not isinstance(fname, str)
                or not fname
                or "/" in fname
                or "\\" in fname
                or "\0" in fname
                or fname in (".", "..")
            ):
                raise CheckpointError(index, f"index entry {fname!r:.80} points outside the checkpoint directory", tensor)
            if len(fname.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
                raise CheckpointError(index, f"index entry {fname!r:.80}... is longer than {MAX_NAME_BYTES} bytes", tensor)
            p = path / fname
            if p not in files:
                if not p.is_file():
                    raise CheckpointError(index, f"index names shard {fname!r}, which does not exist", tensor)
                files.append(p)
        return [check_inside(p, path) for p in files]
    single = path / SINGLE_NAME
    if single.is_file():
        return [check_inside(single, path)]
    shards = sorted(p for p in path.glob("*.safetensors") if p.is_file())
    if shards:
        return [check_inside(p, path) for p in shards]
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            path / pickles[0],
            "pickle weights are not loaded (unpickling can run arbitrary code); convert them to safetensors first",
        )
    raise CheckpointError(path, "no safetensors weights found")


def read_hf_directory(path: Path) -> HFDirectory:
    """The directory's config and every safetensors header, parsed once per open_checkpoint."""
    return parsed_once(("hf-directory", path.resolve()), lambda: _parse_hf_directory(path))


def _parse_hf_directory(path: Path) -> HFDirectory:
    config = read_hf_config(check_inside(path / "config.json", path))
    notes = [f"config.json names {k!r} more than once; the last value is used" for k in dict.fromkeys(config.duplicate_keys)]
    stored: dict[str, tuple[SafetensorsFile, StoredTensor]] = {}
    for f in _weight_files(path):
        st = SafetensorsFile(f)
        for name, t in st.tensors.items():
            if name in stored:
                raise CheckpointError(f, f"tensor also stored in {stored[name][0].path.name}", name)
            stored[name] = (st, t)
    config.check_fits(len(stored), path / "config.json", "tensors in their safetensors headers")
    ignored_pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if ignored_pickles:
        notes.append(f"ignored pickle files (never loaded): {', '.join(ignored_pickles)}")
    trainer = sorted(p.name for p in path.iterdir() if p.name in TRAINER_STATE_FILES)
    if trainer:
        notes.append(f"trainer checkpoint: training state ignored and not copied ({', '.join(trainer)})")
    return HFDirectory(path, config, stored, side_files(path, notes), notes)


def side_files(path: Path, notes: list[str] | None = None) -> list[Path]:
    """Files that travel with the weights: the top-level tokenizer, generation config, licence, card,
    and the files of the sentence-transformers module folders ``modules.json`` names (``1_Pooling/``).

    Each must resolve inside ``path``; a module folder's weights in a pickle are never carried (noted)."""
    out = []
    for p in sorted(path.iterdir()):
        if p.name.startswith(".") or p.name in ("config.json", INDEX_NAME) or not p.is_file():
            continue
        if p.suffix in NOT_SIDE_FILES or p.name in TRAINER_STATE_FILES:
            continue
        out.append(check_inside(p, path))
    if (path / MODULES_FILE).is_file():
        for module in read_modules(check_inside(path / MODULES_FILE, path)):
            if module.path:
                out += _module_files(path, module.path, notes if notes is not None else [])
    return out


def _module_files(root: Path, folder: str, notes: list[str]) -> list[Path]:
    """The regular files of one sentence-transformers module folder (none where it does not exist)."""
    where = check_inside(root / folder, root)
    if not where.is_dir():
        return []
    out = []
    for p in sorted(where.iterdir()):
        if p.name.startswith(".") or not p.is_file():
            continue
        if p.suffix in PICKLE_SUFFIXES:
            notes.append(f"ignored pickle file in module folder {folder} (never loaded): {p.name}")
            continue
        out.append(check_inside(p, root))
    return out


def copy_side_files(files: Iterable[Path], out: Path, root: Path | None = None) -> list[str]:
    """Copy side files into ``out`` under their names relative to ``root`` (the source folder)."""
    names = []
    for f in files:
        name = side_file_name(f, root) if root is not None else f.name
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(check_inside(f, root if root is not None and root.is_dir() else f.parent), target)
        names.append(name)
    return names


def check_inside(p: Path, root: Path) -> Path:
    """``p`` itself when it resolves inside ``root``; a CheckpointError naming the link and its target otherwise.

    A symlink out of a checkpoint folder (``notes.txt -> /etc/passwd``) would carry a file from
    elsewhere on this machine into the output or an upload. The one exception is the Hugging Face
    cache's own layout: files in ``<repo>/snapshots/<rev>/`` are links into ``<repo>/blobs/``.
    """
    target = p.resolve()
    base = root.resolve()
    if target.is_relative_to(base) or _hf_cache_blob(root, target):
        return p
    raise CheckpointError(p, f"is a link to {target}, outside the checkpoint folder {base}: refused")


def _hf_cache_blob(root: Path, target: Path) -> bool:
    root = Path(os.path.abspath(root))
    for folder in (root, *root.parents):
        if folder.parent.name == "snapshots":
            blobs = (folder.parent.parent / "blobs").resolve()
            return target.is_relative_to(blobs)
    return False


def plan_shards(plan: list[PlannedTensor], max_shard_size: int) -> list[list[PlannedTensor]]:
    """Greedy, order-preserving: a shard closes when the next tensor would take it past the limit."""
    shards: list[list[PlannedTensor]] = [[]]
    size = 0
    for t in plan:
        if shards[-1] and size + t.nbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


@dataclass(frozen=True)
class Piece:
    """What one production step makes: a planned tensor whole, or rows ``start:stop`` of it."""

    tensor: PlannedTensor
    start: int
    stop: int
    whole: bool
    #: copied file to file (a FileSlice): it takes no memory while it waits to be written
    copied: bool = False

    @property
    def nbytes(self) -> int:
        rows = self.tensor.shape[0] if self.tensor.shape else 1
        return 0 if self.copied or not rows else self.tensor.nbytes * (self.stop - self.start) // rows


def pieces(
    plan: list[PlannedTensor],
    by_rows: Callable[[PlannedTensor], bool],
    copies: Callable[[PlannedTensor], bool] = lambda t: False,
) -> list[Piece]:
    """Each planned tensor as one piece, or (where ``by_rows`` says its rows can be produced on
    their own, and it is larger than a block) as blocks of rows: memory follows the block, not the
    tensor (an embedding is vocabulary x hidden). ``copies``: whose blocks are copied as stored."""
    out = []
    for t in plan:
        rows = t.shape[0] if t.shape else 1
        if t.shape and math.prod(t.shape) > ROW_BLOCK_VALUES and by_rows(t):
            copied = copies(t)
            out += [Piece(t, a, b, False, copied) for a, b in row_blocks(t.shape, ROW_BLOCK_VALUES)]
        else:
            out.append(Piece(t, 0, rows, True))
    return out


def copies_as_stored(ckpt: Checkpoint) -> Callable[[PlannedTensor], bool]:
    """Whether a planned tensor's rows are the source's stored bytes (same dtype, rows in a file)."""

    def copies(t: PlannedTensor) -> bool:
        entry = ckpt.tensors.get(t.name)
        return entry is not None and rows_copied_as(entry, t.dtype_name)

    return copies


def dense_piece(entry: TensorEntry, piece: Piece) -> Dense | FileSlice:
    """A block of rows of a dense tensor in the planned dtype: where the piece is copied as stored,
    where its bytes lie; else the values read and converted."""
    if piece.copied and entry.row_bytes is not None:
        return entry.row_bytes(piece.start, piece.stop)
    return dense_rows(entry, piece.start, piece.stop).to(piece.tensor.dtype_name)


def write_safetensors_dir(
    out: Path,
    plan: list[PlannedTensor],
    produce: Callable[[Piece], Dense | FileSlice],
    max_shard_size: int,
    metadata: dict[str, str],
    progress: Progress,
    report: WriteReport,
    by_rows: Callable[[PlannedTensor], bool] = lambda t: False,
    copies: Callable[[PlannedTensor], bool] = lambda t: False,
) -> None:
    """Write ``plan`` as one file or as shards plus an index, producing each piece just in time
    (see :func:`pieces`: ``produce`` gets whole tensors, and row blocks of those ``by_rows`` allows)."""
    shards = plan_shards(plan, max_shard_size)
    n = len(shards)
    names = [SINGLE_NAME] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    weight_map: dict[str, str] = {}
    done = 0
    work = pieces(plan, by_rows, copies)
    made = produced_ahead(work, produce, ahead_budget(work))
    at = 0
    try:
        for fname, shard in zip(names, shards):
            with SafetensorsWriter(out / fname, shard, metadata) as w:
                for t in shard:
                    progress(done, len(plan), t.name)
                    while at < len(work) and work[at].tensor is t:
                        w.write(t.name, next(made))
                        at += 1
                    weight_map[t.name] = fname
                    done += 1
            report.files.append(fname)
    finally:
        made.close()
    total = sum(t.nbytes for t in plan)
    if n > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        report.files.append(INDEX_NAME)
    report.tensors = len(plan)
    report.bytes_written = total
    progress(len(plan), len(plan), "")


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def ordered_names(config: ModelConfig, names: Iterable[str]) -> list[str]:
    """The config's natural order (embedding, layers by number, final norm, head), then the rest."""
    want = list(config.expected_shapes())
    rank = {n: i for i, n in enumerate(want)}
    return sorted(names, key=lambda n: (rank.get(n, len(want)), n))
