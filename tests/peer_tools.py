"""Run the peers' own quantizers from ../shared/peers in tests: bitnet.cpp's ``quantize_i2_s``
(compiled here), llama.cpp's and bitnet.cpp's converters. Nothing of theirs is copied into the
project: the C++ function is cut out of its source file at test time, and the converters run as
they are, in a subprocess, with only the additions recorded below.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT.parent / "shared" / "peers"
BITNET = PEERS / "bitnet-16da220"
LLAMA_CPP = PEERS / "llama.cpp-0c1e57098"
MAD_SOURCE = BITNET / "src" / "ggml-bitnet-mad.cpp"

#: compiler flags per I2_S layout: the build-time choices of bitnet.cpp's ggml-bitnet-mad.cpp
BUILDS = {
    "x86": ["-mssse3", "-DACT_PARALLEL"],
    "x86-rows": ["-mssse3"],
    # the ARM branch of quantize_i2_s is plain C: compiled for x86 with the NEON macro and no x86 SIMD
    "arm": ["-mno-ssse3", "-mno-avx", "-D__ARM_NEON"],
}

HARNESS_MAIN = r"""
#include <cstdio>
#include <vector>
int main(int argc, char ** argv) {
    long long nrow = atoll(argv[1]), ncol = atoll(argv[2]);
    std::vector<float> src(nrow * ncol);
    if (fread(src.data(), sizeof(float), src.size(), stdin) != src.size()) return 2;
    std::vector<unsigned char> dst(nrow * ncol / 4 + 32, 0);
    size_t n = quantize_i2_s(src.data(), dst.data(), nrow, ncol, nullptr);
    fprintf(stderr, "%zu\n", n);
    fwrite(dst.data(), 1, dst.size(), stdout);
    return 0;
}
"""


def _cut_function(source: str, signature: str) -> str:
    start = source.index(signature)
    depth, i = 0, source.index("{", start)
    while True:
        c = source[i]
        depth += c == "{"
        depth -= c == "}"
        i += 1
        if depth == 0:
            return source[start:i]


def _qk_define_block(source: str) -> str:
    """The ``#if ... #define QK_I2_S ... #endif`` block that picks the block size per build."""
    m = re.search(r"#if [^\n]*\n#define QK_I2_S 128\n#elif [^\n]*\n#define QK_I2_S 64\n#endif\n", source)
    assert m, f"{MAD_SOURCE}: QK_I2_S definitions not found"
    return m.group(0)


def harness_source() -> str:
    source = MAD_SOURCE.read_text(encoding="utf-8")
    prelude = textwrap.dedent(
        """\
        #include <cstdint>
        #include <cstdlib>
        #include <cstring>
        #include <cmath>
        #include <cassert>
        // stand-ins for the two ggml names quantize_i2_s uses (only for its return value)
        enum { GGML_TYPE_I2_S = 36 };
        static size_t ggml_row_size(int, int64_t n_per_row) { return (size_t) n_per_row; }
        """
    )
    return prelude + _qk_define_block(source) + _cut_function(source, "size_t quantize_i2_s(") + HARNESS_MAIN


