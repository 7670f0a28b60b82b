"""bitnet.cpp's own tools, run from ../shared/peers in tests: its converter (every output type, TL1/TL2
with a kernel configuration), its kernel codegen, and its prebuilt runtime (``dump-logits``,
``llama-quantize``). Nothing of theirs is copied into the project: each runs as it is, in a
subprocess, with only the additions recorded below; an independent GGUF reader compares files.
"""

from __future__ import annotations

import mmap
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
PEERS = ROOT.parent / "shared" / "peers"
BITNET = PEERS / "bitnet-16da220"
LLAMA_CPP = PEERS / "llama.cpp-0c1e57098"
RUNTIME = PEERS / "bitnet.cpp-c82b5e6-bin"
CONVERTER = BITNET / "utils" / "convert-hf-to-gguf-bitnet.py"

#: bitnet.cpp's converter imports a gguf-py fork that is not here; it runs under llama.cpp's gguf-py
#: (0c1e57098) with these additions, none of which changes a tensor's values or bytes:
#:  A1 GGMLQuantizationType gains the fork's ids I2_S = 36, TL1 = 38, TL2 = 39;
#:  A2 GGML_QUANT_SIZES of the three = (1, 1): the writer then records the shape given (the logical
#:     [m, k]), as the fork's writer does (it never converts a byte shape);
#:  A3 MODEL_ARCH gains BITNET_B158 with upstream BITNET's tensor list, named "bitnet-b1.58" as the
#:     converter writes for every Bitnet/BitNet model, or ARCH_NAME where the test relabels it: the
#:     prebuilt runtime (c82b5e6, the converter's first release) knows 1bitLLM as "bitnet", which
#:     its release converter wrote and which HEAD renamed;
#:  A4 2B-4T's sub-norm names (self_attn.attn_sub_norm, mlp.ffn_sub_norm) in the sub-norm name maps;
#:  A5 a stand-in for llama.cpp's old ``convert`` module (LlamaHfVocab, permute: vocab path only);
#:  A6 set_vocab = the converter's own _set_vocab_gpt2 with pre-tokenizer "llama-bpe" (the test
#:     tokenizer's split; its hash is not in the converter's table, and the 1bitLLM path wants
#:     sentencepiece) -- the runtime loads no file without a tokenizer; or skipped (VOCAB "none");
#:  A7 (WRITER "fork") the fork writer's header: tensors named ``*_scale`` get no tensor-info entry and
#:     are not counted, and after each TL1/TL2 tensor the running offset skips pad(nbytes) + 32, the
#:     slot the scale fills (Eddie-Wang1120/llama.cpp merge-dev gguf-py/gguf/gguf_writer.py); emulated
#:     by showing upstream's header writers a filtered table. The data section is upstream's, unchanged.
#: The converter reads include/kernel_config.ini from its working directory: each run gets its own.
CONVERTER_DRIVER = r"""
import sys, types, enum, runpy, dataclasses
sys.path.insert(0, {gguf_py!r})
sys.modules["convert"] = types.SimpleNamespace(LlamaHfVocab=None, permute=None)                  # A5
import gguf
from gguf import constants as k

def extend(enum_cls, **more):
    members = {{m.name: m.value for m in enum_cls}}
    members.update(more)
    return enum.IntEnum(enum_cls.__name__, members)

k.GGMLQuantizationType = gguf.GGMLQuantizationType = extend(k.GGMLQuantizationType, I2_S=36, TL1=38, TL2=39)  # A1
for q in ("I2_S", "TL1", "TL2"):
    k.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[q]] = (1, 1)                                       # A2
k.MODEL_ARCH = gguf.MODEL_ARCH = extend(k.MODEL_ARCH, BITNET_B158=max(m.value for m in k.MODEL_ARCH) + 1)  # A3
k.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.BITNET_B158] = {arch_name!r}
k.MODEL_TENSORS[gguf.MODEL_ARCH.BITNET_B158] = k.MODEL_TENSORS[gguf.MODEL_ARCH.BITNET]
names = gguf.TensorNameMap.block_mappings_cfg                                                     # A4
names[k.MODEL_TENSOR.ATTN_SUB_NORM] += ("model.layers.{{bid}}.self_attn.attn_sub_norm",)
names[k.MODEL_TENSOR.FFN_SUB_NORM] += ("model.layers.{{bid}}.mlp.ffn_sub_norm",)
if {writer!r} == "fork":                                                                          # A7
    from gguf.gguf_writer import GGUFWriter
    def fork_view(self):
        view = []
        for table in self.tensors:
            shown = {{}}
            for name, info in table.items():
                if name.endswith("_scale"):
                    continue
                if int(info.dtype) in (38, 39):
                    info = dataclasses.replace(info, nbytes=info.nbytes + self.data_alignment)
                shown[name] = info
            view.append(shown)
        return view
    def with_fork_view(write):
        def wrapped(self, *a, **kw):
            saved, self.tensors = self.tensors, fork_view(self)
            try:
                return write(self, *a, **kw)
            finally:
                self.tensors = saved
        return wrapped
    GGUFWriter.write_header_to_file = with_fork_view(GGUFWriter.write_header_to_file)
    GGUFWriter.write_ti_data_to_file = with_fork_view(GGUFWriter.write_ti_data_to_file)
g = runpy.run_path({script!r}, run_name="bitnet_converter")
for cls in ("BitnetModel", "LlamaModel"):                                                         # A6
    g[cls].set_vocab = (lambda self: None) if {vocab!r} == "none" else (lambda self: self._set_vocab_gpt2())
g["Model"].get_vocab_base_pre = lambda self, tokenizer: "llama-bpe"
sys.argv = ["convert-hf-to-gguf-bitnet.py", *sys.argv[1:]]
g["main"].__globals__["args"] = g["parse_args"]()
g["main"]()
"""


