"""The ``gguf`` reader: a GGUF file as a :class:`Checkpoint`, each tensor decoded when loaded.

TQ1_0, TQ2_0, I2_S, F16, BF16, F32 and Q8_0 tensors of the ``bitnet``, ``bitnet-b1.58``, ``bitnet-25``
and ``llama`` architectures, including llama.cpp-converted files whose scale was folded per block
(codes and the scale are recovered when every non-zero block has the same ``d``). Codecs are found
through the type table (``types.py``); bytes no encoder writes are refused, never decoded.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ...model.checkpoint import Checkpoint, TensorEntry, Value, check_tensor_set
from ...model.config import ModelConfig, QuantConfig, QuantMode
from ...errors import CheckpointError
from ...ternary.linear_class import LinearClass
from ...ternary.records import SCALES_KEY, decode_records
from .. import register_reader
from . import i2s_layouts, metadata, names, tokenizer, types
from .parser import GGUFFile, TensorInfo, is_gguf

if TYPE_CHECKING:  # opening reads the header only; torch where a tensor is loaded
    import torch

    from ...ternary.stored import StoredScale
    from ...ternary import TernaryScale

NAME = "gguf"
ORIGIN_KEYS = {
    metadata.Keys.General.NAME: "model_name",
    metadata.Keys.General.SOURCE_URL: "source_url",
    metadata.Keys.General.LICENSE: "license",
}


def _scale_hints(f: GGUFFile) -> dict[str, StoredScale]:
    raw = f.get(SCALES_KEY)
    if raw is None:
        return {}
    if not isinstance(raw, str):
        raise CheckpointError(f.path, f"{SCALES_KEY} is not a string")
    return {name: r.stored for name, r in decode_records(raw, f.path).items()}


def _scale(stored: torch.Tensor, hint: StoredScale | None) -> TernaryScale:
    """The stored magnitude as a scale; the recorded original when it rounds to exactly this value."""
    import torch

    from ...ternary.stored import StoredScale
    from ...ternary import TernaryScale

    stored = stored.reshape(1)
    recorded = hint.to_scale() if hint is not None else None
    if recorded is not None and torch.equal(recorded.magnitude(stored.dtype).reshape(1), stored):
        return recorded
    return TernaryScale(stored.clone(), LinearClass.AUTOBITLINEAR)


@dataclass
class _TensorSource:
    f: GGUFFile
    info: TensorInfo
    hf_name: str
    scale: TensorInfo | None  # the F32 [1] ``.scale`` tensor beside a weight, if any
    hint: StoredScale | None  # the exact scale recorded under bitconvert.ternary_scales
    heads: int | None  # set for llama-architecture q/k, whose rows are permuted on disk
    notes: list[str]
    i2s_layout: str = i2s_layouts.DEFAULT_LAYOUT  # the byte order of an I2_S tensor

    def fail(self, problem: str) -> CheckpointError:
        return CheckpointError(self.f.path, problem, self.info.name)

    def _tensor_scale(self) -> torch.Tensor | None:
        import torch

        if self.scale is None:
            return None
        s = self.f.read_float(self.scale.name).reshape(-1).float()
        if s.numel() != 1 or not bool(torch.isfinite(s).all()) or not bool(s[0] > 0):
            problem = f"scale must be one finite positive value, got {s.tolist()[:4]}"
            raise CheckpointError(self.f.path, problem, self.scale.name)
        return s

    def _check_positive(self, s: torch.Tensor) -> torch.Tensor:
        v = float(s.reshape(-1)[0])
        if not v > 0 or v == float("inf"):
            raise self.fail(f"{self.info.type_name} scale is {v}, not finite and positive")
        return s

    def _order(self, w: torch.Tensor) -> torch.Tensor:
        return names.unpermute_qk(w, self.heads) if self.heads else w

    def load_scale(self) -> TernaryScale:
        import torch

        t = self.info
        if t.ggml.flat:  # the scale follows the codes: read its four bytes alone
            raw = self.f.read_raw(t.name, t.nbytes - t.ggml.tail, 4)
            return _scale(self._check_positive(raw.view(torch.float32)), self.hint)
        s = self._tensor_scale()
        assert s is not None
        return _scale(s, self.hint)

    def code_counts(self) -> tuple[tuple[int, int, int, int], StoredScale] | None:
        """Counts of the codes and the scale :meth:`load` gives, off the bytes (``TensorEntry.load_code_counts``);
        None where a ``.scale`` tensor or blocks with different ``d`` leave it to loading."""
        from . import code_counts

        t = self.info
        raw = self.f.read_bytes(t.name)
        if t.ggml.flat:
            counts, word = code_counts.i2s_counts(raw, t.shape)
            return counts, code_counts.stored_scale(word, "F32", self.hint)
        counts, d = code_counts.block_counts(raw, t.ggml.id)
        if d is None:
            return None
        if self.scale is None:
            return counts, code_counts.stored_scale(d, "F16", self.hint)
        if self.scale.type != types.F32:
            return None
        s = self.f.read_bytes(self.scale.name)
        scale = code_counts.with_tensor_scale(d, s, self.hint)
        return None if scale is None else (counts, scale)

    def load(self) -> Value:
        import torch

        from ...ternary import TernaryWeight, recover_ternary

        if self.info.ggml.kind == "ternary":
            return self._load_codes()
        w = self.f.read_float(self.info.name)
        s = self._tensor_scale()
        if s is not None:
            if bool(((w == -1) | (w == 0) | (w == 1)).all()):
                return TernaryWeight(self._order(w.to(torch.int8)), _scale(s, self.hint))
            return self._order(w.float() * s)
        w = self._order(w)
        if self.hint is not None:
            hint = self.hint.to_scale()
            found = recover_ternary(w)
            if found is not None and torch.equal(found[1].reshape(1), hint.magnitude(w.dtype).reshape(1)):
                return TernaryWeight(found[0], hint)
        return w

    def _load_codes(self) -> Value:
        from ...ternary import TernaryWeight

        t = self.info
        raw = self.f.read_raw(t.name)
        problem = t.ggml.first_invalid(raw, t.shape) if t.ggml.first_invalid else None
        if problem is not None:
            raise self.fail(problem)
        if t.ggml.id == types.I2_S:  # three byte orders, one per bitnet.cpp build
            codes, d = i2s_layouts.decode(raw, t.shape, self.i2s_layout)
        else:
            codes, d = t.ggml.decode_codes(raw, t.shape)
        if t.ggml.flat:  # one scale for the whole tensor
            return TernaryWeight(self._order(codes), _scale(self._check_positive(d), self.hint))
        return self._from_blocks(codes, d)

    def _from_blocks(self, codes: torch.Tensor, d: torch.Tensor) -> Value:
        """Codes with a ``d`` per block: one scale when every block that holds a code agrees."""
        import torch

        from ...ternary import LinearClass, TernaryScale, TernaryWeight

        rows, cols = self.info.shape
        block = self.info.ggml.block
        s = self._tensor_scale()
        used = codes.reshape(rows, -1, block).ne(0).any(-1)  # a block of zeros says nothing of d
        dv = d[used]
        if dv.numel() == 0:
            dv = torch.ones(1, dtype=torch.float16)
        if bool((dv == dv[0]).all()) and bool(torch.isfinite(dv[0])) and bool(dv[0] > 0):
            codes = self._order(codes)
            if s is None:
                return TernaryWeight(codes, _scale(dv[:1].clone(), self.hint))
            if float(dv[0]) == 1.0:
                return TernaryWeight(codes, _scale(s, self.hint))
            # d and the tensor scale both apply: their product is exact in float64.
            return TernaryWeight(codes, TernaryScale(dv[:1].double() * s.double(), LinearClass.AUTOBITLINEAR))
        lo, hi = float(dv.float().min()), float(dv.float().max())
        self.notes.append(
            f"{self.hf_name}: {self.info.type_name} blocks carry different scales d ({lo:.6g} .. {hi:.6g}), so the "
            "tensor is no set of codes with one scale; loaded as float values"
        )
        w = (codes.float().reshape(rows, -1, block) * d.float().unsqueeze(-1)).reshape(rows, cols)
        return self._order(w * s if s is not None else w)


def _stored_label(t: TensorInfo, scale: TensorInfo | None, layout: str) -> str:
    if t.ggml.flat:
        return f"{t.type_name} ({layout}) + F32 scale in data"
    if scale is not None:
        return f"{t.type_name} + F32 scale tensor"
    return t.type_name + (" (scale in block d)" if t.ggml.kind == "ternary" else "")


class GGUFReader:
    name = NAME

    def detect(self, path: Path) -> bool:
        return path.is_file() and (path.suffix.lower() == ".gguf" or is_gguf(path))

    def read(self, path: Path, i2s_layout: str | None = None) -> Checkpoint:
        """``i2s_layout`` reads I2_S tensors in that byte layout whatever the file records (``verify
        --reproduce`` tries each on files that record none)."""
        f = GGUFFile(path)
        notes: list[str] = []
        arch, cfg, precision = metadata.read_config(f, "output.weight" not in f.tensors, notes)
        hints = _scale_hints(f)
        layout, recorded = (i2s_layout, True) if i2s_layout else _i2s_layout(f, notes)
        used: set[str] = set()
        entries: dict[str, TensorEntry] = {}
        expected = cfg.expected_shapes()
        for gname, hf in names.from_gguf_table(cfg).items():
            want = (hf, expected[hf])
            entries[hf] = _entry(f, arch, cfg, gname, want, hints.get(hf), used, notes, (layout, recorded))
        _check_unused(f, used, notes)
        info = _info(f, arch, hints)
        if any(t.type == types.I2_S for t in f.tensors.values()):
            info["i2s_layout"] = layout if recorded else f"{layout} (assumed: not recorded)"
        if precision:
            info["config_precision"] = precision
        if any(e.ternary for e in entries.values()):
            cfg.quantization = _held_quantization(cfg.quantization, info.get("linear_class", LinearClass.AUTOBITLINEAR))
        ckpt = Checkpoint(NAME, path, cfg, entries, [], notes, info)
        check_tensor_set(ckpt)
        ckpt.side_files = _tokenizer_side_files(f, ckpt, notes)
        return ckpt


def _entry(
    f: GGUFFile, arch: str, cfg: ModelConfig, gname: str, want: tuple[str, tuple[int, ...]],
    hint: StoredScale | None, used: set[str], notes: list[str], layout: tuple[str, bool],
) -> TensorEntry:  # fmt: skip
    """The entry of one weight the metadata implies (HF name, shape), checked against the file's tensor."""
    hf, expected = want
    t = f.tensors.get(gname)
    if t is None:
        raise CheckpointError(f.path, "missing tensor", gname)
    if t.shape != expected:
        problem = f"shape {list(t.shape)} does not match the metadata, which implies {list(expected)}"
        raise CheckpointError(f.path, problem, gname)
    used.add(gname)
    quantized = cfg.is_quantized_linear(hf)
    scale = f.tensors.get(names.scale_name(gname)) if quantized else None
    if scale is not None:
        used.add(scale.name)
    coded = t.ggml.kind == "ternary"
    if coded and not quantized:
        raise CheckpointError(f.path, f"{t.type_name} is only read for quantized linear weights", gname)
    src = _TensorSource(f, t, hf, scale, hint, names.permuted_heads(arch, hf, cfg), notes, layout[0])
    cheap_scale = t.ggml.flat or scale is not None
    if not (coded or scale is not None):
        dtype = t.ggml.dtype_name or "F32"
    elif hint is not None:
        dtype = hint.dtype_name
    else:  # the scale as stored: fp32 tensor or I2_S tail, else the fp16 block d
        dtype = "F32" if cheap_scale else "F16"
    # a float weight is its stored bytes unless a scale, a recorded ternary scale or q/k row order applies
    as_stored = t.ggml.dtype_name is not None and scale is None and hint is None and src.heads is None
    return TensorEntry(
        hf, expected, dtype, coded or scale is not None, str(f.path), src.load,
        src.load_scale if cheap_scale else None,
        _stored_label(t, scale, f"{layout[0]} layout" + ("" if layout[1] else " assumed")),
        load_stored=(lambda: f.read_bytes(gname)) if as_stored and not coded else None,
        load_code_counts=src.code_counts if coded else None,
    )  # fmt: skip


