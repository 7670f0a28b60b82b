"""hf-bf16 and hf-packed: round trips, layout details, and what bad input does."""

from __future__ import annotations

import json
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import FIXTURES, read_all, run_cli

from bitconvert.formats import open_checkpoint
from bitconvert.ternary import pack_codes

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
    r = run_cli("pack", FIXTURES / master, p1, "--linear-class", linear_class)
    assert r.returncode == 0, r.stderr
    assert run_cli("unpack", p1, u, "--dtype", unpack_dtype).returncode == 0
    # dense tensors keep the master's dtype (fp16 for the 1bitLLM fixture) unless --dtype says otherwise
    dense = json.loads((FIXTURES / master / "config.json").read_text())["torch_dtype"]
    dense_flag = {"float16": "f16", "bfloat16": "bf16"}[dense]
    # no --linear-class: the unpacked master remembers it
    r = run_cli("pack", u, p2, "--json", "--dtype", dense_flag)
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
    assert run_cli("pack", FIXTURES / "bitnet-2b4t-master", p1, "--linear-class", linear_class).returncode == 0
    r = run_cli("unpack", p1, u, "--dtype", unpack_dtype, "--online-exact")
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
    r = run_cli("pack", u, p2, "--json", "--dtype", "bf16")  # the master's dtype; else the f32 of u is kept
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["ternary_sources"] == {"kept": 14}
    assert (p1 / "model.safetensors").read_bytes() == (p2 / "model.safetensors").read_bytes()
    if unpack_dtype == "f32":  # the runtime (online quantization, as transformers) computes the packed model
        assert run_cli("verify", u, "--against", p1, "--logits").returncode == 0
        plain = tmp_path / "plain"
        assert run_cli("unpack", p1, plain, "--dtype", "f32").returncode == 0
        assert run_cli("verify", plain, "--against", p1, "--logits").returncode == 1

    # Without the recorded scales the same floats still mean what online quantization makes of them.
    from safetensors.torch import save_file

    (u / "model.safetensors").unlink()
    save_file(floats, str(u / "model.safetensors"), metadata={"format": "pt", "bitconvert.ternary_values":
                                                              "codes*scale/nonzero_fraction"})
    p3 = tmp_path / "p3"
    r = run_cli("pack", u, p3, "--linear-class", "autobitlinear", "--scale-dtype", "f32", "--json")
    assert r.returncode == 0, r.stderr
    again = read_all(p3)
    for name in names:
        assert torch.equal(unpack_codes(again[name]), unpack_codes(packed[name])), name
        expect = magnitude(packed[name + "_scale"])
        assert abs(float(again[name + "_scale"]) / expect - 1) <= 2 * rel_step, name


def test_unknown_float_values_metadata_is_refused(tmp_path):
    p1, u = tmp_path / "p1", tmp_path / "u"
    assert run_cli("pack", FIXTURES / "llama-master", p1).returncode == 0
    assert run_cli("unpack", p1, u).returncode == 0
    from safetensors.torch import save_file

    tensors = read_all(u)
    save_file(tensors, str(u / "model.safetensors"), metadata={"format": "pt", "bitconvert.ternary_values": "x"})
    r = run_cli("pack", u, tmp_path / "p2")
    assert r.returncode == 1 and "unknown bitconvert.ternary_values 'x'" in r.stderr
    assert not (tmp_path / "p2").exists()


def test_unpacked_values_recovered_without_hints(tmp_path):
    """autobitlinear scales come back from the float values alone (no metadata needed)."""
    p1, u = tmp_path / "p1", tmp_path / "u"
    assert run_cli("pack", FIXTURES / "bitnet-2b4t-master", p1).returncode == 0
    assert run_cli("unpack", p1, u).returncode == 0
    from safetensors.torch import save_file

    tensors = read_all(u)
    (u / "model.safetensors").unlink()
    save_file(tensors, str(u / "model.safetensors"), metadata={"format": "pt"})  # metadata dropped
    p2 = tmp_path / "p2"
    r = run_cli("pack", u, p2, "--json")
    assert json.loads(r.stdout)["ternary_sources"] == {"recovered": 14}
    a, b = packed_and_scales(p1), packed_and_scales(p2)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("packed_name", [m.replace("master", "packed") for m in MASTERS])
