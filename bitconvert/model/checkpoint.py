"""The canonical in-memory checkpoint: a config plus lazily loaded, named tensors.

Every reader produces a :class:`Checkpoint`, every writer consumes one; they never meet. Tensor
names are Hugging Face's (``model.layers.3.self_attn.q_proj.weight``) whatever the format. A
quantized linear weight loads as a :class:`~bitconvert.ternary.TernaryWeight` when the source
holds it quantized (codes + scale), so quantized-to-quantized conversions never requantize; a
master holds it as a float tensor, and :func:`as_ternary` quantizes it on demand.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Union

from .config import IGNORED_TENSOR_SUFFIXES, ModelConfig
from ..dtypes import torch_dtype
from ..errors import CheckpointError
from ..ternary.linear_class import LinearClass

if TYPE_CHECKING:  # opening a checkpoint needs no tensors; loading one (and the helpers below) imports torch
    import numpy as np
    import torch

    from ..ternary.stored import StoredScale
    from ..ternary import TernaryScale, TernaryWeight

Value = Union["torch.Tensor", "TernaryWeight"]

#: float dtypes as config.json names them (``torch_dtype``), which writers keep, by their safetensors names
DECLARED_DTYPES = {"float16": "F16", "bfloat16": "BF16", "float32": "F32"}


@dataclass
class TensorEntry:
    name: str
    shape: tuple[int, ...]  # logical shape, unpacked
    #: float dtype of a dense tensor, or of the scale of a stored ternary one, as safetensors names
    #: it ("BF16"): known from the header, without torch (:attr:`dtype` is the torch dtype)
    dtype_name: str
    ternary: bool  # load() returns a TernaryWeight
    source: str  # where it lives, for messages
    load: Callable[[], Value]
    #: for ternary entries: the scale alone, cheap, for writers that need scales before the codes
    load_scale: Callable[[], TernaryScale] | None = None
    #: how the source stores it, for people (e.g. "U8 packed + BF16 scale")
    stored: str = ""
    #: for ternary entries stored in the HF row-block layout (``pack_codes``): the packed uint8
    #: bytes as stored (numpy, ``[rows / 4, cols]``), unchecked, so statistics and hashes need
    #: neither unpack them nor import torch
    load_packed: Callable[[], np.ndarray] | None = None
    #: with ``load_packed``: the stored scale as raw bytes, unchecked, likewise without torch
    load_stored_scale: Callable[[], StoredScale] | None = None
    #: for dense entries whose value is exactly their stored bytes (``dtype_name``, ``shape``): those
    #: bytes, flat uint8 numpy, for checks and hashes that need no arithmetic
    load_stored: Callable[[], np.ndarray] | None = None
    #: for ternary entries stored some other way (GGUF blocks, floats that are codes x a recorded
    #: magnitude): counts of codes -1, 0, +1 and of invalid fields, and the scale :attr:`load` gives,
    #: read off the stored bytes without decoding them or importing torch; None where only loading
    #: can tell (blocks with different scales, say), and loading then reports what it finds
    load_code_counts: Callable[[], tuple[tuple[int, int, int, int], StoredScale] | None] | None = None

    @property
    def dtype(self) -> torch.dtype:
        return torch_dtype(self.dtype_name)


@dataclass
class Checkpoint:
    format: str
    path: Path
    config: ModelConfig
    tensors: dict[str, TensorEntry]
    side_files: list[Path] = field(default_factory=list)
    #: reader notes worth showing a user (ignored buffers, duplicated config keys, ...)
    notes: list[str] = field(default_factory=list)
    #: format-specific facts a writer may use (provenance, original dtypes)
    info: dict[str, Any] = field(default_factory=dict)
    #: what the source evidently lost before bitconvert saw it (a reader's warnings; shown like a writer's)
    warnings: list[str] = field(default_factory=list)

    def is_quantized_linear(self, name: str) -> bool:
        return name in self._quantized

    def __post_init__(self) -> None:
        self._quantized = set(self.config.quantized_linear_names())

    def declared_dtype(self) -> torch.dtype | None:
        """The float dtype the source's config.json states (``torch_dtype``, or transformers 5's ``dtype``)."""
        for key in ("torch_dtype", "dtype"):
            value = self.config.raw.get(key)
            if isinstance(value, str) and value in DECLARED_DTYPES:
                return torch_dtype(DECLARED_DTYPES[value])
        return None

    def model_dtype(self) -> torch.dtype:
        """The dtype a writer states for the model when not told otherwise: the declared one, else
        the embedding's, else bf16."""
        embed = self.tensors.get("model.embed_tokens.weight")
        if embed is not None and not embed.ternary and embed.dtype_name in DECLARED_DTYPES.values():
            return self.declared_dtype() or embed.dtype
        return self.declared_dtype() or torch_dtype("BF16")

    def source_dtype(self, name: str) -> torch.dtype:
        """The dtype a dense tensor keeps when no dtype is asked for: its own where it is stored as
        floats, unless the format imposes its dtypes (``info["container_dtypes"]``, GGUF) and the
        model's is recorded; quantized embeddings and dequantized ternary weights: :meth:`model_dtype`."""
        entry = self.tensors[name]
        if entry.ternary or entry.dtype_name not in DECLARED_DTYPES.values():
            return self.model_dtype()
        if self.info.get("container_dtypes"):
            return self.declared_dtype() or entry.dtype
        return entry.dtype

    def source_linear_class(self) -> LinearClass | None:
        """The scale convention the source was quantized with, where it says."""
        if "linear_class" in self.info:
            return self.info["linear_class"]
        q = self.config.quantization
        return q.linear_class if q else None


