"""The GGUF writer's stage 1 result: what the file will hold, shared by the writer and production."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...ternary.recipes import Recipe
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
    #: the warning when --embed-type rounds the source's embedding, or None
    embed_loss: str | None = None

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
