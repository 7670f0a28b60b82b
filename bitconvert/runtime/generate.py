"""Token generation with the KV cache: prefill the prompt once, then one token per step."""

from __future__ import annotations

import time
from typing import Iterable, Iterator, Sequence

import torch

from ..errors import UsageError
from .model import RuntimeModel


class Generation:
    """Iterate to get new token ids one by one; timings are filled in as it runs.

    ``temperature`` 0 is greedy (argmax); above 0, tokens are sampled from ``softmax(logits / T)``
    with a generator seeded by ``seed``, so a run is reproducible. Generation stops after
    ``max_new_tokens`` or right after yielding a token in ``stop_tokens``.
    """

    def __init__(
        self,
        model: RuntimeModel,
        prompt: Sequence[int],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        seed: int = 0,
        stop_tokens: Iterable[int] = (),
    ) -> None:
        if max_new_tokens < 0:
            raise UsageError(f"max new tokens must be 0 or more, got {max_new_tokens}")
        if not temperature >= 0:
            raise UsageError(f"temperature must be 0 or more, got {temperature}")
        self.model = model
        self.prompt = list(prompt)
        self.max_new_tokens = max_new_tokens
        self.temperature = float(temperature)
        self.stop_tokens = set(stop_tokens)
        self.generator = torch.Generator().manual_seed(seed)
        self.tokens: list[int] = []
        self.prefill_seconds = 0.0
        self.decode_seconds = 0.0
        self.stopped_by: str | None = None

    def _pick(self, logits: torch.Tensor) -> int:
        row = logits[-1].to(device="cpu", dtype=torch.float32)
        if self.temperature == 0:
            return int(row.argmax())
        probs = torch.softmax(row / self.temperature, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))

    def __iter__(self) -> Iterator[int]:
        if self.max_new_tokens == 0:
            self.stopped_by = "length"
            return
        capacity = len(self.prompt) + self.max_new_tokens
        cache = self.model.new_cache(capacity)
        start = time.perf_counter()
        logits = self.model.forward(self.prompt, cache, last_only=True)
        self.prefill_seconds = time.perf_counter() - start
        while True:
            token = self._pick(logits)
            self.tokens.append(token)
            yield token
            if token in self.stop_tokens:
                self.stopped_by = "stop token"
                return
            if len(self.tokens) >= self.max_new_tokens:
                self.stopped_by = "length"
                return
            start = time.perf_counter()
            logits = self.model.forward([token], cache, last_only=True)
            self.decode_seconds += time.perf_counter() - start

    @property
    def prefill_tokens_per_second(self) -> float | None:
        return len(self.prompt) / self.prefill_seconds if self.prefill_seconds else None

    @property
    def decode_tokens_per_second(self) -> float | None:
        steps = max(0, len(self.tokens) - 1)  # the first new token comes from the prefill
        return steps / self.decode_seconds if self.decode_seconds and steps else None


def generate(
    model: RuntimeModel,
    prompt: Sequence[int],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    seed: int = 0,
    stop_tokens: Iterable[int] = (),
) -> list[int]:
    """The new token ids (without the prompt); see :class:`Generation`."""
    gen = Generation(
        model, prompt, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, stop_tokens=stop_tokens
    )
    return list(gen)