def peer_env() -> dict:
    # the peers must not see this checkout on sys.path; torch's float32 mean (every scale of a
    # master) is taken with the same thread count as bitconvert's reproduction of it in this process
    return dict(os.environ, PYTHONPATH="")


def run_converter(
    model: Path,
    out: Path,
    outtype: str,
    *,
    kernel_ini: Path | None = None,
    writer: str = "fork",
    arch_name: str = "bitnet-b1.58",
    vocab: str = "gpt2",
) -> subprocess.CompletedProcess:
    """bitnet.cpp's convert-hf-to-gguf-bitnet.py on ``model`` (additions above); the completed process
    (a failure is the caller's to judge: the converter refuses some inputs on purpose)."""
    if not CONVERTER.is_file():
        pytest.skip(f"bitnet.cpp's converter not found at {CONVERTER}")
    work = out.parent / f"{out.stem}-converter"
    shutil.rmtree(work, ignore_errors=True)
    (work / "include").mkdir(parents=True)
    if kernel_ini is not None:
        shutil.copyfile(kernel_ini, work / "include" / "kernel_config.ini")
    driver = work / "driver.py"
    driver.write_text(CONVERTER_DRIVER.format(gguf_py=str(LLAMA_CPP / "gguf-py"), script=str(CONVERTER),
                                              arch_name=arch_name, writer=writer, vocab=vocab))  # fmt: skip
    cmd = [sys.executable, str(driver), str(model.resolve()), "--outfile", str(out.resolve()), "--outtype", outtype]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=work, env=peer_env(), check=False)


