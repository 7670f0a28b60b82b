"""bitconvert's GGUF files run in bitnet.cpp's own runtime: the prebuilt first release (c82b5e6 with
its llama.cpp at 406a5036) in ../shared/peers, through its ``dump-logits`` (logits of a token list).

Exact where the codes are: a file bitconvert writes with the same codes and scales as bitnet.cpp's own
conversion of the same model (bitnet.cpp's converter, then its llama-quantize) holds the same tensor
data, and the runtime gives bitwise the same logits. Elsewhere, per position, the cosine of what the
layers add (``dcos``: logits minus the embedding-only logits of the master, against the same for
``bitconvert logits`` of the master) is at least :data:`DCOS`; the negative controls (a wrong I2_S
layout, Q/K rows in the other RoPE order) must fall below it, so the check can fail.

The tiny random models' logits are dominated by embedding -> final norm -> head: plain cosine and
argmax barely see the layers (a wrong-layout Llama file still has cosine 0.995), hence dcos.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from bitnet_cpp_peers import (
    convert_with_peer,
    dump_logits,
    llama_quantize,
    permute_qk_rows,
    read_gguf,
    renamed_key,
    runtime_logits,
    runtime_skip_reason,
    tensor_data,
)
from conftest import make_checkpoint

from bitconvert import runtime
from bitconvert.convert import convert
from bitconvert.verify import verify_target

pytestmark = pytest.mark.skipif(runtime_skip_reason() is not None, reason=str(runtime_skip_reason()))

TOKENS = [315, 1, 5, 17, 42, 7, 3, 100, 200, 250, 300, 64]  # BOS + 11 ids, all below the vocabulary (320)
DIMS = {"hidden": 256, "intermediate": 512, "layers": 2, "heads": 4, "kv_heads": 2}
#: per-position dcos every right file reaches against the reference runtime on the master. Measured
#: over seeds 5, 6, 11-15 of both families (docs/bitnet-cpp.md): right files 0.99871 at the lowest
#: (1bitLLM, TQ1_0 from a bitlinear-packed copy), 0.9988-0.99998 otherwise; the controls: a wrong
#: I2_S layout |dcos| <= 0.32, Q/K rows in the other RoPE order <= 0.80 past position 0.
DCOS = 0.998
SEEDS = {"1bitllm": 5, "llama": 6}
GGML_NAMES = {0: "F32", 1: "F16", 8: "Q8_0", 30: "BF16", 34: "TQ1_0", 35: "TQ2_0", 36: "I2_S"}


def sharpened(model: Path, factor: float = 16.0) -> Path:
    """Q and K of a master scaled up so attention is far from uniform: a RoPE or Q/K row-order mistake
    then shows in the logits (the codes do not change, mean|W| of q/k grows 16 times)."""
    from safetensors.torch import load_file, save_file

    t = load_file(str(model / "model.safetensors"))
    for name in t:
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            t[name] = (t[name].float() * factor).to(t[name].dtype)
    save_file(t, str(model / "model.safetensors"), metadata={"format": "pt"})
    return model


class Family:
    def __init__(self, root: Path, kind: str) -> None:
        self.kind = kind
        self.dir = root / kind
        self.master = sharpened(make_checkpoint(self.dir / "master", kind, "master", **DIMS, seed=SEEDS[kind]))
        self.ref = runtime.compute_logits(self.master, TOKENS).double().numpy()
        self.base = self._embedding_only()

    def _embedding_only(self) -> np.ndarray:
        """The logits without any layer: embedding -> final RMSNorm -> head, from the master, in float64."""
        from safetensors.torch import load_file

        cfg = json.loads((self.master / "config.json").read_text())
        t = {k: v.double().numpy() for k, v in load_file(str(self.master / "model.safetensors")).items()}
        e = t["model.embed_tokens.weight"]
        x = e[TOKENS]
        x = x / np.sqrt((x * x).mean(-1, keepdims=True) + cfg["rms_norm_eps"]) * t["model.norm.weight"]
        return x @ t.get("lm_head.weight", e).T

    def dcos(self, logits: np.ndarray) -> np.ndarray:
        a, b = logits.astype(np.float64) - self.base, self.ref - self.base
        return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))

    def gguf(self, name: str, src: Path | None = None, **options) -> Path:
        out = self.dir / f"{name}.gguf"
        if not out.exists():
            convert(src or self.master, out, "gguf", options)
        return out

    def packed(self, linear_class: str) -> Path:
        out = self.dir / f"packed-{linear_class}"
        if not out.exists():
            convert(self.master, out, "hf-packed", {"linear_class": linear_class})
        return out


@pytest.fixture(scope="module")
def families(tmp_path_factory) -> dict[str, Family]:
    root = tmp_path_factory.mktemp("bitnet-cpp-runtime")
    return {kind: Family(root, kind) for kind in SEEDS}


def bitnet_cpp_i2_s(fam: Family, src: Path, types: tuple[str, ...] = ("I2_S",)) -> dict[str, Path]:
    """bitnet.cpp's own way to its types: its converter to f32, then its llama-quantize."""
    arch = "bitnet" if fam.kind == "1bitllm" else "bitnet-b1.58"  # Llama: LlamaModel writes `llama` anyway
    f32 = fam.dir / f"bn-{src.name}-f32.gguf"
    if not f32.exists():
        convert_with_peer(src, f32, "f32", arch_name=arch)
    out = {}
    for t in types:
        q = fam.dir / f"bn-{src.name}-{t.lower()}.gguf"
        out[t] = q if q.exists() else llama_quantize(f32, q, t)
    return out


