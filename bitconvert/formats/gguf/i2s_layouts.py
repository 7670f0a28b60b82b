"""The three byte layouts of bitnet.cpp's I2_S type, chosen when bitnet.cpp is built.

bitnet.cpp's ``quantize_i2_s`` packs four 2-bit codes per byte (stored code = t + 1, so 0, 1, 2
mean -1, 0, +1), highest bits first, in one of three orders; nothing in a file says which:

- ``x86`` (x86 build with ``ACT_PARALLEL``, the default and what official files hold): the
  flattened tensor in 128-value blocks of 32 bytes; value ``j`` of a block goes to byte ``j % 32``
  at shift ``6 - 2 * (j // 32)``.
- ``x86-rows`` (x86 build without ``ACT_PARALLEL``): rows in groups of four; column ``c`` of the
  group's rows ``4g .. 4g+3`` shares byte ``g * cols + c``, row ``4g`` in the highest bits.
- ``arm`` (ARM NEON build, ``QK_I2_S = 64``): 64-value blocks of 16 bytes; value ``j`` of a block
  goes to byte ``j % 16`` at shift ``6 - 2 * (j // 16)``.

Every layout is followed by the fp32 scale and zero padding to 32 bytes. Pure functions on
tensors, no files. Decoders read a stored code 3 (invalid) as 2; callers reject it first.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the reader names the layouts while planning; torch only to encode or decode
    import torch

    from .codecs import CodeRows

LAYOUTS = ("x86", "x86-rows", "arm")
DEFAULT_LAYOUT = "x86"
#: values per block of the two block layouts; x86-rows needs rows in fours instead
BLOCK = {"x86": 128, "arm": 64}
TAIL = 32  # bytes after the codes: the fp32 scale, then padding
_SHIFTS = (6, 4, 2, 0)


def layout_problem(layout: str, shape: tuple[int, ...]) -> str | None:
    """Why a tensor of ``shape`` cannot be stored in ``layout``, or None when it can."""
    if layout not in LAYOUTS:
        return f"unknown I2_S layout {layout!r} (known: {', '.join(LAYOUTS)})"
    n = math.prod(shape)
    if layout == "x86-rows":
        rows = math.prod(shape[:-1]) if len(shape) > 1 else 1
        return None if rows % 4 == 0 else f"{rows} rows are not a multiple of 4, which layout x86-rows needs"
    block = BLOCK[layout]
    return None if n % block == 0 else f"{n} values are not a multiple of {block}, which layout {layout} needs"


def _planes(codes: torch.Tensor, layout: str) -> torch.Tensor:
    """Stored codes (t + 1, uint8) arranged ``[4, bytes]``: plane i goes to shift ``6 - 2i``."""
    import torch

    stored = (codes.to(torch.int8) + 1).view(torch.uint8)
    if layout == "x86-rows":
        cols = stored.shape[-1]
        groups = stored.reshape(-1, 4, cols)  # [group, row in group, col]
        return groups.transpose(0, 1).reshape(4, -1)
    block = BLOCK[layout]
    lanes = block // 4
    blocks = stored.reshape(-1, 4, lanes)  # [block, plane, lane]
    return blocks.transpose(0, 1).reshape(4, -1)


def encode(codes: torch.Tensor, scale: float, layout: str = DEFAULT_LAYOUT) -> torch.Tensor:
    """int8 codes in {-1, 0, 1} (``[rows, cols]``) and the fp32 magnitude -> uint8 ``[numel/4 + 32]``."""
    import torch

    problem = layout_problem(layout, tuple(codes.shape))
    if problem:
        raise ValueError(problem)
    n = codes.numel()
    planes = _planes(codes, layout)
    packed = planes[0] << 6
    for i in (1, 2, 3):
        packed |= planes[i] << _SHIFTS[i]
    out = torch.zeros(n // 4 + TAIL, dtype=torch.uint8)
    out[: n // 4] = packed
    out[n // 4 : n // 4 + 4] = torch.tensor([scale], dtype=torch.float32).view(torch.uint8)
    return out


def encodes_rows(layout: str, cols: int) -> bool:
    """Whether :func:`encode_rows` serves ``layout`` for rows of ``cols`` values (blocks never span rows)."""
    return layout in BLOCK and cols % BLOCK[layout] == 0


def encode_rows(code_rows: CodeRows, rows: int, cols: int, scale: float, layout: str) -> torch.Tensor:
    """:func:`encode` of codes handed out a few rows at a time (see codecs.CodeRows), for a block
    layout whose blocks tile each row (:func:`encodes_rows`): the same bytes."""
    import numpy as np
    import torch

    from . import codecs

    if not encodes_rows(layout, cols):
        raise ValueError(f"layout {layout} cannot be encoded by rows of {cols} values")
    n = rows * cols
    out = np.zeros(n // 4 + TAIL, dtype=np.uint8)
    packed = out[: n // 4].reshape(rows, cols // 4)
    codecs.encode_planes_rows(code_rows, rows, cols, BLOCK[layout], _SHIFTS, lambda r0, r1: packed[r0:r1])
    out[n // 4 : n // 4 + 4] = np.frombuffer(np.float32(scale).tobytes(), dtype=np.uint8)
    return torch.from_numpy(out)


def decode(
    raw: torch.Tensor, shape: tuple[int, ...], layout: str = DEFAULT_LAYOUT
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 ``[numel/4 + 32]`` -> (int8 codes of ``shape``, the fp32 scale as a one-element tensor).

    Only the four scale bytes of the tail are read: writers differ in what follows them.
    """
    import torch

    problem = layout_problem(layout, shape)
    if problem:
        raise ValueError(problem)
    n = math.prod(shape)
    packed = raw[: n // 4]
    planes = torch.stack([(packed >> s) & 3 for s in _SHIFTS])  # [4, bytes]
    if layout == "x86-rows":
        cols = shape[-1]
        stored = planes.reshape(4, -1, cols).transpose(0, 1)
    else:
        lanes = BLOCK[layout] // 4
        stored = planes.reshape(4, -1, lanes).transpose(0, 1)
    codes = stored.reshape(shape).to(torch.int8) - 1
    scale = raw[n // 4 : n // 4 + 4].clone().view(torch.float32).reshape(1)
    return codes, scale


def indistinguishable(raw: torch.Tensor, shape: tuple[int, ...]) -> bool:
    """True when every layout that fits ``shape`` decodes these bytes to the same codes.

    Then the layout does not matter (an all-zero or constant tensor, for instance); otherwise the
    bytes alone cannot tell which layout wrote them: every 2-bit field is a valid code in each.
    """
    import torch

    decoded = [decode(raw, shape, lay)[0] for lay in LAYOUTS if layout_problem(lay, shape) is None]
    return all(torch.equal(decoded[0], d) for d in decoded[1:])
