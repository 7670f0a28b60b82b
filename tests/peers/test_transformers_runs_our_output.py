"""transformers loads what bitconvert writes and computes what its own packing computes: ``pack`` output
tensor for tensor equal to transformers' ``pack_weights``/``WeightQuant`` and equal logits;
``unpack`` output loads as codes x mean|W|; ``--online-exact`` floats run the packed model in online
mode; and the two ``verify --target transformers`` rules it proves (the scale's meaning follows
``linear_class``; the 1bitLLM sub-norms are dropped).

Masters are made by transformers itself (random init, ``save_pretrained``). Offline BitNet in
transformers 5.23 runs in the checkpoint dtype (bf16), so the exact comparison is in bf16.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import FIXTURES, cli, read_all
from safetensors.torch import save_file

from bitconvert.runtime import compute_logits
from bitconvert.ternary import LinearClass, unpack_codes
from bitconvert.verify import verify_target

transformers = pytest.importorskip("transformers", reason="transformers (test extra) is the peer")
pytest.importorskip("accelerate", reason="transformers needs accelerate (test extra) to load these models")
from transformers import AutoModelForCausalLM, BitNetConfig, LlamaConfig  # noqa: E402
from transformers.integrations.bitnet import WeightQuant, pack_weights  # noqa: E402


TOKENS = torch.tensor([[5, 17, 99, 3, 250, 42, 7, 7, 130, 64, 1, 200]])


DIMS = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=300, max_position_embeddings=256,
            bos_token_id=1, eos_token_id=2)


LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _is_linear(name: str) -> bool:
    return any(f".{lin}.weight" in name for lin in LINEARS)


def make_master(tmp: Path, arch: str) -> Path:
    torch.manual_seed(0)
    if arch == "bitnet":
        cfg = BitNetConfig(**DIMS, tie_word_embeddings=True, rms_norm_eps=1e-5)
    else:
        cfg = LlamaConfig(**DIMS, tie_word_embeddings=False, hidden_act="silu")
    model = AutoModelForCausalLM.from_config(cfg).to(torch.bfloat16)
    with torch.no_grad():  # non-trivial norms, so a swapped or dropped norm shows in the logits
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    out = tmp / f"{arch}-master"
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def master_of(tmp_path_factory):
    """``master_of(arch)``: transformers' own master of ``arch``, made once for this module (read only)."""
    made: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in made:
            made[arch] = make_master(tmp_path_factory.mktemp(arch), arch)
        return made[arch]

    return get


