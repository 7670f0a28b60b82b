"""The canonical in-memory checkpoint: a config plus lazily loaded, named tensors, each of a declared kind.

Every reader produces a :class:`Checkpoint`, every writer consumes one; they never meet. Tensor
names are Hugging Face's (``model.layers.3.self_attn.q_proj.weight``, with the family's prefix) whatever the format. Each
entry says what it is before anything is loaded (:class:`Kind`) and offers two views:

- ``load()``: the value, in numpy: a :class:`~bitconvert.dtypes.Dense` for DENSE and LATENT
  entries, a :class:`~bitconvert.ternary.TernaryWeight` (codes + stored scale) for TERNARY ones;
- ``stored()``: the bytes as the file holds them (:class:`Stored`), for digests and for checks that
  read codes and scales off the bytes without decoding them.

A LATENT entry (a float master's quantized linear) becomes ternary only when a ternary format is
written (:func:`bitconvert.ternary.as_ternary`): recovered where it already is codes x one
magnitude (or still matches the scale its ``record`` wrote down), else quantized by a recipe.
"""

from __future__ import annotations

import enum
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Union

from ..dtypes import CONFIG_NAMES, FLOAT_NAMES, Dense
from ..errors import CheckpointError
from ..ternary.linear_class import LinearClass
from .config import IGNORED_TENSOR_SUFFIXES, ModelConfig
from .families import EMBEDDING_ROLE

if TYPE_CHECKING:
    import numpy as np

    from ..io.output import FileSlice
    from ..ternary.records import ScaleRecord
    from ..ternary.scale import Scale
    from ..ternary.stats import CodeCounts
    from ..ternary.weight import TernaryWeight

Value = Union[Dense, "TernaryWeight"]


class Kind(str, enum.Enum):
    """What an entry's ``load()`` returns, known before it is called."""

    DENSE = "dense"  # a float tensor used as it is (embeddings, norms): a Dense
    TERNARY = "ternary"  # codes and one scale as stored (packed, GGUF TQ/I2_S): a TernaryWeight
    LATENT = "latent"  # the float weight of a quantized linear (a master): a Dense, quantized when written


@dataclass(frozen=True)
class Stored:
    """A tensor's bytes as its file holds them, and what can be read off them without decoding.

    ``layout`` names the byte layout (``"floats"``: ``dtype_name`` values, row-major; ``"hf-packed"``;
    ``"gguf:TQ2_0"`` ...). ``scale`` is the scale a TERNARY entry loads with, where it can be read
    without the codes; ``counts`` gives the codes' -1/0/+1/invalid counts off ``data``, or None where
    only ``load()`` can tell (then it reports what it finds).
    """

    data: np.ndarray  # flat uint8
    layout: str
    dtype_name: str | None = None
    scale: Scale | None = None
    counts: Callable[[], CodeCounts | None] | None = None


@dataclass
class TensorEntry:
    name: str
    shape: tuple[int, ...]  # logical shape, unpacked
    kind: Kind
    #: DENSE/LATENT: the element dtype as stored (``"BF16"``); TERNARY: the scale's dtype
    dtype_name: str
    source: str  # the file it lives in, for messages
    load: Callable[[], Value]
    stored: Callable[[], Stored]
    #: how the source stores it, for people (e.g. "U8 packed + BF16 scale")
    label: str = ""
    #: LATENT: the exact scale recorded for floats written from a ternary weight (``unpack`` output),
    #: used while the floats still are codes x that scale
    record: ScaleRecord | None = None
    #: LATENT: the floats were written for online quantization (codes x mean|W| / p): their scale is
    #: mean|values|, so they are quantized, never recovered as codes x one magnitude
    online: bool = False
    #: DENSE/LATENT stored as rows of values: ``rows(start, stop)`` is ``load().rows(start, stop)``,
    #: read on its own, so that a large tensor (an embedding) streams in row blocks (see
    #: :func:`dense_rows`); None where only ``load()`` can read it
    rows: Callable[[int, int], Dense] | None = None
    #: DENSE/LATENT stored as rows in a file: ``row_bytes(start, stop)`` is where those rows lie, so a
    #: writer that keeps their dtype copies them file to file; None where they are not plain bytes in a file
    row_bytes: Callable[[int, int], FileSlice] | None = None

    @property
    def ternary(self) -> bool:
        return self.kind is Kind.TERNARY


@dataclass
class Origin:
    """Where a checkpoint comes from: set by ``convert`` for Hub sources, read back by readers."""

    model_name: str | None = None
    source_repo: str | None = None
    source_url: str | None = None
    license: str | None = None
    #: the provenance this conversion writes into a single-file output's header
    provenance: dict[str, Any] | None = None
    #: the provenance the source itself carries (its header or bitconvert_provenance.json)
    recorded_provenance: dict[str, Any] | None = None