def compile_quantize_i2_s(tmp: Path, layout: str) -> Path:
    """bitnet.cpp's quantize_i2_s, built as ``layout``'s build would build it; skips without g++."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler (g++) to build bitnet.cpp's quantize_i2_s")
    if not MAD_SOURCE.is_file():
        pytest.skip(f"bitnet.cpp source not found at {MAD_SOURCE}")
    src = tmp / "quantize_i2_s_harness.cpp"
    src.write_text(harness_source(), encoding="utf-8")
    exe = tmp / f"quantize_i2_s_{layout}"
    subprocess.run(
        [cxx, "-O1", *BUILDS[layout], "-o", str(exe), str(src)], check=True, capture_output=True, timeout=120
    )
    return exe


def run_quantize_i2_s(exe: Path, values: np.ndarray) -> bytes:
    """The bytes quantize_i2_s writes for a float32 ``[rows, cols]`` tensor (codes, scale, zero tail)."""
    rows, cols = values.shape
    done = subprocess.run(
        [str(exe), str(rows), str(cols)], input=np.ascontiguousarray(values, dtype="<f4").tobytes(),
        capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    return done.stdout


# --- the converters ------------------------------------------------------------------------------

#: llama.cpp's converter reads the 1bitLLM vocab with sentencepiece, and does not know our test
#: models' BPE pre-tokenizer by its hash: its set_vocab is pointed at its own BPE reader with the
#: pre-tokenizer named (llama-bpe, the split our test tokenizer uses). Tensors are untouched.
LLAMA_CPP_DRIVER = r"""
import sys
sys.path.insert(0, {peer!r})
sys.path.insert(0, {peer!r} + "/gguf-py")
import convert_hf_to_gguf as c
from conversion import bitnet
bitnet.BitnetModel.get_vocab_base_pre = lambda self, tokenizer: "llama-bpe"
bitnet.BitnetModel.set_vocab = lambda self: self._set_vocab_gpt2()
sys.argv = ["convert_hf_to_gguf.py", *sys.argv[1:]]
c.main()
"""


def run_llama_cpp_converter(model: Path, out: Path, outtype: str) -> Path:
    if not (LLAMA_CPP / "convert_hf_to_gguf.py").is_file():
        pytest.skip(f"llama.cpp's converter not found at {LLAMA_CPP}")
    driver = out.parent / "llama_cpp_driver.py"
    driver.write_text(LLAMA_CPP_DRIVER.format(peer=str(LLAMA_CPP)), encoding="utf-8")
    cmd = [sys.executable, str(driver), str(model), "--outfile", str(out), "--outtype", outtype, "--no-lazy"]
    _run(cmd, "llama.cpp's convert_hf_to_gguf.py")
    return out


#: bitnet.cpp's converter imports a gguf-py fork; this directory's llama.cpp gguf-py runs it with
#: these additions only: the I2_S/TL1/TL2 type ids (36, 38, 39; the converter writes I2_S bytes
#: itself), the bitnet-b1.58 architecture (tensor names as upstream's bitnet, plus the 2B-4T
#: sub-norm names attn_sub_norm / ffn_sub_norm), a stand-in for
#: llama.cpp's old ``convert`` module (its two names are used by LlamaModel only), and its
#: set_vocab skipped (it wants sentencepiece or a known BPE pre-tokenizer; no effect on tensors).
BITNET_DRIVER = r"""
import sys, types, enum, runpy
sys.path.insert(0, {peer!r} + "/gguf-py")
sys.modules["convert"] = types.SimpleNamespace(LlamaHfVocab=None, permute=None)
import gguf
from gguf import constants as k

def extend(enum_cls, **more):
    members = {{m.name: m.value for m in enum_cls}}
    members.update(more)
    return enum.IntEnum(enum_cls.__name__, members)

