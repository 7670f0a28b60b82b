"""Element types by their safetensors names (``"BF16"``, ``"U8"``) and dense values in numpy, no torch.

Every format names its element types; conversion works on the stored values themselves. numpy has
no bfloat16, so a :class:`Dense` value keeps bf16 as its 16-bit words (``uint16``) and every other
type as numpy's own. Rounding between float types is the one torch's ``.to()`` does (round to
nearest even; 64-bit floats reach a 16-bit type through float32, as torch's casts do), so a value
converted here has the bits torch would give it. torch is imported only by :meth:`Dense.torch` and
:func:`torch_dtype`, which the runtime uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

#: safetensors dtype name -> (numpy dtype holding one stored value, torch attribute name)
_TYPES: dict[str, tuple[str, str]] = {
    "BOOL": ("?", "bool"),
    "U8": ("<u1", "uint8"),
    "I8": ("<i1", "int8"),
    "I16": ("<i2", "int16"),
    "I32": ("<i4", "int32"),
    "I64": ("<i8", "int64"),
    "F16": ("<f2", "float16"),
    "BF16": ("<u2", "bfloat16"),  # the words; see Dense
    "F32": ("<f4", "float32"),
    "F64": ("<f8", "float64"),
}
NAMES = tuple(_TYPES)
FLOAT_NAMES = ("F16", "BF16", "F32", "F64")
#: float dtypes as config.json names them (``torch_dtype``)
CONFIG_NAMES = {"float16": "F16", "bfloat16": "BF16", "float32": "F32", "float64": "F64"}

#: per float dtype: the unsigned word holding one value, and its exponent bits (all set: inf or nan)
EXPONENT_BITS: dict[str, tuple[type, int]] = {
    "BF16": (np.uint16, 0x7F80),
    "F16": (np.uint16, 0x7C00),
    "F32": (np.uint32, 0x7F800000),
    "F64": (np.uint64, 0x7FF0000000000000),
}

#: values converted per step: small enough to stay in cache
_CHUNK = 1 << 16


def itemsize(name: str) -> int:
    return np.dtype(_TYPES[name][0]).itemsize


def numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype of a stored value (for BF16, its uint16 word)."""
    return np.dtype(_TYPES[name][0])


def torch_name(name: str) -> str:
    """What ``str()`` of the torch dtype says (``"torch.bfloat16"``), for messages, without torch."""
    return f"torch.{_TYPES[name][1]}"