@dataclass
class GGUFFacts:
    architecture: str
    #: the tokenizer metadata as read, carried into another GGUF
    tokenizer: dict[str, Any] = field(default_factory=dict)
    file_type: int | None = None
    #: the I2_S byte layout the reader used, and whether the file records it
    i2s_layout: str | None = None
    i2s_layout_recorded: bool = True
    #: TL1/TL2: the kernel configuration the reader used, and whether recorded or given, in words
    kernel_config: str | None = None
    #: ``{arch}.pooling_type`` (llama.cpp's: 1 mean, 2 cls, 3 last token), where the file has one
    pooling_type: int | None = None


@dataclass
class NanotronFacts:
    tensor_parallel: int
    rope_interleaved: bool
    flavor: str
    version: str | None = None


@dataclass
class Facts:
    """What a reader found about how the source stores the model, typed (writers and checks read it)."""

    #: the convention of the stored scales, where the source says or all agree
    linear_class: LinearClass | None = None
    #: the format imposes its dense dtypes (GGUF's F32 norms): the model's are the config's
    container_dtypes: bool = False
    #: config fields the format stores in float32 (GGUF), which compare equal at that precision
    config_precision: dict[str, str] = field(default_factory=dict)
    gguf: GGUFFacts | None = None
    nanotron: NanotronFacts | None = None


@dataclass
class Checkpoint:
    format: str
    path: Path
    config: ModelConfig
    tensors: dict[str, TensorEntry]
    side_files: list[Path] = field(default_factory=list)
    #: reader notes worth showing a user (ignored buffers, duplicated config keys, ...)
    notes: list[str] = field(default_factory=list)
    facts: Facts = field(default_factory=Facts)
    origin: Origin = field(default_factory=Origin)
    #: what the source evidently lost before bitconvert saw it (a reader's warnings; shown like a writer's)
    warnings: list[str] = field(default_factory=list)
    #: the folder side files are named relative to, where it is not ``path`` (a GGUF's rebuilt ones)
    side_root: Path | None = None

    def is_quantized_linear(self, name: str) -> bool:
        return name in self._quantized

    def __post_init__(self) -> None:
        self._quantized = set(self.config.quantized_linear_names())

    def declared_dtype(self) -> str | None:
        """The float dtype the source's config.json states (``torch_dtype``, or transformers 5's ``dtype``)."""
        for key in ("torch_dtype", "dtype"):
            value = self.config.raw.get(key)
            if isinstance(value, str) and value in CONFIG_NAMES and CONFIG_NAMES[value] != "F64":
                return CONFIG_NAMES[value]
        return None

    def model_dtype(self) -> str:
        """The dtype a writer states for the model when not told otherwise: the declared one, else
        the embedding's, else bf16."""
        embed = self.tensors.get(self.config.tensor_name(EMBEDDING_ROLE))
        if embed is not None and embed.kind is Kind.DENSE and embed.dtype_name in ("F16", "BF16", "F32"):
            return self.declared_dtype() or embed.dtype_name
        return self.declared_dtype() or "BF16"

    def source_dtype(self, name: str) -> str:
        """The dtype a dense tensor keeps when no dtype is asked for: its own where it is stored as
        floats, unless the format imposes its dtypes (``facts.container_dtypes``, GGUF) and the
        model's is recorded; quantized embeddings and dequantized ternary weights: :meth:`model_dtype`."""
        entry = self.tensors[name]
        if entry.kind is Kind.TERNARY or entry.dtype_name not in ("F16", "BF16", "F32"):
            return self.model_dtype()
        if self.facts.container_dtypes:
            return self.declared_dtype() or entry.dtype_name
        return entry.dtype_name

    def source_linear_class(self) -> LinearClass | None:
        """The scale convention the source was quantized with, where it says."""
        if self.facts.linear_class is not None:
            return self.facts.linear_class
        q = self.config.quantization
        return q.linear_class if q else None

    def side_folder(self) -> Path:
        """The folder side files are named relative to."""
        return self.side_root or self.path

    def side_file_names(self) -> dict[str, Path]:
        """The side files by their name relative to the checkpoint folder (``1_Pooling/config.json``)."""
        return {side_file_name(p, self.side_folder()): p for p in self.side_files}

    def first_stored_ternary(self) -> str | None:
        """The first tensor the source holds as codes (a recipe never requantizes those), or None."""
        return next((n for n, e in self.tensors.items() if e.kind is Kind.TERNARY), None)


def side_file_name(f: Path, root: Path) -> str:
    """A side file's name relative to its checkpoint folder (``1_Pooling/config.json``), else its own name."""
    try:
        return f.relative_to(root).as_posix() if root.is_dir() else f.name
    except ValueError:
        return f.name


def float_stored(data: np.ndarray, dtype_name: str) -> Stored:
    """The stored view of plain float (or integer) values."""
    return Stored(data, "floats", dtype_name)