def test_packed_fixture_codes_match_independent_packer(packed_name):
    """Reading the fixtures (packed by fixtures/make_fixtures.py's own numpy packer) gives WeightQuant's codes."""
    fixture_dir = FIXTURES / packed_name
    transformers_bitnet = pytest.importorskip("transformers.integrations.bitnet")
    master = open_checkpoint(FIXTURES / fixture_dir.name.replace("packed", "master"))
    packed = open_checkpoint(fixture_dir)
    for name in master.config.quantized_linear_names():
        w = master.tensors[name].load().torch()
        want = torch.sign(transformers_bitnet.WeightQuant.forward(None, w.float())).to(torch.int8)
        got = torch.from_numpy(packed.tensors[name].load().codes)
        assert int((got != want).sum()) == 0, name


@pytest.mark.parametrize("master_name", MASTERS)
def test_transformers_codes_on_master_fixtures(master_name, tmp_path):
    fixture_dir = FIXTURES / master_name
    transformers_bitnet = pytest.importorskip("transformers.integrations.bitnet")
    out = tmp_path / "p"
    assert run_cli("pack", fixture_dir, out).returncode == 0
    packed = open_checkpoint(out)
    master = open_checkpoint(fixture_dir)
    for name in master.config.quantized_linear_names():
        want = torch.sign(transformers_bitnet.WeightQuant.forward(None, master.tensors[name].load().torch().float()))
        assert int((torch.from_numpy(packed.tensors[name].load().codes) != want.to(torch.int8)).sum()) == 0, name


def test_sharded_output_and_reading(tmp_path):
    out = tmp_path / "sharded"
    r = run_cli("pack", FIXTURES / "llama-master", out, "--max-shard-size", "30KB", "--json")
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
    assert run_cli("pack", out, single).returncode == 0
    a, b = read_all(out), read_all(single / "model.safetensors")
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_side_files_config_and_tying(tmp_path):
    out = tmp_path / "p"
    assert run_cli("pack", FIXTURES / "bitnet-2b4t-master", out).returncode == 0
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
    assert run_cli("pack", FIXTURES / "llama-master", out2, "--scale-dtype", "f32").returncode == 0
    t2 = read_all(out2)
    assert t2["lm_head.weight"].dtype == torch.bfloat16 and t2["lm_head.weight"].shape == (320, 64)
    assert t2["model.layers.0.mlp.up_proj.weight_scale"].dtype == torch.float32


