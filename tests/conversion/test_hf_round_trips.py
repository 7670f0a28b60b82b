"""hf-bf16 and hf-packed: pack -> unpack -> pack gives the same bytes; unpacked floats remember their
scales (or are recovered from the values alone, or written for online quantization with
``--online-exact``); sharded output reads back as one model; side files, config and tied
embeddings come out as transformers expects."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import FIXTURES, cli, read_all

MASTERS = ["bitnet-2b4t-master", "1bitllm-master", "llama-master"]


def packed_and_scales(path: Path) -> dict:
    return {k: v for k, v in read_all(path).items() if v.dtype == torch.uint8 or k.endswith("weight_scale")}


def listing(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


@pytest.mark.parametrize("master", MASTERS)
@pytest.mark.parametrize("linear_class", ["autobitlinear", "bitlinear"])
@pytest.mark.parametrize("unpack_dtype", ["bf16", "f32"])
def test_pack_unpack_pack_is_byte_identical(tmp_path, master, linear_class, unpack_dtype):
    p1, u, p2 = tmp_path / "p1", tmp_path / "u", tmp_path / "p2"
    r = cli("pack", FIXTURES / master, p1, "--linear-class", linear_class)
    assert r.returncode == 0, r.stderr
    assert cli("unpack", p1, u, "--dtype", unpack_dtype).returncode == 0
    # dense tensors keep the master's dtype (fp16 for the 1bitLLM fixture) unless --dtype says otherwise
    dense = json.loads((FIXTURES / master / "config.json").read_text())["torch_dtype"]
    dense_flag = {"float16": "f16", "bfloat16": "bf16"}[dense]
    # no --linear-class: the unpacked master remembers it
    r = cli("pack", u, p2, "--json", "--dtype", dense_flag)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["ternary_sources"] == {"kept": 14}
    a, b = packed_and_scales(p1), packed_and_scales(p2)
    assert sorted(a) == sorted(b) and len(a) == 28
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    if not (dense == "float16" and unpack_dtype == "bf16"):  # else unpack was asked to round the dense tensors
        assert (p1 / "model.safetensors").read_bytes() == (p2 / "model.safetensors").read_bytes()
    assert json.loads((p2 / "config.json").read_text())["quantization_config"]["linear_class"] == linear_class


@pytest.mark.parametrize("linear_class", ["autobitlinear", "bitlinear"])
@pytest.mark.parametrize("unpack_dtype", ["bf16", "f32"])
def test_online_exact_unpack_requantizes_to_the_packed_layer(tmp_path, linear_class, unpack_dtype):
    """--online-exact floats: absmean quantization (transformers' WeightQuant) gives the packed codes and
    mean|W| back to one rounding of the dtype, and pack restores scales bit for bit."""
    from bitconvert.dtypes import Dense
    from bitconvert.ternary import LinearClass, Scale, absmean_quantize

    def unpack_codes(t):
        from bitconvert.ternary import unpack_codes as unpack

        return torch.from_numpy(unpack(t.numpy()))

    def magnitude(t):  # mean|W| of a stored weight_scale tensor
        d = Dense.from_torch(t)
        return Scale(d.dtype_name, d.raw().tobytes(), cls).multiplier

    cls = LinearClass(linear_class)
    p1, u, p2 = tmp_path / "p1", tmp_path / "u", tmp_path / "p2"
    assert cli("pack", FIXTURES / "bitnet-2b4t-master", p1, "--linear-class", linear_class).returncode == 0
    r = cli("unpack", p1, u, "--dtype", unpack_dtype, "--online-exact")
    assert r.returncode == 0, r.stderr
    packed, floats = read_all(p1), read_all(u)
    names = [k for k, v in packed.items() if v.dtype == torch.uint8]
    rel_step = 2.0**-8 if unpack_dtype == "bf16" else 2.0**-23
    for name in names:
        codes = unpack_codes(packed[name])
        mean_abs = magnitude(packed[name + "_scale"])
        got_codes, got_mean = absmean_quantize(Dense.from_torch(floats[name]))
        assert torch.equal(torch.from_numpy(got_codes), codes), name
        assert abs(float(got_mean) / mean_abs - 1) <= 2 * rel_step, name
        p = float(codes.count_nonzero()) / codes.numel()
        assert p < 0.9  # the compensation matters: plain codes x mean|W| would requantize to p x mean|W|
    r = cli("pack", u, p2, "--json", "--dtype", "bf16")  # the master's dtype; else the f32 of u is kept
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["ternary_sources"] == {"kept": 14}
    assert (p1 / "model.safetensors").read_bytes() == (p2 / "model.safetensors").read_bytes()
    if unpack_dtype == "f32":  # the runtime (online quantization, as transformers) computes the packed model
        assert cli("verify", u, "--against", p1, "--logits").returncode == 0
        plain = tmp_path / "plain"
        assert cli("unpack", p1, plain, "--dtype", "f32").returncode == 0
        assert cli("verify", plain, "--against", p1, "--logits").returncode == 1

    # Without the recorded scales the same floats still mean what online quantization makes of them.
    from safetensors.torch import save_file

    (u / "model.safetensors").unlink()
    save_file(floats, str(u / "model.safetensors"), metadata={"format": "pt", "bitconvert.ternary_values":
                                                              "codes*scale/nonzero_fraction"})
    p3 = tmp_path / "p3"
    r = cli("pack", u, p3, "--linear-class", "autobitlinear", "--scale-dtype", "f32", "--json")
    assert r.returncode == 0, r.stderr
    again = read_all(p3)
    for name in names:
        assert torch.equal(unpack_codes(again[name]), unpack_codes(packed[name])), name
        expect = magnitude(packed[name + "_scale"])
        assert abs(float(again[name + "_scale"]) / expect - 1) <= 2 * rel_step, name


def test_unpacked_values_are_recovered_without_the_recorded_scales(tmp_path):
    """autobitlinear scales come back from the float values alone (no metadata needed)."""
    p1, u = tmp_path / "p1", tmp_path / "u"
    assert cli("pack", FIXTURES / "bitnet-2b4t-master", p1).returncode == 0
    assert cli("unpack", p1, u).returncode == 0
    from safetensors.torch import save_file

    tensors = read_all(u)
    (u / "model.safetensors").unlink()
    save_file(tensors, str(u / "model.safetensors"), metadata={"format": "pt"})  # metadata dropped
    p2 = tmp_path / "p2"
    r = cli("pack", u, p2, "--json")
    assert json.loads(r.stdout)["ternary_sources"] == {"recovered": 14}
    a, b = packed_and_scales(p1), packed_and_scales(p2)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_float_ternary_weights_in_a_packed_checkpoint_are_read_as_codes(tmp_path):
    """transformers' offline AutoBitLinear also accepts unpacked codes as floats; we read them too."""
    src = Path(shutil.copytree(FIXTURES / "bitnet-2b4t-packed", tmp_path / "src"))
    from safetensors.torch import save_file

    from bitconvert.ternary import unpack_codes

    tensors = read_all(src / "model.safetensors")
    name = "model.layers.0.self_attn.k_proj.weight"
    packed = tensors[name].clone()
    tensors[name] = torch.from_numpy(unpack_codes(packed.numpy())).to(torch.bfloat16)
    save_file(tensors, str(src / "model.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "o"
    assert cli("pack", src, out).returncode == 0
    assert torch.equal(read_all(out)[name], packed)


def test_sharded_output_keeps_shards_under_the_limit_and_reads_back_whole(tmp_path):
    out = tmp_path / "sharded"
    r = cli("pack", FIXTURES / "llama-master", out, "--max-shard-size", "30KB", "--json")
    assert r.returncode == 0, r.stderr
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert index["metadata"]["total_size"] == sum(v.numel() * v.element_size() for v in read_all(out).values())
    for f in shards:  # no shard's data past the limit unless one tensor alone is larger
        members = read_all(out / f)
        data = sum(v.numel() * v.element_size() for v in members.values())
        assert data <= 30_000 or len(members) == 1, (f, data, len(members))
    single = tmp_path / "single"
    assert cli("pack", out, single).returncode == 0
    a, b = read_all(out), read_all(single / "model.safetensors")
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_side_files_config_and_tied_embeddings_are_written_as_transformers_expects(tmp_path):
    out = tmp_path / "p"
    assert cli("pack", FIXTURES / "bitnet-2b4t-master", out).returncode == 0
    assert listing(out) == [
        "bitconvert_provenance.json", "config.json", "generation_config.json", "model.safetensors",
        "special_tokens_map.json",
        "tokenizer.json", "tokenizer_config.json",
    ]
    for f in ("tokenizer.json", "generation_config.json"):
        assert (out / f).read_bytes() == (FIXTURES / "bitnet-2b4t-master" / f).read_bytes()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["max_position_embeddings"] == 4096 and cfg["tie_word_embeddings"] is True
    assert cfg["architectures"] == ["BitNetForCausalLM"] and cfg["model_type"] == "bitnet"
    assert cfg["quantization_config"] == {"quant_method": "bitnet", "linear_class": "autobitlinear",
                                          "quantization_mode": "offline", "use_rms_norm": False, "rms_norm_eps": 1e-6}
    tensors = read_all(out)
    assert "lm_head.weight" not in tensors
    scale = tensors["model.layers.0.self_attn.q_proj.weight_scale"]
    assert scale.dtype == torch.bfloat16 and scale.shape == (1,)
    # untied llama keeps its lm_head, unquantized
    out2 = tmp_path / "l"
    assert cli("pack", FIXTURES / "llama-master", out2, "--scale-dtype", "f32").returncode == 0
    t2 = read_all(out2)
    assert t2["lm_head.weight"].dtype == torch.bfloat16 and t2["lm_head.weight"].shape == (320, 64)
    assert t2["model.layers.0.mlp.up_proj.weight_scale"].dtype == torch.float32