def _i2s_layout(f: GGUFFile, notes: list[str]) -> tuple[str, bool]:
    """The I2_S layout bitconvert recorded, else x86 (bitnet.cpp's default, the official files'); and
    whether it was recorded."""
    recorded = f.get(metadata.KEY_I2S_LAYOUT)
    if recorded is None:
        if any(t.type == types.I2_S for t in f.tensors.values()):
            notes.append(
                "I2_S layout not recorded in the file: read as x86 (bitnet.cpp's default build, the official files); "
                "the bytes cannot tell x86, x86-rows and arm apart"
            )
        return i2s_layouts.DEFAULT_LAYOUT, False
    if recorded not in i2s_layouts.LAYOUTS:
        problem = f"{metadata.KEY_I2S_LAYOUT} is {recorded!r}, not one of {', '.join(i2s_layouts.LAYOUTS)}"
        raise CheckpointError(f.path, problem)
    return recorded, True


def _held_quantization(recorded: QuantConfig | None, linear_class: LinearClass) -> QuantConfig:
    """The quantization config of what the file holds: stored codes and scales (offline), whatever the
    recorded source config said (a master's is online), keeping the modules it leaves unquantized."""
    src = recorded or QuantConfig()
    return QuantConfig(linear_class, QuantMode.OFFLINE, src.modules_to_not_convert, src.use_rms_norm, src.rms_norm_eps)