def test_duplicate_config_key_loads(tmp_path):
    text = (FIXTURES / "llama-packed" / "config.json").read_text()
    assert text.count('"quantization_config"') == 2
    r = run_cli("inspect", FIXTURES / "llama-packed", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["config"]["quantization"]["linear_class"] == "bitlinear"
    assert any("more than once" in n for n in info["notes"])


def test_inspect_json(fixture_dir):
    r = run_cli("inspect", fixture_dir, "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["format"] == ("hf-packed" if fixture_dir.name.endswith("packed") else "hf-bf16")
    assert info["ternary_tensors"] == 14
    arch = {"bitnet-2b4t": "bitnet-b1.58", "1bitllm": "1bitllm", "llama": "llama"}[fixture_dir.name.rsplit("-", 1)[0]]
    assert info["architecture"] == arch
    if fixture_dir.name.endswith("packed"):
        row = next(r for r in info["tensors"] if r["name"].endswith("q_proj.weight"))
        assert abs(sum(row["codes"].values()) - 1) < 1e-6 and row["scale"]["value"] > 0


# --- bad input ------------------------------------------------------------------------------


def copy_fixture(tmp_path: Path, name: str) -> Path:
    dst = tmp_path / "src"
    shutil.copytree(FIXTURES / name, dst)
    return dst


def expect_failure(tmp_path: Path, src: Path, *needles: str, cmd: str = "pack") -> str:
    out = tmp_path / "out"
    r = run_cli(cmd, src, out)
    assert r.returncode == 1, (r.stdout, r.stderr)
    line = r.stderr.strip()
    assert "Traceback" not in r.stderr and len(line.splitlines()) == 1, r.stderr
    for n in needles:
        assert n in line, line
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "staging left behind"
    return line


def test_truncated_file(tmp_path):
    src = copy_fixture(tmp_path, "bitnet-2b4t-packed")
    f = src / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    expect_failure(tmp_path, src, "model.safetensors", "truncated")


def test_code_three_rejected(tmp_path):
    src = copy_fixture(tmp_path, "bitnet-2b4t-packed")
    tensors = read_all(src / "model.safetensors")
    name = "model.layers.1.mlp.gate_proj.weight"
    tensors[name][3, 5] |= 0b11
    from safetensors.torch import save_file

    save_file(tensors, str(src / "model.safetensors"), metadata={"format": "pt"})
    expect_failure(tmp_path, src, name, "code 3", "row 3, column 5")


def test_shape_not_matching_config(tmp_path):
    src = copy_fixture(tmp_path, "llama-master")
    cfg = json.loads((src / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (src / "config.json").write_text(json.dumps(cfg))
    expect_failure(tmp_path, src, "model.layers.0.mlp.gate_proj.weight", "does not match the config")


def test_rows_not_multiple_of_four(tmp_path):
    src = tmp_path / "odd"
    from fixtures.make_fixtures import make_checkpoint

    make_checkpoint(src, "llama", "master", hidden=64, intermediate=126, heads=4, kv_heads=2)
    expect_failure(tmp_path, src, "gate_proj.weight", "not a multiple of 4")


@pytest.mark.parametrize("entry", ["../../etc/passwd", "/etc/passwd", "sub/model.safetensors", ".."])
def test_index_entry_outside_directory(tmp_path, entry):
    src = copy_fixture(tmp_path, "llama-master")
    names = list(read_all(src / "model.safetensors"))
    index = {"metadata": {}, "weight_map": {n: "model.safetensors" for n in names}}
    index["weight_map"][names[3]] = entry
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    expect_failure(tmp_path, src, "model.safetensors.index.json", "outside the checkpoint")


def test_pickle_only_checkpoint_refused(tmp_path):
    src = copy_fixture(tmp_path, "llama-master")
    (src / "model.safetensors").unlink()
    torch.save({"x": torch.zeros(2)}, src / "pytorch_model.bin")
    expect_failure(tmp_path, src, "pytorch_model.bin", "pickle")


def test_malformed_header(tmp_path):
    src = copy_fixture(tmp_path, "llama-master")
    data = (src / "model.safetensors").read_bytes()
    (src / "model.safetensors").write_bytes(struct.pack("<Q", 1 << 40) + data[8:])
    expect_failure(tmp_path, src, "model.safetensors", "header length")


def test_wrong_dtype_in_master(tmp_path):
    src = copy_fixture(tmp_path, "llama-master")
    tensors = read_all(src / "model.safetensors")
    tensors["model.norm.weight"] = tensors["model.norm.weight"].to(torch.int32)
    from safetensors.torch import save_file

    save_file(tensors, str(src / "model.safetensors"))
    expect_failure(tmp_path, src, "model.norm.weight", "I32")


def test_inputs_never_written(tmp_path):
    src = copy_fixture(tmp_path, "bitnet-2b4t-master")
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in src.iterdir()}
    assert run_cli("pack", src, tmp_path / "o").returncode == 0
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in src.iterdir()} == before


# --- usage ----------------------------------------------------------------------------------


def test_existing_output_needs_force(tmp_path):
    out = tmp_path / "o"
    assert run_cli("pack", FIXTURES / "llama-master", out).returncode == 0
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    r = run_cli("pack", FIXTURES / "llama-master", out)
    assert r.returncode == 2 and "--force" in r.stderr
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    assert run_cli("pack", FIXTURES / "llama-master", out, "--force", "--linear-class", "bitlinear").returncode == 0
    assert json.loads((out / "config.json").read_text())["quantization_config"]["linear_class"] == "bitlinear"


def test_output_inside_input_refused(tmp_path):
    src = copy_fixture(tmp_path, "llama-master")
    for dst in (src, src / "inner", tmp_path):
        r = run_cli("pack", src, dst, "--force")
        assert r.returncode == 2, (dst, r.stderr)
    assert listing(src) == listing(FIXTURES / "llama-master")


@pytest.mark.parametrize("args", [["--linear-class", "nope"], ["--max-shard-size", "lots"], ["--dtype", "int4"]])
def test_bad_options_exit_2(tmp_path, args):
    r = run_cli("pack", FIXTURES / "llama-master", tmp_path / "o", *args)
    assert r.returncode == 2 and not (tmp_path / "o").exists()


def test_unknown_format_and_missing_input(tmp_path):
    assert run_cli("convert", FIXTURES / "llama-master", tmp_path / "o", "--to", "onnx").returncode == 2
    assert run_cli("pack", tmp_path / "nothing", tmp_path / "o").returncode == 2


def test_debug_shows_traceback(tmp_path):
    src = copy_fixture(tmp_path, "bitnet-2b4t-packed")
    (src / "model.safetensors").write_bytes(b"\x00" * 4)
    r = run_cli("--debug", "pack", src, tmp_path / "o")
    assert r.returncode == 1 and "Traceback" in r.stderr


def test_interrupted_run_leaves_nothing(tmp_path):
    """SIGTERM in the middle of writing: no DST, no staging directory."""
    src = tmp_path / "big"
    from fixtures.make_fixtures import make_checkpoint

    make_checkpoint(src, "llama", "master", hidden=1024, intermediate=4096, layers=8, heads=8, kv_heads=8)
    out = tmp_path / "o"
    proc = subprocess.Popen([sys.executable, "-m", "bitconvert", "pack", str(src), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not any(p.name.endswith(".partial") for p in tmp_path.iterdir()):
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    if out.exists():
        pytest.skip("conversion finished before the signal arrived")
    assert proc.returncode == 130, err
    assert not out.exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_float_ternary_weights_in_packed_checkpoint(tmp_path):
    """transformers' offline AutoBitLinear also accepts unpacked codes as floats; we read them too."""
    src = copy_fixture(tmp_path, "bitnet-2b4t-packed")
    from safetensors.torch import save_file

    from bitconvert.ternary import unpack_codes

    tensors = read_all(src / "model.safetensors")
    name = "model.layers.0.self_attn.k_proj.weight"
    packed = tensors[name].clone()
    tensors[name] = torch.from_numpy(unpack_codes(packed.numpy())).to(torch.bfloat16)
    save_file(tensors, str(src / "model.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "o"
    assert run_cli("pack", src, out).returncode == 0
    assert torch.equal(read_all(out)[name], packed)


def _peak_rss_mb(*args: str) -> float:
    """Peak RSS of ``bitconvert ARGS`` in its own process, measured by the benchmarks' script."""
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "peakmem.py"
    done = subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True, timeout=600)
    r = json.loads(done.stdout)
    assert r["returncode"] == 0, r["stderr"]
    return r["peak_rss_mb"]


def test_peak_memory_is_bounded_by_a_tensor_not_the_model(tmp_path):
    """Packing a 0.5 GB master costs about one tensor of memory above the interpreter's own."""
    from fixtures.make_fixtures import make_checkpoint

    src = make_checkpoint(tmp_path / "m", "llama", "master", hidden=1024, intermediate=4096, layers=16,
                          heads=8, kv_heads=8)
    model_mb = (src / "model.safetensors").stat().st_size / 2**20
    assert model_mb > 450
    # the same command on one layer of the same widths: torch, numba (the weights are big enough
    # for the compiled path) and the pipeline loaded, a sixteenth of the tensor data
    one = make_checkpoint(tmp_path / "one", "llama", "master", hidden=1024, intermediate=4096, layers=1,
                          heads=8, kv_heads=8)
    baseline = _peak_rss_mb("pack", one, tmp_path / "one-packed")
    peak = _peak_rss_mb("pack", src, tmp_path / "p")
    largest_mb = 4096 * 1024 * 4 / 2**20  # one fp32 working copy of the largest weight: 16 MB
    print(f"\nmodel {model_mb:.0f} MB, baseline {baseline:.0f} MB, pack peak {peak:.0f} MB")
    assert peak - baseline < 8 * largest_mb, (peak, baseline)