# --- exact: the same codes and scales give the same logits --------------------------------------


def test_1bitllm_i2_s_equals_bitnet_cpps_own_conversion(families):
    fam = families["1bitllm"]
    theirs = bitnet_cpp_i2_s(fam, fam.master)["I2_S"]
    ours = fam.gguf("i2s-recipe-bitnetcpp", gguf_type="i2_s", recipe="bitnet.cpp")
    assert tensor_data(ours) == tensor_data(theirs)
    assert np.array_equal(runtime_logits(ours, TOKENS), runtime_logits(theirs, TOKENS))
    # and its converter's own I2_S writer (HEAD relabelled `bitnet`, as its release wrote): the same
    direct = convert_with_peer(fam.master, fam.dir / "bn-direct-i2s.gguf", "i2_s", arch_name="bitnet")
    assert tensor_data(direct) == tensor_data(ours)


def test_llama_i2_s_equals_bitnet_cpps_own_conversion(families):
    """bitnet.cpp's Llama route is a bitlinear-packed checkpoint (its LlamaModel does not quantize a
    float master: sign(W), scale max|W|); bitconvert from the same packed folder."""
    fam = families["llama"]
    packed = fam.packed("bitlinear")
    theirs = bitnet_cpp_i2_s(fam, packed)["I2_S"]
    ours = fam.gguf("i2s-from-packed-bitlinear", packed, gguf_type="i2_s", embed_type="f16")  # bitnet.cpp's F16
    assert tensor_data(ours) == tensor_data(theirs)
    assert np.array_equal(runtime_logits(ours, TOKENS), runtime_logits(theirs, TOKENS))


@pytest.mark.parametrize("gguf_type", ["tq2_0", "tq1_0"])
@pytest.mark.parametrize("kind", sorted(SEEDS))
def test_tq_equals_llama_quantize_of_bitnet_cpps_conversion(families, kind, gguf_type):
    fam = families[kind]
    if kind == "1bitllm":  # llama-quantize's fp16 d per block = max|x|: the llama.cpp recipe
        src, ours = fam.master, fam.gguf(f"{gguf_type}-recipe-llamacpp", gguf_type=gguf_type, recipe="llama.cpp")
    else:
        src = fam.packed("bitlinear")
        ours = fam.gguf(f"{gguf_type}-from-packed-bitlinear", src, gguf_type=gguf_type, embed_type="f16")
    theirs = bitnet_cpp_i2_s(fam, src, (gguf_type.upper(),))[gguf_type.upper()]
    assert tensor_data(ours) == tensor_data(theirs)
    assert np.array_equal(runtime_logits(ours, TOKENS), runtime_logits(theirs, TOKENS))


