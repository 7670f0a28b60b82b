"""transformers loads what bitconvert writes, and computes the same logits as its own packing.

Masters are made by transformers itself (random init, save_pretrained). The reference packed
model is built with transformers' own ``pack_weights`` and ``WeightQuant`` arithmetic, saved with
the official safetensors writer; ours comes from ``bitconvert pack``. Offline BitNet in
transformers 5.23 runs in the checkpoint dtype (bf16), so the exact comparison is in bf16.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from conftest import read_all, run_cli  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import AutoModelForCausalLM, BitNetConfig, LlamaConfig  # noqa: E402
from transformers.integrations.bitnet import WeightQuant, pack_weights  # noqa: E402

from bitconvert.ternary import LinearClass, pack_codes  # noqa: E402

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
def test_transformers_loads_pack_output_with_identical_logits(tmp_path, arch, linear_class):
    master = make_master(tmp_path, arch)
    ours = tmp_path / "ours"
    r = run_cli("pack", master, ours, "--linear-class", linear_class.value)
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
def test_unpack_output_loads_in_transformers(tmp_path, arch, linear_class):
    master = make_master(tmp_path, arch)
    packed, unpacked = tmp_path / "p", tmp_path / "u"
    assert run_cli("pack", master, packed, "--linear-class", linear_class.value).returncode == 0
    r = run_cli("unpack", packed, unpacked)
    assert r.returncode == 0, r.stderr
    model = AutoModelForCausalLM.from_pretrained(unpacked, dtype=torch.bfloat16)
    # The loaded float weights are exactly codes x mean|W| of the packed model.
    tensors = read_all(packed / "model.safetensors")
    name = "model.layers.1.mlp.down_proj.weight"
    from bitconvert.ternary import unpack_codes

    codes = torch.from_numpy(unpack_codes(tensors[name].numpy()))
    scale = tensors[name.replace("weight", "weight_scale")].double()
    magnitude = scale if linear_class is LinearClass.AUTOBITLINEAR else 1.0 / scale
    expect = (codes.double() * magnitude).to(torch.bfloat16)
    got = model.get_parameter(name).detach()
    assert torch.equal(got, expect)
    with torch.no_grad():
        assert torch.isfinite(model(TOKENS).logits).all()


def test_pack_codes_match_transformers_pack_weights():
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(-1, 2, (64, 40), generator=g, dtype=torch.int8)
    assert torch.equal(torch.from_numpy(pack_codes(codes.numpy())), pack_weights(codes.clone().to(torch.int32)))


@pytest.mark.parametrize("arch,linear_class", CASES, ids=[c[0] for c in CASES])
def test_online_exact_unpack_runs_the_packed_model_in_transformers_online_mode(tmp_path, arch, linear_class):
    """transformers' online mode on `unpack --online-exact` output computes the packed model (to bf16
    rounding of the scales); on plain `unpack` output it scales every layer by p."""
    master = make_master(tmp_path, arch)
    packed = tmp_path / "p"
    # f32 throughout: transformers' offline path computes in the checkpoint's dtype.
    r = run_cli("pack", master, packed, "--linear-class", linear_class.value, "--dtype", "f32", "--scale-dtype", "f32")
    assert r.returncode == 0, r.stderr
    for flag in ([], ["--online-exact"]):
        r = run_cli("unpack", packed, tmp_path / f"u{len(flag)}", "--dtype", "f32", *flag)
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
