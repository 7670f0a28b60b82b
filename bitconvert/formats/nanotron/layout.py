"""Nanotron's on-disk weight layout as pure functions: parameter paths, shard file names, the
tensor-parallel sharding rule, the slice metadata strings and the RoPE row order. No I/O.

One Nanotron parameter may hold several Hugging Face tensors (``qkv_proj`` = q|k|v rows,
``gate_up_proj`` = gate|up rows); a :class:`Part` says which rows of the unsharded parameter
belong to which HF tensor, so both directions are row-range copies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ...model.config import ModelConfig
from ...model.families import EMBEDDING_ROLE, FINAL_NORM_ROLE, LM_HEAD_ROLE

UNSHARDED_FILE = "model_weight.safetensors"
SHARD_FILE_RE = re.compile(r"model_weight_pp-rank-(\d+)-of-(\d+)_tp-rank-(\d+)-of-(\d+)\.safetensors")
DATA_KEY = "data"
METADATA_KEYS = ("version", "local_global_slices_pairs", "unsharded_shape")
#: Where the two sub-norms of the BitNet architectures live (see docs/nanotron.md for the choice).
ATTN_SUB_NORM = "attn/attn_sub_norm"
FFN_SUB_NORM = "mlp/ffn_sub_norm"

Box = tuple[slice, ...]
SlicePair = tuple[Box, Box]  # (local slices, global slices)


def shard_file_name(tp_rank: int, tp_size: int, pp_rank: int = 0, pp_size: int = 1) -> str:
    return f"model_weight_pp-rank-{pp_rank}-of-{pp_size}_tp-rank-{tp_rank}-of-{tp_size}.safetensors"


@dataclass(frozen=True)
class Part:
    """The rows ``[start, start + rows)`` of an unsharded Nanotron parameter that are one HF tensor."""

    hf_name: str
    start: int
    rows: int
    #: q and k: their heads, whose rows are reordered when RoPE is interleaved; 0 for other tensors
    rope_heads: int = 0


@dataclass(frozen=True)
class ParamSpec:
    """One Nanotron parameter: its folder under ``model/model/``, unsharded shape and how TP splits it."""

    path: str
    shape: tuple[int, ...]
    parts: tuple[Part, ...]
    split_dim: int | None  # None: not tensor-parallel (norms), stored once as model_weight.safetensors
    chunks: tuple[int, ...] | None = None  # fused params: each chunk is split across ranks on its own

    @property
    def sharded(self) -> bool:
        return self.split_dim is not None


def padded_vocab(vocab_size: int, tp: int) -> int:
    """Nanotron pads the vocabulary to a multiple of the TP size (make_vocab_size_divisible_by = 1)."""
    return -(-vocab_size // tp) * tp


@dataclass(frozen=True)
class ModelLayout:
    """Which parameter folders a decoder layer has (the Nanotron codebases differ; see flavors.py)."""

    mlp: str = "mlp"  # PR #180's head names it "MLPBitNet"
    decoder_norms: bool = True  # input_layernorm and post_attention_layernorm
    #: sub-norm folders: written by bitconvert before flavors existed, still read; no Nanotron model has them
    sub_norms: bool = False


def param_specs(cfg: ModelConfig, vocab_rows: int, layout: ModelLayout = ModelLayout()) -> list[ParamSpec]:
    """Every parameter of a Nanotron Llama-layout model for ``cfg`` stored in ``layout``, in model order.

    ``vocab_rows`` is the (possibly padded) row count of the embedding and lm_head. HF tensors that
    the layout has no folder for are in no spec (see :func:`unplaced_tensors`).
    """
    h = cfg.hidden_size
    embed = Part(cfg.tensor_name(EMBEDDING_ROLE), 0, cfg.vocab_size)
    specs = [ParamSpec("token_position_embeddings/pp_block/token_embedding", (vocab_rows, h), (embed,), 0)]
    for i in range(cfg.num_hidden_layers):
        specs += _decoder_layer_specs(cfg, i, layout)
    specs.append(ParamSpec("final_layer_norm/pp_block", (h,), (Part(cfg.tensor_name(FINAL_NORM_ROLE), 0, h),), None))
    if not cfg.tie_word_embeddings:
        # Tied models keep only the embedding: Nanotron saves a tied parameter under its first name.
        specs.append(ParamSpec("lm_head/pp_block", (vocab_rows, h), (Part(cfg.tensor_name(LM_HEAD_ROLE), 0, cfg.vocab_size),), 0))
    return specs


def _norm(path: str, hf: str, role: str, cfg: ModelConfig, wanted: bool = True) -> ParamSpec | None:
    """The norm folder ``path`` holding the family's norm of ``role``, where wanted and the family has one."""
    norm = cfg.family.norm(role)
    if norm is None or not wanted:
        return None
    width = cfg.dims()[norm.dim]
    return ParamSpec(path, (width,), (Part(f"{hf}{norm.path}.weight", 0, width),), None)