def test_runs_repeat_bitwise(families):
    fam = families["1bitllm"]
    g = fam.gguf("i2s", gguf_type="i2_s")
    one = runtime_logits(g, TOKENS, threads=1)
    assert np.array_equal(runtime_logits(g, TOKENS, threads=1), one)
    assert np.array_equal(runtime_logits(g, TOKENS, threads=2), one)


# --- close: every recipe, every source, every type ----------------------------------------------


def _files(fam: Family) -> dict[str, Path]:
    g = fam.gguf
    i2s = g("i2s", gguf_type="i2_s")
    rt = fam.dir / "rt-packed"
    if not rt.exists():
        convert(i2s, rt, "hf-packed", {})
    tq2 = g("tq2_0", gguf_type="tq2_0")
    return {
        "i2_s": i2s,
        "i2_s --recipe bitnet.cpp": g("i2s-recipe-bitnetcpp", gguf_type="i2_s", recipe="bitnet.cpp"),
        "tq2_0": tq2,
        "tq1_0": g("tq1_0", gguf_type="tq1_0"),
        "tq2_0 --recipe llama.cpp": g("tq2_0-recipe-llamacpp", gguf_type="tq2_0", recipe="llama.cpp"),
        "tq1_0 --recipe llama.cpp": g("tq1_0-recipe-llamacpp", gguf_type="tq1_0", recipe="llama.cpp"),
        "i2_s from packed": g("i2s-from-packed", fam.packed("autobitlinear"), gguf_type="i2_s"),
        "i2_s from bitlinear packed": g("i2s-from-packed-bitlinear", fam.packed("bitlinear"), gguf_type="i2_s"),
        "tq2_0 from packed": g("tq2_0-from-packed", fam.packed("autobitlinear"), gguf_type="tq2_0"),
        "tq1_0 from bitlinear packed": g("tq1_0-from-packed-bitlinear", fam.packed("bitlinear"), gguf_type="tq1_0"),
        "i2_s -> hf-packed -> i2_s": g("i2s-roundtrip", rt, gguf_type="i2_s"),
        "i2_s -> tq2_0": g("tq2_0-from-i2s", i2s, gguf_type="tq2_0"),
        "tq2_0 -> i2_s": g("i2s-from-tq2_0", tq2, gguf_type="i2_s"),
        "i2_s, no tokenizer (no_vocab)": g("i2s-no-vocab", gguf_type="i2_s", no_tokenizer=True),
    }


@pytest.mark.parametrize("kind", sorted(SEEDS))
def test_every_file_computes_the_model(families, kind):
    fam = families[kind]
    low = {}
    for label, path in _files(fam).items():
        d = fam.dcos(runtime_logits(path, TOKENS))
        low[label] = round(float(d.min()), 6)
    print("\n".join(f"{kind}: {label}: min dcos {v:.6f}" for label, v in low.items()))  # pytest -rP shows it
    assert all(v >= DCOS for v in low.values()), low
    # and `verify --target bitnet.cpp` says this runtime loads them
    for path in (fam.gguf("i2s"), fam.gguf("tq1_0")):
        rules = {c.name: c.passed for c in verify_target(path, "bitnet.cpp").checks}
        assert rules["bitnet.cpp.architecture"] and rules["bitnet.cpp.tensor_types"], rules


# --- negative controls: what the check must catch -----------------------------------------------


@pytest.mark.parametrize("kind", sorted(SEEDS))
@pytest.mark.parametrize("layout", ["arm", "x86-rows"])
def test_wrong_i2_s_layout_fails(families, kind, layout):
    fam = families[kind]
    d = fam.dcos(runtime_logits(fam.gguf(f"i2s-{layout}", gguf_type="i2_s", i2s_layout=layout), TOKENS))
    assert d.max() < 0.5, d  # the default x86 build reads other codes: the layers' part is noise