def config_name(name: str) -> str:
    """The config.json name of a float dtype (``"bfloat16"``)."""
    return _TYPES[name][1]


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a safetensors dtype name (imports torch: the runtime's side only)."""
    return _torch_tables()[0][name]


def dtype_name(dtype: torch.dtype) -> str:
    """The safetensors name of a torch dtype; KeyError for one safetensors cannot hold."""
    return _torch_tables()[1][dtype]


@lru_cache(maxsize=1)
def _torch_tables() -> tuple[dict[str, torch.dtype], dict[torch.dtype, str]]:
    import torch

    by_name = {name: getattr(torch, attr) for name, (_, attr) in _TYPES.items()}
    return by_name, {v: k for k, v in by_name.items()}


# --- float words ------------------------------------------------------------------------------


def bf16_to_f32(words: np.ndarray) -> np.ndarray:
    """bf16 words -> float32 values, exactly (the word is the float32's high half)."""
    return (np.asarray(words, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(values: np.ndarray) -> np.ndarray:
    """float32 values -> bf16 words, rounded to nearest even (every NaN becomes 0xFFFF, as torch's vectorised cast makes it), as torch rounds."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    out = np.empty(bits.shape, dtype=np.uint16)
    flat_bits, flat_out = bits.reshape(-1), out.reshape(-1)
    tmp = np.empty(min(_CHUNK, flat_bits.size), dtype=np.uint32)
    for a in range(0, flat_bits.size, _CHUNK):
        b = flat_bits[a : a + _CHUNK]
        t = tmp[: b.size]
        np.right_shift(b, 16, out=t)
        np.bitwise_and(t, 1, out=t)
        np.add(t, 0x7FFF, out=t)
        np.add(t, b, out=t)  # wraps only for NaN payloads, which are replaced below
        np.right_shift(t, 16, out=t)
        flat_out[a : a + b.size] = t
        nan = (b & 0x7FFFFFFF) > 0x7F800000
        if nan.any():
            flat_out[a : a + b.size][nan] = 0xFFFF
    return out


def float_bits(value: float, name: str) -> int:
    """The word storing ``value`` in float dtype ``name``, rounded as torch's ``.to(dtype)`` does."""
    with np.errstate(over="ignore"):
        if name == "F64":
            return int(np.float64(value).view(np.uint64))
        f32 = np.float32(value)
        if name == "F32":
            return int(f32.view(np.uint32))
        if name == "F16":
            return int(np.float16(f32).view(np.uint16))
    return int(f32_to_bf16(np.array([f32]))[0])


def value_item(data: bytes, name: str) -> float:
    """One stored value of dtype ``name`` (its raw bytes) as a Python float, exactly."""
    if name == "BF16":
        return float(np.frombuffer(b"\0\0" + data, dtype="<f4")[0])
    return float(np.frombuffer(data, dtype=_TYPES[name][0])[0])


def non_finite_count(raw: np.ndarray, name: str) -> int:
    """How many values of float dtype ``name`` in the bytes ``raw`` are inf or nan (exponent bits)."""
    word, mask = EXPONENT_BITS[name]
    bits = np.ascontiguousarray(raw).reshape(-1).view(np.uint8).view(word)
    exp = word(mask)
    tmp = np.empty(min(_CHUNK, bits.size), dtype=word)
    bad = 0
    for start in range(0, bits.size, _CHUNK):
        t = tmp[: min(_CHUNK, bits.size - start)]
        np.bitwise_and(bits[start : start + _CHUNK], exp, out=t)
        bad += int(np.count_nonzero(t == exp))
    return bad


# --- dense values -----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Dense:
    """A tensor's values as stored: ``data`` holds them in numpy (bf16 as its uint16 words), shaped."""

    data: np.ndarray
    dtype_name: str

    def __post_init__(self) -> None:
        if self.data.dtype != numpy_dtype(self.dtype_name):
            raise TypeError(f"{self.dtype_name} values held as numpy {self.data.dtype}")

    @classmethod
    def from_bytes(cls, raw: np.ndarray | bytes | memoryview, name: str, shape: tuple[int, ...]) -> "Dense":
        """The values in ``raw`` (little-endian, row-major): a view, no copy."""
        return cls(np.frombuffer(raw, dtype=numpy_dtype(name)).reshape(shape), name)

    @classmethod
    def from_float32(cls, values: np.ndarray, name: str) -> "Dense":
        """float32 ``values`` in dtype ``name``, rounded as torch does."""
        return Dense.of(np.asarray(values, dtype=np.float32)).to(name)

    @classmethod
    def of(cls, values: np.ndarray) -> "Dense":
        """A numpy float or integer array as a Dense value (bf16 cannot be told from uint16: use the constructor)."""
        names = {np.dtype(v[0]): k for k, v in _TYPES.items() if k != "BF16"}
        values = np.asarray(values)
        return cls(values.astype(values.dtype.newbyteorder("<"), copy=False), names[values.dtype.newbyteorder("<")])

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def size(self) -> int:
        return int(self.data.size)

    @property
    def is_float(self) -> bool:
        return self.dtype_name in FLOAT_NAMES

    def raw(self) -> np.ndarray:
        """The stored bytes, flat uint8 (a view where the data is contiguous)."""
        return np.ascontiguousarray(self.data).reshape(-1).view(np.uint8)

    def reshape(self, *shape: int) -> "Dense":
        return Dense(self.data.reshape(*shape), self.dtype_name)

    def rows(self, start: int, stop: int) -> "Dense":
        """Rows ``start:stop`` of the first axis (a view)."""
        return Dense(self.data[start:stop], self.dtype_name)

    def float32(self) -> np.ndarray:
        """The values as float32 (exact for 16-bit floats; float64 rounds to nearest even)."""
        if self.dtype_name == "BF16":
            return bf16_to_f32(self.data)
        return self.data.astype(np.float32)

    def float64(self) -> np.ndarray:
        if self.dtype_name == "BF16":
            return bf16_to_f32(self.data).astype(np.float64)
        return self.data.astype(np.float64)

    def to(self, name: str) -> "Dense":
        """These values in dtype ``name``, rounded as torch's ``.to()`` rounds (self when already so)."""
        if name == self.dtype_name:
            return self
        if name == "F64":
            return Dense(self.float64(), name)
        with np.errstate(over="ignore", invalid="ignore"):
            f32 = self.float32()
            if name == "F32":
                return Dense(f32, name)
            if name == "BF16":
                return Dense(f32_to_bf16(f32), name)
            if name in FLOAT_NAMES:
                return Dense(f32.astype(numpy_dtype(name)), name)
            return Dense(self.data.astype(numpy_dtype(name)), name)

    def torch(self) -> torch.Tensor:
        """A torch tensor sharing these values (imports torch; the runtime's side)."""
        import torch

        data = np.ascontiguousarray(self.data)
        if not data.flags.writeable:
            data = data.copy()
        t = torch.from_numpy(data)
        return t.view(torch.bfloat16) if self.dtype_name == "BF16" else t

    @classmethod
    def from_torch(cls, t: torch.Tensor) -> "Dense":
        """A CPU tensor's values (a copy-free view where it is contiguous)."""
        import torch

        name = dtype_name(t.dtype)
        t = t.detach().cpu().contiguous()
        if name == "BF16":
            return cls(t.view(torch.int16).numpy().view(np.uint16), name)
        return cls(t.numpy(), name)
