"""The W2A8 GPU checkpoint of microsoft/BitNet's ``gpu/`` folder: its tensor names, fusions and int2 packing.

``gpu/convert_checkpoint.py`` writes two ``torch.save`` files, ``model_state_int2.pt`` (what the
CUDA kernel multiplies with) and ``model_state_fp16.pt`` (the same weights as floats, for the
model's non-kernel path). Per layer, in this order: ``attention.wqkv`` (q, k, v rows fused; the q
and k rows of each head reordered from rotate-half pairs ``(j, j + d/2)`` to interleaved pairs
``(2j, 2j + 1)``), ``attention.wo``, the four norms, ``feed_forward.w13`` (gate then up rows) and
``feed_forward.w2``; then ``tok_embeddings``, ``output`` and ``norm``. Each fused weight is int8
``[N, K/4]`` (the int2 packing below) with a bf16 ``weight_scale [4]`` holding one mean|W| per part
and zeros after; the float file holds the codes times that scale.

The int2 packing (``gpu/pack_weight.py``, read by ``bitnet_kernels.h``): the ``[N, K]`` codes, plus
two (so 1, 2, 3), are cut in 16 x 32 tiles, tile ``(bn, bk)`` at byte ``128 * (bn * K/32 + bk)``
(so the 16 rows of a row block are contiguous). A tile is 32 little-endian 32-bit words; word ``w``
holds row ``8 * (w // 16) + w % 8`` of the block, columns ``16 * ((w % 16) // 8) + j`` (j < 16), code
``j`` in bits ``8 * (j % 4) + 2 * (j // 4)``: the kernel's ``(word >> 2i) & 0x03030303`` then yields
codes ``4i .. 4i+3`` as four int8 lanes.

What goes where is asked of the family record: linears by their role (the GGUF names of
``model.families.LINEARS``), norms by role; the head counts that reorder q and k come from the config.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...model.config import ModelConfig
from ...model.families import EMBEDDING, FINAL_NORM, LM_HEAD

NAME = "bitnet-gpu"
INT2_FILE = "model_state_int2.pt"
FP16_FILE = "model_state_fp16.pt"
TILE_ROWS, TILE_COLS = 16, 32
SCALE_SLOTS = 4
#: the activation the GPU model computes (gpu/model.py squared_relu)
GPU_ACTIVATION = "relu2"
#: the sizes gpu/model.py's ModelArgs (and so generate.py) builds: BitNet b1.58 2B-4T
MODEL_ARGS = {"hidden_size": 2560, "num_hidden_layers": 30, "num_attention_heads": 20, "num_key_value_heads": 5,
              "vocab_size": 128256, "intermediate_size": 6912}  # fmt: skip

#: fused GPU weights per layer: (GPU name, the linear roles fused, in row order)
FUSED = (
    ("attention.wqkv", ("attn_q", "attn_k", "attn_v")),
    ("attention.wo", ("attn_output",)),
    ("feed_forward.w13", ("ffn_gate", "ffn_up")),
    ("feed_forward.w2", ("ffn_down",)),
)
#: GPU names of the norms by role
NORMS = {
    "attn_norm": "attention_norm",
    "ffn_norm": "ffn_norm",
    "attn_sub_norm": "attention.attn_sub_norm",
    "ffn_sub_norm": "feed_forward.ffn_sub_norm",
}
#: the per-layer order of gpu/convert_safetensors.py's dict (norms by role)
LAYER_ORDER = ("attention.wqkv", "attention.wo", "attn_norm", "ffn_norm", "attn_sub_norm", "ffn_sub_norm",
               "feed_forward.w13", "feed_forward.w2")  # fmt: skip
#: the linear roles whose rows are reordered, and the config dimension counting their heads
ROPE_HEADS = {"attn_q": "num_attention_heads", "attn_k": "num_key_value_heads"}
GLOBALS = (("tok_embeddings.weight", EMBEDDING), ("output.weight", LM_HEAD), ("norm.weight", FINAL_NORM))


@dataclass(frozen=True)
class Part:
    hf_name: str
    start: int  # first row in the fused weight
    rows: int
    heads: int | None  # rotate-half rows reordered per head, or None


@dataclass(frozen=True)
class GPUTensor:
    """One key of the GPU dict: a fused ternary weight (``parts``) or a float tensor (``source``)."""

    key: str
    shape: tuple[int, ...]  # a fused weight's codes [N, K]; a float tensor's own
    parts: tuple[Part, ...] = ()
    source: str = ""  # HF name of a float tensor

    @property
    def fused(self) -> bool:
        return bool(self.parts)

    @property
    def scale_key(self) -> str:
        return self.key[: -len("weight")] + "weight_scale"


def gpu_tensors(cfg: ModelConfig) -> list[GPUTensor]:
    """Every key of the GPU dict, in the converter's order. ValueError naming what the layout lacks."""
    family, shapes = cfg.family, cfg.expected_shapes()
    linears = {lin.gguf: lin.path for lin in family.linears}
    missing = [role for role in NORMS if family.norm(role) is None] + [
        role for _, roles in FUSED for role in roles if role not in linears
    ]
    if missing:
        raise ValueError(f"the W2A8 GPU model has {', '.join(missing)}, which the {family.key} family lacks")
    out = []
    for i in range(cfg.num_hidden_layers):
        for what in LAYER_ORDER:
            if what in NORMS:
                hf = f"model.layers.{i}.{family.norm(what).path}.weight"
                out.append(GPUTensor(f"layers.{i}.{NORMS[what]}.weight", shapes[hf], source=hf))
                continue
            roles = dict(FUSED)[what]
            parts, start = [], 0
            for role in roles:
                hf = f"model.layers.{i}.{linears[role]}.weight"
                rows, cols = shapes[hf]
                heads = getattr(cfg, ROPE_HEADS[role]) if role in ROPE_HEADS else None
                parts.append(Part(hf, start, rows, heads))
                start += rows
            out.append(GPUTensor(f"layers.{i}.{what}.weight", (start, cols), tuple(parts)))
    for key, hf in GLOBALS:
        source = EMBEDDING if hf == LM_HEAD and cfg.tie_word_embeddings else hf
        out.append(GPUTensor(key, shapes[source], source=source))
    return out


