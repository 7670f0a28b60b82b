"""``inspect``: what a checkpoint is, tensor by tensor, as plain data (numpy, no torch).

Statistics come off the stored bytes where they tell them (``entry.stored().counts``: the code
counts and the scale of packed and GGUF weights, without decoding), else from the loaded values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .formats import Progress, no_progress, open_checkpoint
from .model.checkpoint import Checkpoint, Kind, TensorEntry, load_recorded
from .ternary.quantize import mean_abs
from .ternary.scale import Scale
from .ternary.stats import CodeCounts, code_counts, counts_stats
from .ternary.weight import TernaryWeight


def _tensor_row(entry: TensorEntry, quantized: bool, stats: bool) -> dict[str, Any]:
    row: dict[str, Any] = {
        "name": entry.name,
        "shape": list(entry.shape),
        "stored": entry.label,
        "role": "ternary linear" if quantized else "dense",
    }
    if stats and quantized:
        row.update(_ternary_figures(entry))
    return row


def _ternary_figures(entry: TensorEntry) -> dict[str, Any]:
    """Code fractions and scale (or a master's mean|W|), off the stored bytes where they give them."""
    if entry.kind is not Kind.DENSE:
        stored = entry.stored()
        counts = stored.counts() if stored.counts is not None and stored.scale is not None else None
        if counts is not None and not counts[3]:  # else load() below raises the reader's error naming the bad field
            return _figures(counts, stored.scale)
    value = load_recorded(entry)  # a recorded LATENT weight is its ternary weight, as verify sees it
    if isinstance(value, TernaryWeight):
        return _figures(code_counts(value.codes), value.scale)
    return {"latent_mean_abs": float(mean_abs(value))}


def _figures(counts: CodeCounts, scale: Scale) -> dict[str, Any]:
    return {
        "codes": {k: round(v, 6) for k, v in counts_stats(*counts).items()},
        "scale": {"value": scale.item(), "linear_class": scale.linear_class.value, "mean_abs": scale.multiplier},
    }


def _bytes_on_disk(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _gguf_figures(ckpt: Checkpoint) -> dict[str, Any]:
    """A GGUF file's own architecture name (beside the model family), its I2_S byte layout or TL kernel
    configuration."""
    gguf = ckpt.facts.gguf
    if gguf is None:
        return {}
    out: dict[str, Any] = {"gguf_architecture": gguf.architecture}
    if gguf.i2s_layout is not None:
        # the layout (bitnet.cpp build) as recorded, or "... (assumed: not recorded)"
        out["i2s_layout"] = gguf.i2s_layout if gguf.i2s_layout_recorded else f"{gguf.i2s_layout} (assumed: not recorded)"
    if gguf.kernel_config is not None:
        # TL1/TL2: the kernel configuration the tiles come from, and whether recorded or given
        out["kernel_config"] = gguf.kernel_config
    return out


def describe_checkpoint(path: str | Path, *, stats: bool = True, progress: Progress = no_progress) -> dict[str, Any]:
    ckpt = open_checkpoint(path)
    cfg = ckpt.config
    files = sorted({e.source for e in ckpt.tensors.values()})
    rows = []
    for i, (name, entry) in enumerate(ckpt.tensors.items()):
        progress(i, len(ckpt.tensors), name)
        rows.append(_tensor_row(entry, ckpt.is_quantized_linear(name), stats))
    progress(len(ckpt.tensors), len(ckpt.tensors), "")
    q = cfg.quantization
    return {
        "path": str(path),
        "format": ckpt.format,
        # the model family (bitconvert's name for it); a GGUF file's own name is gguf_architecture
        "architecture": cfg.family.key,
        "config": {
            "hidden_size": cfg.hidden_size,
            "intermediate_size": cfg.intermediate_size,
            "num_hidden_layers": cfg.num_hidden_layers,
            "num_attention_heads": cfg.num_attention_heads,
            "num_key_value_heads": cfg.num_key_value_heads,
            "head_dim": cfg.head_dim,
            "vocab_size": cfg.vocab_size,
            "max_position_embeddings": cfg.max_position_embeddings,
            "rope_theta": cfg.rope_theta,
            "rms_norm_eps": cfg.rms_norm_eps,
            "hidden_act": cfg.hidden_act,
            "tie_word_embeddings": cfg.tie_word_embeddings,
            "task": cfg.family.task,
            "sliding_window": cfg.sliding_window,
            "layer_types": list(cfg.layer_types),
            "quantization": q.to_dict() if q else None,
        },
        "files": files,
        "bytes_on_disk": _bytes_on_disk(Path(ckpt.path)),
        "side_files": list(ckpt.side_file_names()),
        "tensors": rows,
        "ternary_tensors": sum(1 for r in rows if r["role"] == "ternary linear"),
        "notes": ckpt.notes,
        "warnings": ckpt.warnings,
        **_gguf_figures(ckpt),
    }