k.GGMLQuantizationType = gguf.GGMLQuantizationType = extend(k.GGMLQuantizationType, I2_S=36, TL1=38, TL2=39)
k.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.I2_S] = (1, 1)  # shape given in values; bytes written as they are
k.MODEL_ARCH = gguf.MODEL_ARCH = extend(k.MODEL_ARCH, BITNET_B158=max(m.value for m in k.MODEL_ARCH) + 1)
k.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.BITNET_B158] = "bitnet-b1.58"
k.MODEL_TENSORS[gguf.MODEL_ARCH.BITNET_B158] = k.MODEL_TENSORS[gguf.MODEL_ARCH.BITNET]
names = gguf.TensorNameMap.block_mappings_cfg
names[k.MODEL_TENSOR.ATTN_SUB_NORM] += ("model.layers.{{bid}}.self_attn.attn_sub_norm",)
names[k.MODEL_TENSOR.FFN_SUB_NORM] += ("model.layers.{{bid}}.mlp.ffn_sub_norm",)
g = runpy.run_path({script!r}, run_name="bitnet_converter")
g["BitnetModel"].set_vocab = lambda self: None
sys.argv = ["convert-hf-to-gguf-bitnet.py", *sys.argv[1:]]
g["main"].__globals__["args"] = g["parse_args"]()
g["main"]()
"""


def run_bitnet_converter(model: Path, out: Path, outtype: str = "i2_s") -> Path:
    script = BITNET / "utils" / "convert-hf-to-gguf-bitnet.py"
    if not script.is_file():
        pytest.skip(f"bitnet.cpp's converter not found at {script}")
    driver = out.parent / "bitnet_driver.py"
    driver.write_text(BITNET_DRIVER.format(peer=str(LLAMA_CPP), script=str(script)), encoding="utf-8")
    _run(
        [sys.executable, str(driver), str(model), "--outfile", str(out), "--outtype", outtype], "bitnet.cpp's converter"
    )
    return out


def _run(cmd: list[str], who: str) -> None:
    env = dict(os.environ, PYTHONPATH="")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, check=False)
    if done.returncode:
        raise AssertionError(f"{who} failed ({done.returncode}):\n{done.stderr[-3000:]}")


#: bitnet.cpp's embedding converter (``utils/convert-bitnet-embedding-to-gguf.py``) imports gguf-py;
#: this directory's llama.cpp gguf-py runs it with these additions only:
#: 1. gguf-py itself first on sys.path (the converter looks for ``utils/gguf-py``, which BitNet lacks);
#: 2. the I2_S type id 36 (bitnet.cpp's fork of ggml; upstream has no type 36);
#: 3. GGML_QUANT_SIZES[I2_S] = (1, 1): the converter passes the weight's value shape with its uint8
#:    bytes, and only (1, 1) leaves that shape unchanged (the byte count comes from the buffer);
#: 4. where its pre-tokenizer table does not know the tokenizer's hash (every test tokenizer: the
#:    table holds the published ones'), the pre-tokenizer is named instead of raising ("qwen2" for
#:    the Qwen3 split regex). Known hashes keep their answer; the Gemma3 path never asks.
#: Values, layout, tensor order and every other key are the converter's own.
BITNET_EMBEDDING_DRIVER = r"""
import enum, importlib.util, sys
sys.path.insert(0, {gguf_py!r})
import gguf
from gguf import constants as k
members = {{m.name: m.value for m in k.GGMLQuantizationType}}
members["I2_S"] = 36
k.GGMLQuantizationType = gguf.GGMLQuantizationType = enum.IntEnum("GGMLQuantizationType", members)
k.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.I2_S] = (1, 1)
spec = importlib.util.spec_from_file_location("bitnet_embedding_converter", {script!r})
conv = importlib.util.module_from_spec(spec)
spec.loader.exec_module(conv)
known = conv.get_vocab_base_pre
def named(tokenizer, arch):
    try:
        return known(tokenizer, arch)
    except NotImplementedError:
        if {pre!r} is None:
            raise
        return {pre!r}
conv.get_vocab_base_pre = named
sys.argv = ["convert-bitnet-embedding-to-gguf.py", *sys.argv[1:]]
conv.main()
"""
BITNET_EMBEDDING_CONVERTER = BITNET / "utils" / "convert-bitnet-embedding-to-gguf.py"


def run_bitnet_embedding_converter(model: Path, out: Path, outtype: str = "i2_s", pre: str | None = "qwen2") -> Path:
    """Microsoft's BitNet Embeddings converter on ``model`` (``--outtype i2_s|f16|f32``), into ``out``
    (``pre=None``: without addition 4, an unknown pre-tokenizer fails as in the converter itself)."""
    if not BITNET_EMBEDDING_CONVERTER.is_file():
        pytest.skip(f"bitnet.cpp's embedding converter not found at {BITNET_EMBEDDING_CONVERTER}")
    driver = out.parent / "bitnet_embedding_driver.py"
    driver.write_text(
        BITNET_EMBEDDING_DRIVER.format(gguf_py=str(LLAMA_CPP / "gguf-py"), script=str(BITNET_EMBEDDING_CONVERTER),
                                       pre=pre),
        encoding="utf-8",
    )  # fmt: skip
    cmd = [sys.executable, str(driver), str(model), "--outfile", str(out), "--outtype", outtype]
    _run(cmd, "bitnet.cpp's embedding converter")
    return out
