"""The GGUF writer's stage 1 result: what the file will hold, shared by the writer and production."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...ternary.recipes import GGUFStyle, Recipe
from . import i2s_layouts
from .stream_writer import PlannedGGUFTensor
from .types import GGMLType


@dataclass
class TensorPlan:
    hf: str
    tensor: PlannedGGUFTensor
    role: str  # "ternary" | "fallback" | "dense"
    scale: PlannedGGUFTensor | None = None
    heads: int | None = None  # llama-architecture q/k: rows permuted per head
    #: a norm stored as its effective gain ``offset + w`` (NormSpec.offset; read back minus it)
    offset: float = 0.0
    #: a float tensor its type would round is refused (unless --allow-lossy); else only warned about
    strict: bool = True


@dataclass
class Plan:
    """Stage 1: what the file will hold, decided before any tensor is loaded."""

    arch: str
    wtype: GGMLType
    mode: str
    recipe: Recipe = Recipe.TRANSFORMERS
    i2s_layout: str = i2s_layouts.DEFAULT_LAYOUT
    tensors: list[TensorPlan] = field(default_factory=list)
    fallbacks: list[str] = field(default_factory=list)
    #: how the recipe's producer lays the file out (keys, tensor order, dense types)
    style: GGUFStyle = field(default_factory=GGUFStyle)
    #: write float tensors whose type rounds some of their values (else refused)
    allow_lossy: bool = False
    #: the model's task (Family.task): which of a producer's records quantizes it
    task: str = "causal-lm"

    def flat(self) -> list[PlannedGGUFTensor]:
        return [t for p in self.tensors for t in ((p.tensor, p.scale) if p.scale else (p.tensor,))]