def _check_unused(f: GGUFFile, used: set[str], notes: list[str]) -> None:
    for gname in f.tensors:
        if gname in used:
            continue
        if gname.startswith("rope_freqs") or gname.endswith(".rope_freqs.weight"):
            notes.append(f"ignored tensor {gname} (RoPE factors are recomputed from the config)")
            continue
        raise CheckpointError(f.path, "unexpected tensor: the metadata implies no such weight", gname)


def _info(f: GGUFFile, arch: str, hints: dict[str, StoredScale]) -> dict:
    info = {
        "gguf_architecture": arch,
        "gguf_tokenizer": tokenizer.from_gguf(f),
        "gguf_file_type": f.get(metadata.Keys.General.FILE_TYPE),
        # GGUF's dtypes are its own conventions (F32 norms, the --embed-type); the model's are recorded
        "container_dtypes": True,
    }
    for key, field in ORIGIN_KEYS.items():
        value = f.get(key)
        if isinstance(value, str) and value:
            info[field] = value
    classes = {s.linear_class for s in hints.values()}
    if len(classes) == 1:
        info["linear_class"] = classes.pop()
    elif not hints:
        info["linear_class"] = LinearClass.AUTOBITLINEAR  # GGUF scales are magnitudes
    return info


def _tokenizer_side_files(f: GGUFFile, ckpt: Checkpoint, notes: list[str]) -> list[Path]:
    """tokenizer.json / tokenizer_config.json rebuilt in a folder that lives as long as ``ckpt``."""
    model = f.get(metadata.Keys.Tokenizer.MODEL)
    if model is None:
        return []
    folder = Path(tempfile.mkdtemp(prefix="bitconvert-gguf-tokenizer-"))
    weakref.finalize(ckpt, shutil.rmtree, folder, True)
    files = tokenizer.write_hf_tokenizer(f, folder)
    if not files:
        notes.append(f"tokenizer model {model!r} is not rebuilt as tokenizer.json (only gpt2 BPE is)")
    return files


register_reader(GGUFReader())