@pytest.mark.parametrize("kind", sorted(SEEDS))
def test_qk_rows_in_the_other_rope_order_fail(families, kind):
    """`bitnet` rotates halves (NeoX), `llama` interleaved pairs: rows stored for the other one give
    another attention. Position 0 is not rotated, so it alone stays right."""
    fam = families[kind]
    right = fam.gguf("i2s", gguf_type="i2_s")
    heads = {"attn_q": DIMS["heads"], "attn_k": DIMS["kv_heads"]}
    wrong = permute_qk_rows(right, fam.dir / "qk-order.gguf", heads, inverse=kind == "llama")
    d = fam.dcos(runtime_logits(wrong, TOKENS))
    assert d[0] >= DCOS and d[1:].min() < 0.9, d


# --- what this runtime refuses ------------------------------------------------------------------


def test_2b4t_i2_s_is_an_architecture_this_release_does_not_know(tmp_path):
    model = make_checkpoint(tmp_path / "2b4t", "bitnet-2b4t", "master", **DIMS, seed=7)
    convert(model, tmp_path / "m.gguf", "gguf", {"gguf_type": "i2_s"})
    done = dump_logits(tmp_path / "m.gguf", TOKENS)
    assert done.returncode == 1 and "unknown model architecture: 'bitnet-b1.58'" in done.stderr
    rule = next(c for c in verify_target(tmp_path / "m.gguf", "bitnet.cpp").checks if c.name.endswith(".architecture"))
    assert not rule.passed and "first release refuses: unknown model architecture" in rule.detail


def test_every_type_bitconvert_writes_loads(families):
    """The float types and embedding types too (what `verify --target bitnet.cpp` lists as loaded)."""
    from bitconvert.verify.consumer_checks import BITNET_CPP_TYPES

    fam = families["1bitllm"]
    seen = set()
    for name, options in {"f16": {"gguf_type": "f16"}, "bf16": {"gguf_type": "bf16"}, "f32": {"gguf_type": "f32"},
                          "i2s-q8_0": {"gguf_type": "i2_s", "embed_type": "q8_0"}}.items():  # fmt: skip
        path = fam.gguf(name, **options)
        assert runtime_logits(path, TOKENS).shape == (len(TOKENS), 320), name
        seen |= {GGML_NAMES[t.type] for t in read_gguf(path)[1].values()}
    assert seen | {"I2_S", "TQ1_0", "TQ2_0"} == set(BITNET_CPP_TYPES)


def test_no_vocab_loads_here_and_in_llama_cpp(families, tmp_path):
    """A file without tokenizer.ggml.model is refused by this runtime and by llama.cpp: bitconvert
    writes "no_vocab" when it embeds no tokenizer, and both then run it, with the same logits."""
    fam = families["1bitllm"]
    with_vocab, no_vocab = (
        fam.gguf("i2s", gguf_type="i2_s"),
        fam.gguf("i2s-no-vocab", gguf_type="i2_s", no_tokenizer=True),
    )
    assert np.array_equal(runtime_logits(no_vocab, TOKENS), runtime_logits(with_vocab, TOKENS))
    keyless = renamed_key(no_vocab, tmp_path / "keyless.gguf", "tokenizer.ggml.model", "tokenizer.ggml.mode_")
    done = dump_logits(keyless, TOKENS)
    assert done.returncode == 1 and "key not found in model: tokenizer.ggml.model" in done.stderr
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (../shared/wheels)")
    logits = {}
    for name in ("tq2_0", "tq2_0-no-vocab"):
        path = fam.gguf(name, gguf_type="tq2_0", no_tokenizer=name.endswith("no-vocab"))
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, logits_all=True, verbose=False, n_threads=1)
        try:
            llm.eval(TOKENS)
            logits[name] = np.array(llm.scores[: len(TOKENS)])
        finally:
            llm.close()
    assert np.array_equal(logits["tq2_0"], logits["tq2_0-no-vocab"])
    with pytest.raises(ValueError):  # llama-cpp-python: "Failed to load model from file"
        llama_cpp.Llama(
            model_path=str(
                renamed_key(
                    fam.gguf("tq2_0-no-vocab"), tmp_path / "k2.gguf", "tokenizer.ggml.model", "tokenizer.ggml.mode_"
                )
            ),
            verbose=False,
        )
