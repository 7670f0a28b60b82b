"""Key/value cache for one sequence: per layer, keys and values after RoPE, grown by doubling."""

from __future__ import annotations

import torch


class KVCache:
    def __init__(
        self, layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device, capacity: int = 64
    ) -> None:
        self.shape = (kv_heads, max(1, capacity), head_dim)
        self.keys = [torch.empty(self.shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.empty(self.shape, dtype=dtype, device=device) for _ in range(layers)]
        #: tokens whose keys and values every layer holds
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[1]

    def _grow(self, needed: int) -> None:
        cap = self.capacity
        while cap < needed:
            cap *= 2
        for store in (self.keys, self.values):
            for i, old in enumerate(store):
                new = old.new_empty((old.shape[0], cap, old.shape[2]))
                new[:, : self.length] = old[:, : self.length]
                store[i] = new

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``k, v [kv_heads, T, head_dim]`` of the tokens being processed; return all so far."""
        end = self.length + k.shape[1]
        if end > self.capacity:
            self._grow(end)
        self.keys[layer][:, self.length : end] = k
        self.values[layer][:, self.length : end] = v
        return self.keys[layer][:, :end], self.values[layer][:, :end]

    def advance(self, tokens: int) -> None:
        """Called once all layers have stored the current tokens."""
        self.length += tokens