def as_ternary(value: Value, linear_class: LinearClass, scale_dtype: torch.dtype) -> tuple[TernaryWeight, str]:
    """The ternary form of a quantized linear weight, and how it was obtained.

    ``"kept"``: already ternary (scale re-expressed only if class or dtype differ);
    ``"recovered"``: a float tensor that is exactly codes x one magnitude (e.g. ``unpack`` output);
    ``"quantized"``: absmean quantization of a latent master weight.
    """
    from ..ternary import TernaryScale, TernaryWeight, quantize, recover_ternary

    if isinstance(value, TernaryWeight):
        scale = value.scale
        if scale.linear_class is not linear_class or scale.dtype != scale_dtype:
            scale = scale.to(linear_class, scale_dtype)
        return TernaryWeight(value.codes, scale), "kept"
    found = recover_ternary(value)
    if found is not None:
        codes, magnitude = found
        scale = TernaryScale(magnitude, LinearClass.AUTOBITLINEAR).to(linear_class, scale_dtype)
        return TernaryWeight(codes, scale), "recovered"
    return quantize(value, linear_class, scale_dtype), "quantized"


@contextmanager
def quantizing(entry: TensorEntry) -> Iterator[None]:
    """Quantization of ``entry``'s weight: a NaN/Inf in it is refused naming the tensor and its file."""
    from ..ternary import NonFiniteWeight

    try:
        yield
    except NonFiniteWeight as exc:
        raise CheckpointError(entry.source, str(exc), entry.name) from None


def entry_as_ternary(
    entry: TensorEntry,
    value: Value,
    linear_class: LinearClass,
    scale_dtype: torch.dtype,
    how: Callable[[Value, LinearClass, torch.dtype], tuple[TernaryWeight, str]] | None = None,
) -> tuple[TernaryWeight, str]:
    """The ternary form of ``entry``'s loaded ``value`` by ``how`` (default :func:`as_ternary`; a
    producer's recipe: recipes.recipe_quantizer), inside :func:`quantizing`."""
    with quantizing(entry):
        return (how or as_ternary)(value, linear_class, scale_dtype)


def as_dense(value: Value, dtype: torch.dtype) -> torch.Tensor:
    """A float tensor: dense values cast, ternary weights dequantized (codes x mean|W|)."""
    from ..ternary import TernaryWeight

    if isinstance(value, TernaryWeight):
        return value.dequantize(dtype)
    return value if value.dtype == dtype else value.to(dtype)


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