def _decoder_layer_specs(cfg: ModelConfig, i: int, layout: ModelLayout) -> list[ParamSpec]:
    h, inter = cfg.hidden_size, cfg.intermediate_size
    nq, nkv, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    q_rows, kv_rows = nq * d, nkv * d
    hf, nt = cfg.layer_prefix(i), f"decoder/{i}/pp_block/"
    # the family's projections by role (their GGUF names): Nanotron fuses q|k|v and gate|up
    lin = {spec.gguf: f"{hf}{spec.path}.weight" for spec in cfg.family.linears}
    qkv = (
        Part(lin["attn_q"], 0, q_rows, nq),
        Part(lin["attn_k"], q_rows, kv_rows, nkv),
        Part(lin["attn_v"], q_rows + kv_rows, kv_rows),
    )
    gate_up = (Part(lin["ffn_gate"], 0, inter), Part(lin["ffn_up"], inter, inter))
    mlp = nt + layout.mlp + "/"
    specs = [
        _norm(nt + "input_layernorm", hf, "attn_norm", cfg, layout.decoder_norms),
        ParamSpec(nt + "attn/qkv_proj", (q_rows + 2 * kv_rows, h), qkv, 0, (q_rows, kv_rows, kv_rows)),
        ParamSpec(nt + "attn/o_proj", (h, q_rows), (Part(lin["attn_output"], 0, h),), 1),
        _norm(nt + ATTN_SUB_NORM, hf, "attn_sub_norm", cfg, layout.sub_norms),
        _norm(nt + "post_attention_layernorm", hf, "ffn_norm", cfg, layout.decoder_norms),
        ParamSpec(mlp + "gate_up_proj", (2 * inter, h), gate_up, 0, (inter, inter)),
        ParamSpec(mlp + "down_proj", (h, inter), (Part(lin["ffn_down"], 0, h),), 1),
        _norm(nt + FFN_SUB_NORM, hf, "ffn_sub_norm", cfg, layout.sub_norms),
    ]
    return [s for s in specs if s is not None]


def unplaced_tensors(cfg: ModelConfig, specs: list[ParamSpec]) -> list[str]:
    """The model's HF tensors that no parameter folder in ``specs`` holds, in the config's order."""
    placed = {part.hf_name for s in specs for part in s.parts}
    return [name for name in cfg.expected_shapes() if name not in placed]


# --- the sharding rule --------------------------------------------------------------------------