def convert_with_peer(model: Path, out: Path, outtype: str, **kw) -> Path:
    done = run_converter(model, out, outtype, **kw)
    if done.returncode:
        raise AssertionError(f"bitnet.cpp's converter failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return out


#: the codegen scripts know three models by name; to generate kernels for other shapes this one line
#: of their __main__ (the shape list lookup) is replaced in a scratch copy, so that --model names
#: shapes "MxK,MxK,..." (a built-in model name still works). Everything else runs as shipped.
CODEGEN_LINE = "kernel_shapes = ModelShapeDict[args.model]"
CODEGEN_STANDIN = (
    'kernel_shapes = ModelShapeDict.get(args.model) or [[int(v) for v in s.split("x")] for s in args.model.split(",")]'
)


def run_codegen(
    kind: str, shapes: list[tuple[int, int]], bm: list[int], bk: list[int], bmm: list[int], work: Path
) -> Path:
    """bitnet.cpp's utils/codegen_{kind}.py for ``shapes`` (m, k): the kernel_config.ini it writes."""
    script = BITNET / "utils" / f"codegen_{kind}.py"
    if not script.is_file():
        pytest.skip(f"bitnet.cpp's codegen not found at {script}")
    text = script.read_text(encoding="utf-8")
    assert text.count(CODEGEN_LINE) == 1, f"{script}: the shape lookup line changed; update the stand-in"
    shutil.rmtree(work, ignore_errors=True)
    (work / "utils").mkdir(parents=True)
    (work / "include").mkdir()
    (work / "utils" / script.name).write_text(text.replace(CODEGEN_LINE, CODEGEN_STANDIN), encoding="utf-8")
    args = ["--model", ",".join(f"{m}x{k}" for m, k in shapes)]
    for flag, values in (("--BM", bm), ("--BK", bk), ("--bm", bmm)):
        args += [flag, ",".join(map(str, values))]
    done = subprocess.run([sys.executable, f"utils/{script.name}", *args], capture_output=True, text=True,
                          timeout=120, cwd=work, env=peer_env(), check=False)  # fmt: skip
    if done.returncode:
        raise AssertionError(f"bitnet.cpp's codegen failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return work / "include" / "kernel_config.ini"


# --- an independent GGUF reader: what each tensor's bytes are, by the header's own offsets ---------

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


class Tensor(NamedTuple):
    type: int  # GGML type id
    dims: tuple[int, ...]  # ne, as the header lists them
    data: bytes  # from its offset to the next tensor's (padding, and a TL scale slot, included)
    offset: int  # absolute, in the file


def read_gguf_header(path: Path) -> dict:
    """(metadata, tensor name -> (type id, ne, absolute start, end)): each tensor runs from its offset to
    the next tensor's (padding, and a TL scale slot, included). The file is mapped, not read whole;
    bitconvert's parser is not used."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as b:
        pos = 0

        def take(fmt: str):
            nonlocal pos
            (v,) = struct.unpack_from(fmt, b, pos)
            pos += struct.calcsize(fmt)
            return v

        def value(t: int):
            nonlocal pos
            if t == 8:
                n = take("<Q")
                pos += n
                return bytes(b[pos - n : pos]).decode("utf-8", "replace")
            if t == 9:
                item, n = take("<I"), take("<Q")
                return [value(item) for _ in range(n)]
            return take(_SCALARS[t])

        assert b[:4] == b"GGUF", path
        pos = 8
        n_tensors, n_kv = take("<Q"), take("<Q")
        kv = {}
        for _ in range(n_kv):
            key = value(8)
            kv[key] = value(take("<I"))
        infos = []
        for _ in range(n_tensors):
            name = value(8)
            dims = tuple(take("<Q") for _ in range(take("<I")))
            infos.append((name, dims, take("<I"), take("<Q")))
        size = len(b)
    align = kv.get("general.alignment", 32)
    start = -(-pos // align) * align
    order = sorted(infos, key=lambda i: i[3])
    ends = [off for *_, off in order][1:] + [size - start]
    tensors = {name: (typ, dims, start + off, start + end) for (name, dims, typ, off), end in zip(order, ends)}
    return kv, tensors


def read_gguf(path: Path) -> tuple[dict, dict[str, Tensor]]:
    """(metadata, tensor name -> :class:`Tensor`) of a small GGUF (see :func:`read_gguf_header`)."""
    kv, tensors = read_gguf_header(path)
    raw = path.read_bytes()
    return kv, {n: Tensor(typ, dims, raw[a:b], a) for n, (typ, dims, a, b) in tensors.items()}


def tensor_data(path: Path) -> dict[str, tuple[int, tuple[int, ...], bytes]]:
    """Each tensor's type, dims and meaningful bytes: an I2_S tensor's codes and fp32 scale without
    the 28 bytes after it, which llama-quantize leaves uninitialised; other tensors' bytes unpadded."""
    out = {}
    for name, t in read_gguf(path)[1].items():
        n = 1
        for d in t.dims:
            n *= d
        size = {36: n // 4 + 4, 0: 4 * n, 1: 2 * n}.get(t.type, len(t.data))
        out[name] = (t.type, t.dims, t.data[:size])
    return out


def permute_qk_rows(src: Path, dst: Path, heads: dict[str, int], inverse: bool = False) -> Path:
    """A copy of an x86-layout I2_S GGUF whose attn_q / attn_k rows are reordered per head as
    llama.cpp's converter permutes them for `llama` (``inverse``: undone), metadata unchanged: a file
    in the other RoPE convention. ``heads``: "attn_q" / "attn_k" -> head count. (x86 I2_S keeps a
    row of k values in k/4 consecutive bytes when k is a multiple of 128.)"""
    raw = bytearray(src.read_bytes())
    for name, t in read_gguf(src)[1].items():
        kind = name.split(".")[-2]
        if kind not in heads:
            continue
        cols, rows = t.dims
        assert t.type == 36 and cols % 128 == 0, (name, t.type, t.dims)
        h = heads[kind]
        order = np.arange(rows).reshape(h, 2, rows // h // 2).swapaxes(1, 2).reshape(-1)
        block = np.frombuffer(bytes(raw[t.offset : t.offset + rows * cols // 4]), np.uint8).reshape(rows, cols // 4)
        moved = np.empty_like(block)
        if inverse:
            moved[order] = block
        else:
            moved = block[order]
        raw[t.offset : t.offset + rows * cols // 4] = moved.tobytes()
    dst.write_bytes(bytes(raw))
    return dst


def renamed_key(src: Path, dst: Path, key: str, new: str) -> Path:
    """A copy of a GGUF with one metadata key renamed in place (same length: no offset moves)."""
    assert len(key) == len(new)
    raw = src.read_bytes()
    encoded = struct.pack("<Q", len(key)) + key.encode()
    assert raw.count(encoded) == 1, key
    dst.write_bytes(raw.replace(encoded, struct.pack("<Q", len(new)) + new.encode()))
    return dst


# --- the prebuilt runtime -----------------------------------------------------------------------

DUMP_LOGITS = RUNTIME / "dump-logits"
QUANTIZE = RUNTIME / "llama-quantize"


def runtime_skip_reason() -> str | None:
    """Why bitnet.cpp's prebuilt runtime cannot run here, or None."""
    if not DUMP_LOGITS.is_file():
        return f"bitnet.cpp's prebuilt runtime not found at {DUMP_LOGITS}"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "cannot read /proc/cpuinfo to check for AVX2 and FMA, which the prebuilt runtime needs"
    missing = [f for f in ("avx2", "fma") if f" {f}" not in flags]
    if missing:
        return f"the CPU lacks {' and '.join(missing)}: bitnet.cpp's prebuilt I2_S kernels have no other path"
    return None


def _runtime_env() -> dict:
    return dict(os.environ, LD_LIBRARY_PATH=str(RUNTIME))


def dump_logits(gguf: Path, tokens: list[int], threads: int = 1) -> subprocess.CompletedProcess:
    """``dump-logits MODEL TOKENS OUT.npy -t N``: the logits land beside the model as ``.npy``."""
    out = gguf.with_suffix(f".t{threads}.npy")
    cmd = [str(DUMP_LOGITS), str(gguf), ",".join(map(str, tokens)), str(out), "-t", str(threads)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=_runtime_env(), check=False)


def runtime_logits(gguf: Path, tokens: list[int], threads: int = 1) -> np.ndarray:
    done = dump_logits(gguf, tokens, threads)
    if done.returncode:
        raise AssertionError(f"dump-logits failed on {gguf.name} ({done.returncode}):\n{done.stderr[-2000:]}")
    return np.load(gguf.with_suffix(f".t{threads}.npy"))


def llama_quantize(src: Path, dst: Path, type_name: str) -> Path:
    """bitnet.cpp's llama-quantize (paths absolute: a relative one starting with a digit is read as a type)."""
    cmd = [str(QUANTIZE), str(src.resolve()), str(dst.resolve()), type_name, "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_runtime_env(), check=False)
    if done.returncode:
        raise AssertionError(f"llama-quantize {type_name} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return dst
