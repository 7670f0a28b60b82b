"""``inspect``: what a checkpoint is, tensor by tensor, as plain data."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .model.checkpoint import TensorEntry
from .formats import Progress, no_progress, open_checkpoint
from .ternary.stats import counts_stats, packed_code_counts

if TYPE_CHECKING:  # only statistics need tensors (and torch); --no-stats reads headers alone
    from .ternary import TernaryScale


def _tensor_row(entry: TensorEntry, quantized: bool, stats: bool) -> dict[str, Any]:
    row: dict[str, Any] = {
        "name": entry.name,
        "shape": list(entry.shape),
        "stored": entry.stored,
        "role": "ternary linear" if quantized else "dense",
    }
    if stats and quantized:
        row.update(_ternary_figures(entry))
    return row


def _ternary_figures(entry: TensorEntry) -> dict[str, Any]:
    """Code fractions and scale (or a master's mean|W|), from the packed bytes where the reader keeps them."""
    from .ternary import TernaryWeight, mean_abs, ternary_stats

    if entry.load_packed is not None and entry.load_scale is not None:
        counts = packed_code_counts(entry.load_packed())
        if not counts[3]:  # else load() below raises the reader's error naming the bad field
            return _figures(counts_stats(*counts), entry.load_scale())
    value = entry.load()
    if isinstance(value, TernaryWeight):
        return _figures(ternary_stats(value.codes), value.scale)
    return {"latent_mean_abs": float(mean_abs(value))}


def _figures(fractions: dict[str, float], scale: TernaryScale) -> dict[str, Any]:
    return {
        "codes": {k: round(v, 6) for k, v in fractions.items()},
        "scale": {"value": scale.item(), "linear_class": scale.linear_class.value, "mean_abs": scale.multiplier},
    }


def _bytes_on_disk(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


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
        "architecture": cfg.architecture.value,
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
            "quantization": q.to_dict() if q else None,
        },
        "files": files,
        "bytes_on_disk": _bytes_on_disk(Path(ckpt.path)),
        "side_files": [p.name for p in ckpt.side_files],
        "tensors": rows,
        "ternary_tensors": sum(1 for r in rows if r["role"] == "ternary linear"),
        "notes": ckpt.notes,
        "warnings": ckpt.warnings,
        # GGUF I2_S: the byte layout (bitnet.cpp build) as recorded, or "... (assumed: not recorded)"
        **({"i2s_layout": ckpt.info["i2s_layout"]} if "i2s_layout" in ckpt.info else {}),
    }