def reference_pack(master: Path, out: Path, linear_class: LinearClass) -> Path:
    """Pack with transformers' functions: WeightQuant's arithmetic, then pack_weights."""
    tensors = read_all(master)
    packed = {}
    for name, w in tensors.items():
        if not _is_linear(name):
            packed[name] = w.to(torch.bfloat16)
            continue
        wf = w.float()
        s = 1.0 / wf.abs().mean().clamp_(min=1e-5)
        codes = (wf * s).round().clamp(-1, 1)
        # the codes WeightQuant itself produces (its output is codes / s, s > 0)
        assert torch.equal(torch.sign(WeightQuant.forward(None, w.float())), codes)
        packed[name] = pack_weights(codes.clone())
        scale = (1.0 / s) if linear_class is LinearClass.AUTOBITLINEAR else s
        packed[name[: -len("weight")] + "weight_scale"] = scale.reshape(1).to(torch.bfloat16)
    out.mkdir()
    save_file(packed, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((master / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitnet", "linear_class": linear_class.value,
                                  "quantization_mode": "offline"}
    (out / "config.json").write_text(json.dumps(cfg))
    return out


def as_online_master(master: Path, out: Path) -> Path:
    """The master as the -bf16 repos ship it: quantization_config in online mode."""
    shutil.copytree(master, out)
    cfg = json.loads((out / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitnet", "linear_class": "autobitlinear",
                                  "quantization_mode": "online"}
    (out / "config.json").write_text(json.dumps(cfg))
    return out


def logits_of(path: Path, **kwargs) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, **kwargs)
    model.eval()
    with torch.no_grad():
        return model(TOKENS).logits[0].float()


CASES = [("bitnet", LinearClass.AUTOBITLINEAR), ("llama", LinearClass.BITLINEAR)]


@pytest.mark.parametrize("arch,linear_class", CASES, ids=[c[0] for c in CASES])
def test_transformers_loads_pack_output_with_identical_logits(master_of, tmp_path, arch, linear_class):
    master = master_of(arch)
    ours = tmp_path / "ours"
    r = cli("pack", master, ours, "--linear-class", linear_class.value)
    assert r.returncode == 0, r.stderr
    ref = reference_pack(master, tmp_path / "ref", linear_class)

    # Tensor for tensor, the files agree with transformers' packing.
    mine, theirs = read_all(ours / "model.safetensors"), read_all(ref / "model.safetensors")
    assert sorted(mine) == sorted(theirs)
    for name in theirs:
        assert mine[name].dtype == theirs[name].dtype, name
        assert torch.equal(mine[name], theirs[name]), name

    ours_logits = logits_of(ours)
    ref_logits = logits_of(ref)
    assert (ours_logits - ref_logits).abs().max().item() == 0.0

    # And close to the master run with transformers' online quantization.
    online = logits_of(as_online_master(master, tmp_path / "online"))
    diff = (ours_logits - online).abs().max().item()
    agree = (ours_logits.argmax(-1) == online.argmax(-1)).float().mean().item()
    print(f"\n{arch}: packed vs online master: max abs diff {diff:.4g}, argmax agreement {agree:.3f}")
    assert agree >= 0.9
    assert diff < 0.1 * ours_logits.abs().max().item()


@pytest.mark.parametrize("arch,linear_class", CASES, ids=[c[0] for c in CASES])
def test_unpack_output_loads_in_transformers(master_of, tmp_path, arch, linear_class):
    master = master_of(arch)
    packed, unpacked = tmp_path / "p", tmp_path / "u"
    assert cli("pack", master, packed, "--linear-class", linear_class.value).returncode == 0
    r = cli("unpack", packed, unpacked)
    assert r.returncode == 0, r.stderr
    model = AutoModelForCausalLM.from_pretrained(unpacked, dtype=torch.bfloat16)
    # The loaded float weights are exactly codes x mean|W| of the packed model.
    tensors = read_all(packed / "model.safetensors")
    name = "model.layers.1.mlp.down_proj.weight"
    codes = torch.from_numpy(unpack_codes(tensors[name].numpy()))
    scale = tensors[name.replace("weight", "weight_scale")].double()
    magnitude = scale if linear_class is LinearClass.AUTOBITLINEAR else 1.0 / scale
    expect = (codes.double() * magnitude).to(torch.bfloat16)
    got = model.get_parameter(name).detach()
    assert torch.equal(got, expect)
    with torch.no_grad():
        assert torch.isfinite(model(TOKENS).logits).all()


@pytest.mark.parametrize("arch,linear_class", CASES, ids=[c[0] for c in CASES])
def test_online_exact_unpack_runs_the_packed_model_in_transformers_online_mode(master_of, tmp_path, arch, linear_class):
    """transformers' online mode on `unpack --online-exact` output computes the packed model (to bf16
    rounding of the scales); on plain `unpack` output it scales every layer by p."""
    master = master_of(arch)
    packed = tmp_path / "p"
    # f32 throughout: transformers' offline path computes in the checkpoint's dtype.
    r = cli("pack", master, packed, "--linear-class", linear_class.value, "--dtype", "f32", "--scale-dtype", "f32")
    assert r.returncode == 0, r.stderr
    for flag in ([], ["--online-exact"]):
        r = cli("unpack", packed, tmp_path / f"u{len(flag)}", "--dtype", "f32", *flag)
        assert r.returncode == 0, r.stderr
    ref = AutoModelForCausalLM.from_pretrained(packed, dtype=torch.float32)
    exact = AutoModelForCausalLM.from_pretrained(tmp_path / "u1", dtype=torch.float32)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "u0", dtype=torch.float32)
    with torch.no_grad():
        want, got, off = (m(TOKENS).logits[0] for m in (ref, exact, plain))
    exact_diff = float((got - want).abs().max())
    plain_diff = float((off - want).abs().max())
    print(f"\n{arch}: max abs logit diff vs packed: --online-exact {exact_diff:.3g}, plain unpack {plain_diff:.3g}")
    assert exact_diff < 1e-3 * float(want.abs().max())
    assert plain_diff > 100 * exact_diff


CONSUMER_TOKENS = [315, 39, 276, 75, 78, 270, 257, 75, 67, 0, 220, 51, 261, 220, 80, 84]


def outcome(src, target: str) -> dict[str, bool]:
    """rule name -> passed, for one consumer."""
    return {c.name.split(".")[-1]: c.passed for c in verify_target(src, target).checks}


def check_of(src, target: str, rule: str):
    return next(c for c in verify_target(src, target).checks if c.name == f"{target}.{rule}")


def _pack_f32(master: Path, out: Path, *extra: str) -> Path:
    # transformers' offline BitNet layers run in the checkpoint's dtype: f32 for a strict comparison
    r = cli("pack", master, out, "--dtype", "f32", "--scale-dtype", "f32", *extra)
    assert r.returncode == 0, r.stderr
    return out


def _transformers_logits(path: Path) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([CONSUMER_TOKENS])).logits[0].float()


def _flip_linear_class(src: Path, out: Path) -> Path:
    shutil.copytree(src, out)
    cfg = json.loads((out / "config.json").read_text())
    q = cfg["quantization_config"]
    q["linear_class"] = {"autobitlinear": "bitlinear", "bitlinear": "autobitlinear"}[q["linear_class"]]
    (out / "config.json").write_text(json.dumps(cfg))
    return out


def test_transformers_reads_weight_scale_by_linear_class(tmp_path):
    packed = _pack_f32(FIXTURES / "bitnet-2b4t-master", tmp_path / "p")
    flipped = _flip_linear_class(packed, tmp_path / "flipped")
    ours, theirs = compute_logits(packed, CONSUMER_TOKENS), _transformers_logits(packed)
    flipped_theirs = _transformers_logits(flipped)
    assert (ours - theirs).abs().max().item() < 1e-4
    # the same bytes under the other linear_class: transformers computes another model
    assert (flipped_theirs - theirs).abs().max().item() > 1.0
    assert outcome(packed, "transformers")["scale_meaning"]
    c = check_of(flipped, "transformers", "scale_meaning")
    assert not c.passed and "written for the other linear_class" in c.detail and c.figure > 1


def test_transformers_drops_the_1bitllm_sub_norms(tmp_path):
    packed = _pack_f32(FIXTURES / "1bitllm-master", tmp_path / "p")
    ours, theirs = compute_logits(packed, CONSUMER_TOKENS), _transformers_logits(packed)
    diff = (ours - theirs).abs().max().item()
    print(f"\n1bitLLM layout: max |logit diff| transformers vs runtime {diff:.3g}")
    assert diff > 1e-2  # vs < 1e-4 for the 2B-4T layout above
    c = check_of(packed, "transformers", "layout")
    assert not c.passed and "inner_attn_ln" in c.detail
    assert outcome(FIXTURES / "bitnet-2b4t-packed", "transformers")["layout"]