def packing_problem(t: GPUTensor) -> str | None:
    """Why a fused weight cannot be packed in 16 x 32 tiles, or None."""
    n, k = t.shape
    if n % TILE_ROWS or k % TILE_COLS:
        return f"{t.key} is {n} x {k}; the int2 tiles need rows a multiple of {TILE_ROWS} and columns of {TILE_COLS}"
    return None


# --- q/k rows -------------------------------------------------------------------------------------


def to_interleaved(rows: np.ndarray, heads: int) -> np.ndarray:
    """Rotate-half row order (HF) -> interleaved pairs, within each head."""
    n, k = rows.shape
    return rows.reshape(heads, 2, n // heads // 2, k).swapaxes(1, 2).reshape(n, k)


def from_interleaved(rows: np.ndarray, heads: int) -> np.ndarray:
    n, k = rows.shape
    return rows.reshape(heads, n // heads // 2, 2, k).swapaxes(1, 2).reshape(n, k)


# --- int2 packing ---------------------------------------------------------------------------------

#: row blocks packed or unpacked per step: bounds the temporaries to a few MB
_BLOCKS_PER_STEP = 16


def _tile_axes(rows: int, cols: int) -> tuple[int, ...]:
    # [N, K] as (bn, a, b, bk, g, i, q): row = 16 bn + 8 a + b, column = 32 bk + 16 g + 4 i + q
    return rows // TILE_ROWS, 2, 8, cols // TILE_COLS, 2, 4, 4


def encode_int2(codes: np.ndarray) -> np.ndarray:
    """int8 codes ``[N, K]`` -> the packed bytes ``uint8 [N, K/4]``."""
    n, k = codes.shape
    out = np.empty((n, k // 4), dtype=np.uint8)
    step = TILE_ROWS * _BLOCKS_PER_STEP
    shifts = (2 * np.arange(4, dtype=np.uint8)).reshape(4, 1)
    for r in range(0, n, step):
        block = codes[r : r + step]
        u = (block.astype(np.uint8) + np.uint8(2)).reshape(_tile_axes(*block.shape))
        # bytes in the order (bn, bk, a, g, b, q); the four codes of a byte are i = 0..3
        tiles = u.transpose(0, 3, 1, 4, 2, 5, 6)  # bn, bk, a, g, b, i, q
        packed = (tiles << shifts).sum(axis=5, dtype=np.uint8)  # disjoint bits: the sum is an OR
        out[r : r + step] = packed.reshape(block.shape[0], k // 4)
    return out


def decode_int2(packed: np.ndarray) -> np.ndarray:
    """Packed bytes ``uint8 [N, K/4]`` -> codes ``int8 [N, K]``; a field holding 0 decodes to -2
    (find it with :func:`first_invalid_field`)."""
    n, k4 = packed.shape
    k = k4 * 4
    out = np.empty((n, k), dtype=np.int8)
    step = TILE_ROWS * _BLOCKS_PER_STEP
    shifts = (2 * np.arange(4, dtype=np.uint8)).reshape(4, 1)
    for r in range(0, n, step):
        block = np.ascontiguousarray(packed[r : r + step])
        rows = block.shape[0]
        b = block.reshape(rows // TILE_ROWS, k // TILE_COLS, 2, 2, 8, 1, 4)  # bn, bk, a, g, b, -, q
        fields = ((b >> shifts) & np.uint8(3)).view(np.int8) - np.int8(2)  # bn, bk, a, g, b, i, q
        out[r : r + step] = fields.transpose(0, 2, 4, 1, 3, 5, 6).reshape(rows, k)
    return out


def first_invalid_field(packed: np.ndarray) -> tuple[int, int] | None:
    """(row, column) of the first code stored as field 0 (the packing writes 1, 2, 3 only), or None."""
    codes = decode_int2(packed)
    bad = np.flatnonzero(codes.reshape(-1) == -2)
    if not bad.size:
        return None
    row, col = divmod(int(bad[0]), codes.shape[1])
    return row, col


def row_blocks(start: int, rows: int) -> tuple[int, int]:
    """The packed rows ``[first, stop)`` of whole 16-row blocks covering rows ``[start, start + rows)``."""
    first = start - start % TILE_ROWS
    stop = -(-(start + rows) // TILE_ROWS) * TILE_ROWS
    return first, stop
