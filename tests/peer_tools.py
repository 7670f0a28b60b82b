"""Run the peers' own quantizers from ../shared/peers in tests: bitnet.cpp's ``quantize_i2_s``
(compiled here), llama.cpp's and bitnet.cpp's converters. Nothing of theirs is copied into the
project: the C++ function is cut out of its source file at test time, and the converters run as
they are, in a subprocess, with only the additions recorded below.
"""

from __future__ import annotations

import json
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


# --- llama.cpp itself (llama-cpp-python) -------------------------------------------------------------

LLAMA_CPP_WHEEL = "pip install --find-links ../shared/wheels llama-cpp-python==0.3.36"


def llama_cpp_logits(path: Path, tokens: list[int]):
    """llama.cpp's logits (a float32 torch tensor, one row per token) for ``tokens`` run through ``path``."""
    import torch

    llama_cpp = pytest.importorskip("llama_cpp", reason=f"llama-cpp-python is not installed ({LLAMA_CPP_WHEEL})")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, logits_all=True, verbose=False, n_threads=2)
    try:
        llm.eval(tokens)
        return torch.tensor(np.array(llm.scores[: len(tokens)]), dtype=torch.float32)
    finally:
        llm.close()
# --- microsoft/BitNet gpu/: the W2A8 checkpoint ---------------------------------------------------

#: gpu/convert_safetensors.py then gpu/convert_checkpoint.py, both run as they are, with:
#: G1 convert_safetensors knows only transformer_configs["2B"] (30 layers): an entry with the test
#:    master's sizes is added and its convert_back called with the arguments its __main__ passes;
#: G2 convert_checkpoint imports gpu/model.py, which imports xformers (CUDA only; not installable
#:    here) and loads bitnet_kernels/libbitnet.so (a CUDA build) with ctypes.CDLL at import: modules
#:    standing in for xformers.ops / xformers.ops.fmha.attn_bias (names only, unusable), and a CDLL
#:    that returns a dummy for that one library; nothing of either is called by the conversion;
#: G3 only when the master's widths are not 2B-4T's: model.ModelArgs() (whose defaults are 2B-4T's,
#:    and which convert_checkpoint uses to split wqkv and w13) built with the master's widths.
GPU_DRIVER = r"""
import ctypes, json, runpy, sys, types
gpu, safetensors_file, out_dir, sizes = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
sys.path.insert(0, gpu)
import convert_safetensors
convert_safetensors.transformer_configs["bitconvert"] = sizes["convert_safetensors"]  # G1
convert_safetensors.convert_back(safetensors_path=safetensors_file, output_file=out_dir + "/model_state.pt",
                                 model_name="bitconvert")

class _Unusable:
    def __init__(self, *a, **k):
        raise RuntimeError("xformers stand-in")

ops, fmha, attn_bias = (types.ModuleType(n) for n in ("xformers.ops", "xformers.ops.fmha", "xformers.ops.fmha.attn_bias"))
ops.RMSNorm = ops.rope_padded = attn_bias.BlockDiagonalCausalWithOffsetPaddedKeysMask = _Unusable  # G2
ops.fmha, fmha.attn_bias = fmha, attn_bias
sys.modules.update({"xformers": types.ModuleType("xformers"), "xformers.ops": ops, "xformers.ops.fmha": fmha,
                    "xformers.ops.fmha.attn_bias": attn_bias})
_cdll = ctypes.CDLL
ctypes.CDLL = lambda name, *a, **k: types.SimpleNamespace() if str(name).endswith("libbitnet.so") else _cdll(name, *a, **k)
import model
if sizes["model_args"] != {k: getattr(model.ModelArgs(), k) for k in sizes["model_args"]}:
    defaults = model.ModelArgs
    model.ModelArgs = lambda: defaults(**sizes["model_args"])  # G3
sys.argv = ["convert_checkpoint.py", "--input", out_dir + "/model_state.pt"]
runpy.run_path(gpu + "/convert_checkpoint.py", run_name="__main__")
"""


