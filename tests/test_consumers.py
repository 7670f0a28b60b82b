"""``verify --target CONSUMER``: every rule of bitconvert/verify/targets.py has a test here; where the
consumer runs on this machine (transformers, llama-cpp-python 0.3.36, Nanotron's own code on CPU)
the test runs it and shows the fact the rule states."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FIXTURES, ROOT, make_checkpoint, run_cli

from bitconvert.convert import convert
from bitconvert.errors import UsageError
from bitconvert.formats import open_checkpoint
from bitconvert.verify import CONSUMERS, verify_target
from bitconvert.verify.nanotron_checks import fused_error

TOKENS = [315, 39, 276, 75, 78, 270, 257, 75, 67, 0, 220, 51, 261, 220, 80, 84]
WIDE = {"hidden": 256, "intermediate": 512, "layers": 2, "heads": 4, "kv_heads": 2}  # TQ rows: multiples of 256
PEERS = ROOT.parent / "shared" / "peers"


def outcome(src, target: str) -> dict[str, bool]:
    """rule name -> passed, for one consumer."""
    return {c.name.split(".")[-1]: c.passed for c in verify_target(src, target).checks}


def check_of(src, target: str, rule: str):
    return next(c for c in verify_target(src, target).checks if c.name == f"{target}.{rule}")


@pytest.fixture(scope="module")
def wide(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("wide")
    return {kind: make_checkpoint(root / kind, kind, "packed", **WIDE, seed=5) for kind in ("1bitllm", "bitnet-2b4t")}


@pytest.fixture(scope="module")
def ggufs(wide, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ggufs")
    out = {}
    for kind, gtype in (("1bitllm", "tq2_0"), ("bitnet-2b4t", "tq2_0"), ("bitnet-2b4t", "i2_s")):
        out[f"{kind}-{gtype}"] = root / f"{kind}-{gtype}.gguf"
        convert(wide[kind], out[f"{kind}-{gtype}"], "gguf", {"gguf_type": gtype})
    return out


# --- the table ----------------------------------------------------------------------------------


def test_every_rule_names_its_upstream_source():
    assert set(CONSUMERS) >= {"transformers", "llama.cpp", "bitnet.cpp", "bitnet.cpp-arm", "nanotron-pr180",
                              "nanotron-pr178", "nanotron-main"}
    for who in CONSUMERS.values():
        assert who.rules
        for rule in who.rules:
            assert rule.fact and rule.source, (who.name, rule.name)
            assert "shared" not in rule.source and ("/" in rule.source or "github.com" in rule.source)


def test_unknown_consumer_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="known consumers: transformers"):
        verify_target(FIXTURES / "llama-packed", "vllm")
    r = run_cli("verify", FIXTURES / "llama-packed", "--target", "vllm")
    assert r.returncode == 2 and "unknown --target 'vllm'" in r.stderr


def test_cli_exit_codes_name_the_consumer_and_the_difference(wide, tmp_path):
    r = run_cli("verify", wide["1bitllm"], "--target", "llama.cpp", "--json")
    assert r.returncode == 0, r.stdout
    r = run_cli("verify", FIXTURES / "bitnet-2b4t-packed", "--target", "llama.cpp", "--junit", tmp_path / "j.xml")
    assert r.returncode == 1
    assert "FAIL target.llama.cpp.ffn_activation:" in r.stderr and "runs with SiLU" in r.stderr
    assert "FAIL target.llama.cpp.tensor_types:" in r.stderr and "not a multiple of 256" in r.stderr
    assert 'classname="verify.target.llama.cpp.ffn_activation"' in (tmp_path / "j.xml").read_text()


# --- transformers -------------------------------------------------------------------------------


def test_transformers_format_rule(ggufs):
    assert outcome(FIXTURES / "llama-packed", "transformers")["format"]
    assert outcome(FIXTURES / "llama-master", "transformers")["format"]
    c = check_of(ggufs["1bitllm-tq2_0"], "transformers", "format")
    assert not c.passed and "no GGUF loader for architecture 'bitnet'" in c.detail


def _pack_f32(master: Path, out: Path, *extra: str) -> Path:
    # transformers' offline BitNet layers run in the checkpoint's dtype: f32 for a strict comparison
    r = run_cli("pack", master, out, "--dtype", "f32", "--scale-dtype", "f32", *extra)
    assert r.returncode == 0, r.stderr
    return out


def _transformers_logits(path: Path) -> torch.Tensor:
    pytest.importorskip("accelerate")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([TOKENS])).logits[0].float()


def _flip_linear_class(src: Path, out: Path) -> Path:
    shutil.copytree(src, out)
    cfg = json.loads((out / "config.json").read_text())
    q = cfg["quantization_config"]
    q["linear_class"] = {"autobitlinear": "bitlinear", "bitlinear": "autobitlinear"}[q["linear_class"]]
    (out / "config.json").write_text(json.dumps(cfg))
    return out


def test_transformers_reads_weight_scale_by_linear_class(tmp_path):
    from bitconvert.runtime import compute_logits

    packed = _pack_f32(FIXTURES / "bitnet-2b4t-master", tmp_path / "p")
    flipped = _flip_linear_class(packed, tmp_path / "flipped")
    ours, theirs = compute_logits(packed, TOKENS), _transformers_logits(packed)
    flipped_theirs = _transformers_logits(flipped)
    assert (ours - theirs).abs().max().item() < 1e-4
    # the same bytes under the other linear_class: transformers computes another model
    assert (flipped_theirs - theirs).abs().max().item() > 1.0
    assert outcome(packed, "transformers")["scale_meaning"]
    c = check_of(flipped, "transformers", "scale_meaning")
    assert not c.passed and "written for the other linear_class" in c.detail and c.figure > 1


def test_transformers_drops_the_1bitllm_sub_norms(tmp_path):
    from bitconvert.runtime import compute_logits

    packed = _pack_f32(FIXTURES / "1bitllm-master", tmp_path / "p")
    ours, theirs = compute_logits(packed, TOKENS), _transformers_logits(packed)
    diff = (ours - theirs).abs().max().item()
    print(f"\n1bitLLM layout: max |logit diff| transformers vs runtime {diff:.3g}")
    assert diff > 1e-2  # vs < 1e-4 for the 2B-4T layout above
    c = check_of(packed, "transformers", "layout")
    assert not c.passed and "inner_attn_ln" in c.detail
    assert outcome(FIXTURES / "bitnet-2b4t-packed", "transformers")["layout"]


# --- llama.cpp ----------------------------------------------------------------------------------


def _llama_cpp():
    return pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (see tests/test_gguf_llamacpp.py)")


def llama_cpp_logits(path: Path) -> torch.Tensor:
    llm = _llama_cpp().Llama(model_path=str(path), n_ctx=64, logits_all=True, verbose=False, n_threads=2)
    try:
        llm.eval(TOKENS)
        return torch.tensor(np.array(llm.scores[: len(TOKENS)]), dtype=torch.float32)
    finally:
        llm.close()


def min_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1).min())


def test_llama_cpp_ffn_activation(ggufs):
    from bitconvert.runtime import compute_logits

    silu, relu2 = ggufs["1bitllm-tq2_0"], ggufs["bitnet-2b4t-tq2_0"]
    cos_silu = min_cosine(compute_logits(silu, TOKENS), llama_cpp_logits(silu))
    cos_relu2 = min_cosine(compute_logits(relu2, TOKENS), llama_cpp_logits(relu2))
    print(f"\nllama.cpp vs runtime, min cosine: SiLU model {cos_silu:.6f}, relu² model {cos_relu2:.6f}")
    assert cos_silu > 0.9995 and cos_relu2 < 0.999
    assert all(outcome(silu, "llama.cpp").values())
    c = check_of(relu2, "llama.cpp", "ffn_activation")
    assert not c.passed and "'relu2'" in c.detail


def test_llama_cpp_refuses_bitnet_cpp_files(ggufs):
    path = ggufs["bitnet-2b4t-i2_s"]
    with pytest.raises((ValueError, RuntimeError)):
        llama_cpp_logits(path)
    got = outcome(path, "llama.cpp")
    assert not got["architecture"] and not got["tensor_types"]
    assert "'bitnet-b1.58'" in check_of(path, "llama.cpp", "architecture").detail


def test_tq_rows_must_be_multiples_of_256():
    gguf = pytest.importorskip("gguf")
    with pytest.raises(gguf.quants.QuantError):  # llama.cpp's own quantizer (gguf-py) refuses 64-wide rows
        gguf.quants.quantize(np.zeros((4, 64), dtype=np.float32), gguf.GGMLQuantizationType.TQ2_0)
    c = check_of(FIXTURES / "llama-packed", "llama.cpp", "tensor_types")
    assert not c.passed and c.figure == 14 and "rows of 64 values" in c.detail


def test_llama_cpp_honours_bitnet_scale_tensors(ggufs, tmp_path):
    from bitconvert.formats.gguf.parser import GGUFFile
    from bitconvert.runtime import compute_logits

    src = ggufs["1bitllm-tq2_0"]
    data = bytearray(src.read_bytes())
    for t in GGUFFile(src).tensors.values():
        if t.name.endswith(".scale"):
            v = np.frombuffer(bytes(data[t.offset : t.offset + 4]), dtype=np.float32) * 3
            data[t.offset : t.offset + 4] = v.tobytes()
    patched = tmp_path / "patched.gguf"
    patched.write_bytes(bytes(data))
    theirs = llama_cpp_logits(patched)
    assert min_cosine(theirs, llama_cpp_logits(src)) < 0.99  # the scales are used ...
    assert min_cosine(theirs, compute_logits(patched, TOKENS)) > 0.9995  # ... as the runtime uses them
    assert outcome(patched, "llama.cpp")["scale_tensors"]


def with_scale_tensors(src: Path, out: Path, value: float) -> Path:
    """A copy of a GGUF made with gguf-py (llama.cpp's own library), plus an F32 ``.scale`` tensor of
    ``value`` for every ternary weight, as the ``bitnet`` architecture has them."""
    gguf = pytest.importorskip("gguf")
    reader = gguf.GGUFReader(str(src))
    writer = gguf.GGUFWriter(str(out), str(reader.fields["general.architecture"].contents()))
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF."):
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), kind, sub_type=sub)
    ternary = {gguf.GGMLQuantizationType.TQ1_0, gguf.GGMLQuantizationType.TQ2_0}
    extra = [(t.name.removesuffix(".weight") + ".scale", np.array([value], dtype=np.float32))
             for t in reader.tensors if t.tensor_type in ternary]
    for t in reader.tensors:
        writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    for name, data in extra:
        writer.add_tensor_info(name, data.shape, data.dtype, data.nbytes, gguf.GGMLQuantizationType.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t in reader.tensors:
        writer.write_tensor_data(t.data, tensor_endianess=reader.endianess)
    for _, data in extra:
        writer.write_tensor_data(data)
    writer.close()
    return out


def test_llama_cpp_honours_scale_tensors_in_the_llama_architecture_too(tmp_path):
    # Older llama.cpp loaded .scale tensors for `bitnet` only; at 0c1e57098 a generic pass loads
    # them for every architecture. Measured: a `llama` file with .scale tensors of 2 is computed
    # as the runtime computes it (scales applied), not as the file without them.
    from bitconvert.runtime import compute_logits

    src = make_checkpoint(tmp_path / "llama", "llama", "packed", **WIDE, seed=5)
    plain = tmp_path / "plain.gguf"
    convert(src, plain, "gguf", {"gguf_type": "tq2_0"})
    scaled = with_scale_tensors(plain, tmp_path / "scaled.gguf", 2.0)
    ours, theirs = compute_logits(scaled, TOKENS), llama_cpp_logits(scaled)
    assert min_cosine(ours, compute_logits(plain, TOKENS)) < 0.99  # the scales matter ...
    assert min_cosine(theirs, ours) > 0.9995  # ... and llama.cpp applies them like the runtime
    for path in (plain, scaled):
        assert outcome(path, "llama.cpp")["scale_tensors"]
    c = check_of(scaled, "llama.cpp", "scale_tensors")
    assert c.figure == 14 and "'llama' too" in c.detail


# --- bitnet.cpp ---------------------------------------------------------------------------------


def test_bitnet_cpp_rules(wide, ggufs, tmp_path):
    for target in ("bitnet.cpp", "bitnet.cpp-arm"):
        c = check_of(wide["bitnet-2b4t"], target, "ffn_activation")
        assert not c.passed and "390c3077" in c.detail
        assert outcome(wide["1bitllm"], target)["ffn_activation"]
    # the byte layout: bitconvert's default I2_S is x86; --i2s-layout arm is what ARM builds read
    x86 = ggufs["bitnet-2b4t-i2_s"]
    arm = tmp_path / "arm.gguf"
    convert(wide["bitnet-2b4t"], arm, "gguf", {"gguf_type": "i2_s", "i2s_layout": "arm"})
    assert outcome(x86, "bitnet.cpp")["i2_s_layout"] and not outcome(x86, "bitnet.cpp-arm")["i2_s_layout"]
    assert outcome(arm, "bitnet.cpp-arm")["i2_s_layout"] and not outcome(arm, "bitnet.cpp")["i2_s_layout"]
    assert outcome(ggufs["1bitllm-tq2_0"], "bitnet.cpp-arm")["i2_s_layout"]  # no I2_S tensor
    # rows: 40 x 40 = 1600 values fill 64-value blocks (ARM) but not 128-value ones (x86)
    odd = make_checkpoint(tmp_path / "odd", "llama", "packed", hidden=40, intermediate=80, heads=4, kv_heads=4)
    c = check_of(odd, "bitnet.cpp", "i2_s_rows")
    assert not c.passed and "x86 layout" in c.detail
    assert outcome(odd, "bitnet.cpp-arm")["i2_s_rows"]
    assert outcome(wide["1bitllm"], "bitnet.cpp")["i2_s_rows"]


# --- Nanotron (its own code, on CPU) ------------------------------------------------------------

TREES = {"nanotron-pr180": "pr180-2239f41e", "nanotron-pr178": "pr178-e1c3c1a5", "nanotron-main": "main-2411b022"}
SUB_NORM_NAMES = ("sub_norm", "inner_attn_ln", "ffn_layernorm")


def nanotron_probe(tree: str, master: Path, out: Path) -> dict:
    if not (PEERS / "nanotron" / tree).is_dir():
        pytest.skip(f"Nanotron tree {tree} is not in ../shared/peers")
    cmd = [sys.executable, str(ROOT / "tests" / "nanotron_consumer_probe.py"), str(PEERS / "nanotron"), tree,
           str(master), str(out)]
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300, cwd=out.parent)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("target", list(TREES))
def test_nanotron_rules_by_running_nanotron(target, tmp_path):
    master = FIXTURES / "bitnet-2b4t-master"  # rope_theta 500000, relu², sub-norms
    probe = nanotron_probe(TREES[target], master, tmp_path / "probe.json")
    params = probe["parameters"]
    # sub_norms: Nanotron builds no sub-norm parameter
    assert params and not any(s in p for p in params for s in SUB_NORM_NAMES)
    assert not outcome(master, target)["sub_norms"]
    assert outcome(FIXTURES / "llama-master", target)["sub_norms"]
    if target == "nanotron-pr180":  # no decoder norms at all
        assert not any("input_layernorm" in p or "post_attention_layernorm" in p for p in params)
        assert not outcome(master, target)["decoder_norms"]
    if target == "nanotron-main":  # plain linears: the latent weight runs unquantized
        assert probe["o_proj_class"] == "TensorParallelRowLinear" and probe["o_proj_is_plain_matmul"]
        assert not outcome(master, target)["quantization"]
        return
    # rope_theta: the BitNet config cannot hold it, every rotary module uses 10000
    assert "rope_theta" not in probe["config_fields"] and probe["rope_bases"] == [10000.0]
    c = check_of(master, target, "rope_theta")
    assert not c.passed and c.figure == 500000.0
    assert outcome(FIXTURES / "1bitllm-master", target)["rope_theta"]
    # fused_scales: Nanotron's weight_quant on the fused q/k/v, as bitconvert measures it
    ours = fused_error(open_checkpoint(master), 0, "qkv_proj")
    assert probe["fused_qkv_relative_error"] > 0.01
    assert ours == pytest.approx(probe["fused_qkv_relative_error"], rel=1e-4)
    assert not outcome(master, target)["fused_scales"]


def test_docs_list_every_rule():
    doc = (ROOT / "docs" / "consumers.md").read_text()
    for who in CONSUMERS.values():
        section = doc.split(f"### `{who.name}`:", 1)[1].split("###", 1)[0]
        for rule in who.rules:
            assert f"| `{rule.name}` | {rule.fact} | {rule.source} |" in section, (who.name, rule.name)
    assert "docs/consumers.md" in (ROOT / "README.md").read_text()
