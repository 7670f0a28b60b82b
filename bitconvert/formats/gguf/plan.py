"""The GGUF writer's stage 1 result: what the file will hold, shared by the writer and production."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...ternary.recipes import GGUFStyle, Recipe
from . import i2s_layouts
from .kernel_config import KernelConfig, Tile
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
    #: TL1/TL2: the kernel configuration whose tiles pack each weight
    kernel_config: KernelConfig | None = None
    tensors: list[TensorPlan] = field(default_factory=list)
    fallbacks: list[str] = field(default_factory=list)
    #: how the recipe's producer lays the file out (keys, tensor order, dense types)
    style: GGUFStyle = field(default_factory=GGUFStyle)
    #: write float tensors whose type rounds some of their values (else refused)
    allow_lossy: bool = False
    #: the model's task (Family.task): which of a producer's records quantizes it
    task: str = "causal-lm"

    def layout(self, shape: tuple[int, ...]) -> str | Tile:
        """The byte order of a weight of ``shape`` in a flat type: the I2_S layout, or its TL tile."""
        if self.wtype.tiled:
            assert self.kernel_config is not None
            tile = self.kernel_config.tile(*shape)
            assert tile is not None, shape  # the writer refused shapes without a tile when planning
            return tile
        return self.i2s_layout

    def flat(self) -> list[PlannedGGUFTensor]:
        return [t for p in self.tensors for t in ((p.tensor, p.scale) if p.scale else (p.tensor,))]
