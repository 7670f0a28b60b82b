"""The models the runtime comparisons (``--logits``, ``--embeddings``) run REF as: REF with its weights
as SRC's format holds them, so that an exact conversion computes on equal values and any difference
in the outputs is a difference of the models, not of the formats' precision."""

from __future__ import annotations

from dataclasses import replace

from ..model.checkpoint import Checkpoint, Kind


def default_tokens(vocab_size: int, n: int = 16, bos: int | None = None) -> list[int]:
    """A fixed token sequence for --logits: deterministic, spread over the vocabulary (torch's
    generator, as it always was: the logits comparison runs on torch anyway)."""
    import torch

    g = torch.Generator().manual_seed(1234)
    ids = torch.randint(0, vocab_size, (n,), generator=g).tolist()
    if bos is not None and 0 <= bos < vocab_size:
        ids[0] = bos
    return ids


def as_stored_by(master: Checkpoint, stored: Checkpoint) -> Checkpoint:
    """``master`` with each latent quantized linear replaced by its ternary form as ``stored`` holds
    that weight (its scale's convention and dtype): the model the stored file means, if the
    conversion was exact. ``master`` itself where it has no latent weight ``stored`` stores quantized."""
    from ..model.checkpoint import entry_as_ternary

    swaps = {}
    for name, entry in master.tensors.items():
        other = stored.tensors.get(name)
        if entry.kind is not Kind.LATENT or other is None or other.kind is not Kind.TERNARY:
            continue
        scale = other.stored().scale or other.load().scale

        def load(entry=entry, scale=scale):
            return entry_as_ternary(entry, entry.load(), scale.linear_class, scale.dtype_name)[0]

        swaps[name] = replace(entry, kind=Kind.TERNARY, load=load, dtype_name=scale.dtype_name)
    if not swaps:
        return master
    return replace(master, tensors={**master.tensors, **swaps})


def dense_as_stored_by(ref: Checkpoint, src: Checkpoint) -> tuple[Checkpoint, list[str]]:
    """``ref`` with each dense float tensor cast to the dtype SRC stores it in (where they differ)."""
    swaps, casts = {}, set()
    for name, entry in ref.tensors.items():
        other = src.tensors.get(name)
        if entry.kind is not Kind.DENSE or other is None or other.kind is not Kind.DENSE:
            continue
        if other.dtype_name == entry.dtype_name or other.dtype_name not in ("F32", "F16", "BF16"):
            continue

        def load(entry=entry, dtype=other.dtype_name):
            return entry.load().to(dtype)

        swaps[name] = replace(entry, load=load, dtype_name=other.dtype_name)
        casts.add(f"{entry.dtype_name} -> {other.dtype_name}")
    if not swaps:
        return ref, []
    return replace(ref, tensors={**ref.tensors, **swaps}), sorted(casts)


def floats_as_stored_by(ref: Checkpoint, src: Checkpoint) -> Checkpoint:
    """``ref`` with each latent quantized linear that SRC also holds as floats replaced by the floats a
    conversion writes for it (codes x mean|W| in SRC's dtype), so both are quantized on load alike."""
    from ..model.checkpoint import entry_as_ternary
    from ..ternary.linear_class import LinearClass

    swaps = {}
    for name, entry in ref.tensors.items():
        other = src.tensors.get(name)
        if entry.kind is not Kind.LATENT or other is None or other.kind is not Kind.LATENT:
            continue

        def load(entry=entry, dtype=other.dtype_name):
            weight = entry_as_ternary(entry, entry.load(), LinearClass.AUTOBITLINEAR, "F32")[0]
            return weight.dequantize(dtype)

        swaps[name] = replace(entry, load=load, dtype_name=other.dtype_name)
    return replace(ref, tensors={**ref.tensors, **swaps}) if swaps else ref