@contextmanager
def quantizing(entry: TensorEntry) -> Iterator[None]:
    """Quantization of ``entry``'s weight: a NaN/Inf in it is refused naming the tensor and its file."""
    from ..ternary.quantize import NonFiniteWeight

    try:
        yield
    except NonFiniteWeight as exc:
        raise CheckpointError(entry.source, str(exc), entry.name) from None


def entry_as_ternary(
    entry: TensorEntry, value: Value, linear_class: LinearClass, scale_dtype: str, quantizer=None
) -> tuple[TernaryWeight, str]:
    """The ternary form of ``entry``'s loaded ``value`` (see :func:`bitconvert.ternary.as_ternary`),
    quantized by ``quantizer`` where it is latent, its record honoured, NaN/Inf refused naming it."""
    from ..ternary.quantize import as_ternary

    with quantizing(entry):
        return as_ternary(value, linear_class, scale_dtype, entry.record, quantizer, entry.online)


def load_recorded(entry: TensorEntry) -> Value:
    """``entry.load()``, except that a LATENT weight whose floats are still exactly codes x the scale its
    ``record`` wrote down (``unpack`` output) is that ternary weight, as a conversion keeps it: what
    ``verify`` and ``inspect`` check and show."""
    from ..ternary.quantize import matches_record

    value = entry.load()
    if entry.kind is Kind.LATENT and entry.record is not None and isinstance(value, Dense):
        kept = matches_record(value, entry.record)
        if kept is not None:
            return kept
    return value


#: values per block of rows when a large float tensor is read, converted or written by rows (8 MB of bf16)
ROW_BLOCK_VALUES = 1 << 22


def row_blocks(shape: tuple[int, ...], values_per_block: int = ROW_BLOCK_VALUES) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges of the first axis of ``shape`` holding about ``values_per_block``
    values each (at least one row; one range for an empty or 0-d tensor)."""
    rows = shape[0] if shape else 1
    per_row = math.prod(shape[1:]) if len(shape) > 1 else 1
    step = max(1, values_per_block // max(1, per_row))
    return [(r, min(r + step, rows)) for r in range(0, rows, step)] or [(0, rows)]


def dense_rows_known(entry: TensorEntry) -> bool:
    """Whether :func:`dense_rows` reads ``entry`` (a DENSE/LATENT entry whose reader streams rows)."""
    return entry.rows is not None and entry.kind is not Kind.TERNARY


def rows_copied_as(entry: TensorEntry, dtype_name: str) -> bool:
    """Whether rows of ``entry`` written in ``dtype_name`` are its stored bytes, copied as they lie in
    their file (``entry.row_bytes``): a DENSE/LATENT entry stored in that very dtype."""
    return entry.row_bytes is not None and entry.kind is not Kind.TERNARY and entry.dtype_name == dtype_name


def dense_rows(entry: TensorEntry, start: int, stop: int) -> Dense:
    """Rows ``start:stop`` of a DENSE/LATENT entry's value (``load().rows(start, stop)``), read on
    their own where the reader can (:func:`dense_rows_known`), else off the whole value."""
    if dense_rows_known(entry):
        return entry.rows(start, stop)
    value = entry.load()
    if not isinstance(value, Dense):
        raise TypeError(f"{entry.name}: {type(value).__name__} has no rows of values")
    return value.rows(start, stop)


def as_dense(value: Value, dtype_name: str) -> Dense:
    """Floats: dense values cast, ternary weights dequantized (codes x mean|W|)."""
    from ..ternary.weight import TernaryWeight

    if isinstance(value, TernaryWeight):
        return value.dequantize(dtype_name)
    return value.to(dtype_name)


def check_tensor_set(ckpt: Checkpoint) -> None:
    """Missing, unexpected or misshapen tensors against the config: one error naming the first."""
    expected = ckpt.config.expected_shapes()
    for name, shape in expected.items():
        entry = ckpt.tensors.get(name)
        if entry is None:
            raise CheckpointError(ckpt.path, "missing tensor", name)
        if tuple(entry.shape) != shape:
            raise CheckpointError(
                entry.source, f"shape {list(entry.shape)} does not match the config, which implies {list(shape)}", name
            )
    for name, entry in ckpt.tensors.items():
        if name not in expected:
            raise CheckpointError(entry.source, "unexpected tensor: the config implies no such weight", name)


def is_ignored_tensor(name: str) -> bool:
    return name.endswith(IGNORED_TENSOR_SUFFIXES)


__all__ = [
    "Checkpoint", "Facts", "GGUFFacts", "Kind", "NanotronFacts", "Origin", "Stored", "TensorEntry", "Value",
    "FLOAT_NAMES", "as_dense", "check_tensor_set", "side_file_name", "entry_as_ternary", "float_stored", "is_ignored_tensor", "load_recorded",
    "quantizing",
]  # fmt: skip