def local_shape(spec: ParamSpec, tp: int) -> tuple[int, ...]:
    if spec.split_dim is None:
        return spec.shape
    return tuple(n // tp if dim == spec.split_dim else n for dim, n in enumerate(spec.shape))


def shard_problem(spec: ParamSpec, tp: int) -> str | None:
    """Why ``spec`` cannot be split ``tp`` ways, or None."""
    if spec.split_dim is None:
        return None
    for chunk in spec.chunks or (spec.shape[spec.split_dim],):
        if chunk % tp:
            return f"{spec.path}: {chunk} rows/columns do not split into {tp} equal tensor-parallel shards"
    return None


def rank_slices(spec: ParamSpec, tp: int, rank: int) -> list[SlicePair]:
    """The (local, global) slice pairs rank ``rank`` of ``tp`` holds, exactly as Nanotron records them.

    Unfused: the local tensor is all of it (``slice(None)`` everywhere) and its global slice is the
    rank's contiguous block on the split dimension. Fused: within every chunk, each rank holds its
    own contiguous block, and the local tensor is those blocks stacked in chunk order.
    """
    assert spec.split_dim is not None
    dims = len(spec.shape)

    def box(s: slice) -> Box:
        return tuple(s if dim == spec.split_dim else slice(None) for dim in range(dims))

    if spec.chunks is None:
        n = spec.shape[spec.split_dim] // tp
        return [(tuple(slice(None) for _ in range(dims)), box(slice(rank * n, (rank + 1) * n)))]
    pairs = []
    global_start = local_start = 0
    for chunk in spec.chunks:
        n = chunk // tp
        mine = global_start + rank * n
        pairs.append((box(slice(local_start, local_start + n)), box(slice(mine, mine + n))))
        global_start += chunk
        local_start += n
    return pairs


# --- metadata strings ---------------------------------------------------------------------------


def _slice_text(s: slice) -> str:
    return ",".join("None" if v is None else str(int(v)) for v in (s.start, s.stop, s.step))


def pairs_text(pairs: list[SlicePair]) -> str:
    """``start,stop,step`` per dim joined by ``|``; ``local#global``; pairs joined by ``;``."""
    return ";".join("|".join(map(_slice_text, loc)) + "#" + "|".join(map(_slice_text, glob)) for loc, glob in pairs)


def shape_text(shape: tuple[int, ...]) -> str:
    return str(tuple(int(n) for n in shape))


def shard_metadata(spec: ParamSpec, tp: int, rank: int, version: str) -> dict[str, str]:
    return {
        "version": version,
        "local_global_slices_pairs": pairs_text(rank_slices(spec, tp, rank)),
        "unsharded_shape": shape_text(spec.shape),
    }


def _parse_slice(text: str) -> slice:
    items = text.split(",")
    if not 1 <= len(items) <= 3:
        raise ValueError(f"slice {text!r} is not start,stop,step")
    try:
        return slice(*(None if x.strip() == "None" else int(x) for x in items))
    except ValueError:
        raise ValueError(f"slice {text!r} holds something other than integers and None") from None


def parse_pairs(text: str) -> list[SlicePair]:
    pairs = []
    for item in text.split(";"):
        halves = item.split("#")
        if len(halves) != 2:
            raise ValueError(f"slice pair {item!r} is not local#global")
        loc, glob = (tuple(_parse_slice(s) for s in half.split("|")) for half in halves)
        pairs.append((loc, glob))
    return pairs


_NUMPY_INT = re.compile(r"np\.int\d*\((-?\d+)\)")


def parse_shape(text: str) -> tuple[int, ...]:
    """``"(16, 8)"``; numpy 2 writes ``"(np.int64(16), 8)"`` and Nanotron reads that too."""
    body = text.strip()
    if not (body.startswith("(") and body.endswith(")")):
        raise ValueError(f"unsharded_shape {text!r} is not a tuple")
    out = []
    for item in body[1:-1].split(","):
        item = item.strip()
        if not item:
            continue
        m = _NUMPY_INT.fullmatch(item)
        try:
            out.append(int(m.group(1) if m else item))
        except ValueError:
            raise ValueError(f"unsharded_shape {text!r} holds a non-integer") from None
    if any(n < 0 for n in out):
        raise ValueError(f"unsharded_shape {text!r} has a negative size")
    return tuple(out)


# --- tiling -------------------------------------------------------------------------------------


def resolve_box(box: Box, shape: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """Plain ``(start, stop)`` per dim; raises ValueError for steps, negative or out-of-range bounds."""
    if len(box) != len(shape):
        raise ValueError(f"{len(box)} slices for a {len(shape)}-dim tensor")
    out = []
    for s, n in zip(box, shape):
        if s.step not in (None, 1):
            raise ValueError(f"slice step {s.step} (only contiguous slices are supported)")
        start = 0 if s.start is None else s.start
        stop = n if s.stop is None else s.stop
        if not 0 <= start <= stop <= n:
            raise ValueError(f"slice {start}:{stop} lies outside a dimension of size {n}")
        out.append((start, stop))
    return tuple(out)


def tiling_problem(boxes: list[tuple[tuple[int, int], ...]], shape: tuple[int, ...]) -> str | None:
    """None when ``boxes`` cover ``shape`` exactly once; else what is wrong.

    Counts coverage on the grid of all box boundaries, so the cost depends on the number of boxes,
    not on the tensor size. (numpy: opening a checkpoint needs no torch.)
    """
    dims = len(shape)
    edges = [sorted({0, shape[d], *(b[d][0] for b in boxes), *(b[d][1] for b in boxes)}) for d in range(dims)]
    cover = np.zeros([len(e) - 1 for e in edges], dtype=np.int32)
    for b in boxes:
        index = tuple(slice(edges[d].index(b[d][0]), edges[d].index(b[d][1])) for d in range(dims))
        cover[index] += 1
    if bool((cover > 1).any()):
        cell = [int(i) for i in np.argwhere(cover > 1)[0]]
        return f"slices overlap at index {tuple(edges[d][c] for d, c in enumerate(cell))}"
    if bool((cover == 0).any()):
        cell = [int(i) for i in np.argwhere(cover == 0)[0]]
        return f"no shard covers index {tuple(edges[d][c] for d, c in enumerate(cell))}"
    return None


# --- RoPE row order -----------------------------------------------------------------------------


def to_interleaved(w: np.ndarray, heads: int) -> np.ndarray:
    """HF rotate_half rows (pairs j, j + d/2) -> interleaved rows (pairs 2j, 2j + 1), within each head."""
    rows, cols = w.shape
    d = rows // heads
    return w.reshape(heads, 2, d // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def from_interleaved(w: np.ndarray, heads: int) -> np.ndarray:
    rows, cols = w.shape
    d = rows // heads
    return w.reshape(heads, d // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)