def run_gpu_converter(master: Path, out: Path) -> Path:
    """microsoft/BitNet's W2A8 files of a BitNetForCausalLM bf16 master, in ``out`` (the
    intermediate model_state.pt removed, as gpu/README.md does)."""
    gpu = BITNET / "gpu"
    if not (gpu / "convert_checkpoint.py").is_file():
        pytest.skip(f"microsoft/BitNet's gpu/ converter not found at {gpu}")
    pytest.importorskip("einops", reason="gpu/convert_safetensors.py imports einops")
    c = json.loads((master / "config.json").read_text())
    sizes = {
        "convert_safetensors": dict(n_layer=c["num_hidden_layers"], n_head=c["num_attention_heads"], dim=c["hidden_size"],
                                    vocab_size=c["vocab_size"], n_local_heads=c["num_key_value_heads"],
                                    intermediate_size=c["intermediate_size"]),
        # what convert_checkpoint reads of ModelArgs (it splits wqkv and w13 with them)
        "model_args": dict(dim=c["hidden_size"], n_heads=c["num_attention_heads"], n_kv_heads=c["num_key_value_heads"],
                           ffn_dim=c["intermediate_size"]),
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    driver = out.parent / "gpu_driver.py"
    driver.write_text(GPU_DRIVER, encoding="utf-8")
    _run([sys.executable, str(driver), str(gpu), str(master / "model.safetensors"), str(out), json.dumps(sizes)],
         "microsoft/BitNet's gpu/ converter")  # fmt: skip
    (out / "model_state.pt").unlink()
    return out


#: gpu/model.py imported with G2's stand-ins, plus G4: xformers.ops.RMSNorm as a module holding a
#: ``weight`` of its size (what load_state_dict needs of it; it is never run). Builds the model for
#: each file (BitLinearKernel layers for model_state_int2.pt, BitLinear for model_state_fp16.pt)
#: and loads the file with strict=True; prints what it loaded.
GPU_MODEL_DRIVER = r"""
import ctypes, json, sys, types
import torch
gpu, folder, args = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
sys.path.insert(0, gpu)

class RMSNorm(torch.nn.Module):  # G4
    def __init__(self, dim, eps=1e-6, include_weight=True):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(dim))

class _Unusable:
    def __init__(self, *a, **k):
        raise RuntimeError("xformers stand-in")

ops, fmha, attn_bias = (types.ModuleType(n) for n in ("xformers.ops", "xformers.ops.fmha", "xformers.ops.fmha.attn_bias"))
ops.RMSNorm, ops.rope_padded, attn_bias.BlockDiagonalCausalWithOffsetPaddedKeysMask = RMSNorm, _Unusable, _Unusable
ops.fmha, fmha.attn_bias = fmha, attn_bias
sys.modules.update({"xformers": types.ModuleType("xformers"), "xformers.ops": ops, "xformers.ops.fmha": fmha,
                    "xformers.ops.fmha.attn_bias": attn_bias})
_cdll = ctypes.CDLL
ctypes.CDLL = lambda name, *a, **k: types.SimpleNamespace() if str(name).endswith("libbitnet.so") else _cdll(name, *a, **k)
import model
report = {}
for name, kernel in (("model_state_int2.pt", True), ("model_state_fp16.pt", False)):
    m = model.Transformer(model.ModelArgs(**args, use_kernel=kernel))
    state = torch.load(folder + "/" + name, weights_only=True)
    m.load_state_dict(state, strict=True)
    report[name] = {k: [str(v.dtype), list(v.shape)] for k, v in m.state_dict().items()}
print(json.dumps(report))
"""


def load_in_gpu_model(folder: Path, config: dict) -> dict:
    """Load both W2A8 files of ``folder`` into gpu/model.py's Transformer (strict); the loaded state's
    dtypes and shapes per file."""
    gpu = BITNET / "gpu"
    if not (gpu / "model.py").is_file():
        pytest.skip(f"microsoft/BitNet's gpu/model.py not found at {gpu}")
    args = dict(dim=config["hidden_size"], n_layers=config["num_hidden_layers"], n_heads=config["num_attention_heads"],
                n_kv_heads=config["num_key_value_heads"], vocab_size=config["vocab_size"],
                ffn_dim=config["intermediate_size"])  # fmt: skip
    driver = folder.parent / "gpu_model_driver.py"
    driver.write_text(GPU_MODEL_DRIVER, encoding="utf-8")
    env = dict(os.environ, PYTHONPATH="")
    done = subprocess.run([sys.executable, str(driver), str(gpu), str(folder), json.dumps(args)], capture_output=True,
                          text=True, timeout=600, env=env, cwd=folder, check=False)  # fmt: skip
    if done.returncode:
        raise AssertionError(f"gpu/model.py could not load {folder}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


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


def bf16_master_copy(master: Path, out: Path) -> Path:
    """``master`` with its weights in bf16 (``torch_dtype`` too), the dtype 2B-4T ships: llama.cpp's
    converter folds bf16 weights in fp32 (fp16 ones in fp16), bitnet.cpp's packs no TL from fp16."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(master, out)
    tensors = {k: v.to(torch.bfloat16) for k, v in load_file(str(master / "model.safetensors")).items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((out / "config.json").read_text())
    cfg["torch_dtype"] = "bfloat16"
    (out / "config.json").write_text(json.dumps(cfg))
    return out
