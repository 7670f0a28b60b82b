"""The weight layout the kernels read, prepared once at load time.

The kernels read the HF row-block layout as it is stored (``uint8 [R/4, C]``; byte ``[r, c]``
holds the codes of rows ``r, r + R/4, r + R/2, r + 3R/4`` at column ``c``, plus one, two bits
each, lowest first). That layout is already what a Triton kernel wants:

* one byte feeds four output rows, so a tile of ``[BLOCK_R, BLOCK_K]`` bytes yields four
  ``[BLOCK_R, BLOCK_K]`` planes with shifts and masks only, no reshapes or layout conversions;
* the reduction dimension (input features) is contiguous, so threads get 16-byte vector loads
  and each plane, transposed, is directly the K-major B operand of an int8 ``tl.dot``.

Repacking into int32 words of 16 codes along K was considered and not done: without inline
assembly (``dp4a``, which the interpreter cannot run) Triton still extracts and multiplies one
code at a time, so the words would only add a reshape. Preparing therefore means: check the
tensor, make it contiguous on its device, remember the shape, and optionally reject invalid codes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..ternary import VALUES_PER_BYTE, first_invalid_code


@dataclass(frozen=True)
class PreparedTernaryWeight:
    """A packed ternary weight ready for :func:`bitconvert.kernels.ternary_linear`.

    ``packed`` is contiguous ``uint8 [out_features / 4, in_features]`` in the HF row-block layout.
    """

    packed: torch.Tensor

    @property
    def out_features(self) -> int:
        return self.packed.shape[0] * VALUES_PER_BYTE

    @property
    def in_features(self) -> int:
        return self.packed.shape[1]

    @property
    def rows_per_plane(self) -> int:
        """Output rows per 2-bit plane: plane ``i`` holds rows ``[i * R/4, (i + 1) * R/4)``."""
        return self.packed.shape[0]

    @property
    def device(self) -> torch.device:
        return self.packed.device


def as_packed_tensor(packed: torch.Tensor | np.ndarray, device: torch.device | str | None = None) -> torch.Tensor:
    """Packed bytes as a 2-D uint8 torch tensor (numpy bytes, as :func:`bitconvert.ternary.pack_codes`
    and the readers give them, are shared where they can be), moved to ``device`` when one is given."""
    if isinstance(packed, np.ndarray):
        if packed.dtype != np.uint8 or packed.ndim != 2:
            raise ValueError(f"a packed ternary weight is 2-D uint8, got numpy {packed.dtype} {tuple(packed.shape)}")
        packed = np.ascontiguousarray(packed)
        packed = torch.from_numpy(packed if packed.flags.writeable else packed.copy())
    if packed.dtype != torch.uint8 or packed.dim() != 2:
        raise ValueError(f"a packed ternary weight is 2-D uint8, got {packed.dtype} {tuple(packed.shape)}")
    return packed if device is None else packed.to(device)


def prepare_weight(
    packed: torch.Tensor | np.ndarray | PreparedTernaryWeight,
    validate: bool = False,
    device: torch.device | str | None = None,
) -> PreparedTernaryWeight:
    """Wrap an HF-layout packed weight (``uint8 [R/4, C]``, torch or numpy) for the kernels, on ``device``
    when one is given (else where it is; numpy bytes: the CPU); cheap when already contiguous there.

    With ``validate=True`` a 2-bit field holding 3 (not a ternary code) raises ``ValueError``; that
    check reads the whole tensor and synchronizes with the device, so do it at load time only.
    Without it such a field decodes as +2, exactly as :func:`bitconvert.ternary.unpack_codes` does.
    """
    if isinstance(packed, PreparedTernaryWeight):
        prepared = packed if device is None else PreparedTernaryWeight(packed.packed.to(device))
    else:
        prepared = PreparedTernaryWeight(as_packed_tensor(packed, device).contiguous())
    if validate:
        bad = first_invalid_code(prepared.packed.cpu().numpy())
        if bad is not None:
            raise ValueError(f"packed weight holds the invalid 2-bit code 3 at (row, column) {bad}")
    return prepared
