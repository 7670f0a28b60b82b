"""BitNet Embeddings (Qwen3 and Gemma3 backbones) through every layout bitconvert writes.

The masters are the tiny fixtures (``fixtures/make_embedding_fixtures.py``): real tensor names without
a ``model.`` prefix, a ``<proj>.norm.weight`` before every projection, Gemma3's ``(1 + w)`` norms, and
the sentence-transformers side files. Round trips keep every code, scale and norm bit for bit; a norm
the target cannot hold exactly is refused unless ``--allow-lossy``; side files travel, links out of
the source are refused; Nanotron and the runtime refuse in one line.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FIXTURES, read_all, run_cli
from safetensors.torch import load_file, save_file

from bitconvert.convert import convert
from bitconvert.dtypes import Dense
from bitconvert.errors import CheckpointError
from bitconvert.formats import open_checkpoint
from bitconvert.formats.gguf.parser import GGUFFile
from bitconvert.model.config import ModelConfig
from bitconvert.ternary import unpack_codes
from bitconvert.ternary.quantize import absmean_quantize
from fixtures.make_embedding_fixtures import GEMMA3, QWEN3

MASTERS = {QWEN3: FIXTURES / f"{QWEN3}-master", GEMMA3: FIXTURES / f"{GEMMA3}-master"}
KINDS = [QWEN3, GEMMA3]
PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
               "mlp.up_proj", "mlp.down_proj")  # fmt: skip
ST_FILES = ("modules.json", "1_Pooling/config.json", "config_sentence_transformers.json", "sentence_bert_config.json")


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> dict[str, Path]:
    out = {}
    for kind in KINDS:
        out[kind] = tmp_path_factory.mktemp("packed") / kind
        convert(MASTERS[kind], out[kind], "hf-packed")
    return out


# --- the records ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_the_families_read_the_masters_as_their_records_say(kind):
    ckpt = open_checkpoint(MASTERS[kind])
    cfg, family = ckpt.config, ckpt.config.family
    assert family.key == {QWEN3: "qwen3-embedding", GEMMA3: "gemma3-embedding"}[kind]
    assert family.task == "embedding" and not family.nanotron and family.prefix == ""
    stored = set(load_file(str(MASTERS[kind] / "model.safetensors")))
    assert set(ckpt.tensors) == stored  # the names as saved, no prefix added or dropped
    assert {f"layers.0.{p}.norm.weight" for p in PROJECTIONS} <= stored
    assert cfg.head_dim == 128 != cfg.hidden_size // cfg.num_attention_heads
    quantized = {n for n in ckpt.tensors if ckpt.is_quantized_linear(n)}
    assert quantized == {f"layers.{i}.{p}.weight" for i in range(cfg.num_hidden_layers) for p in PROJECTIONS}
    offsets = cfg.norm_offsets()
    if kind == GEMMA3:  # its own norms compute (1 + w); the per-projection norms are standard
        assert cfg.hidden_act == "gelu_pytorch_tanh" and family.embedding_scale == "sqrt_hidden"
        assert cfg.layer_types == ("sliding_attention", "full_attention") and cfg.sliding_window == 4
        assert cfg.query_pre_attn_scalar == 256.0 and cfg.rope_local_theta == 10000.0 and cfg.rope_theta == 1e6
        assert "norm.weight" in offsets and "layers.1.self_attn.k_norm.weight" in offsets
        assert all(offsets[n] == 1.0 for n in offsets) and not any(".norm.weight" in n for n in offsets)
        assert len(offsets) == 1 + cfg.num_hidden_layers * 6
    else:
        assert cfg.hidden_act == "silu" and offsets == {} and cfg.layer_types == () and cfg.sliding_window is None


def _config(kind: str) -> dict:
    return json.loads((MASTERS[kind] / "config.json").read_text())


def test_config_keys_in_every_spelling():
    """transformers 5 re-saves RoPE bases under rope_parameters (Gemma3: per layer type); Qwen3 without
    head_dim takes its class default 128; Gemma3 without layer_types takes its sliding pattern."""
    g = _config(GEMMA3)
    for key in ("rope_theta", "rope_local_base_freq"):
        g.pop(key)
    g["rope_parameters"] = {"full_attention": {"rope_type": "default", "rope_theta": 5e5},
                            "sliding_attention": {"rope_type": "default", "rope_theta": 2e4}}  # fmt: skip
    g.pop("layer_types")
    g["num_hidden_layers"], g["sliding_window_pattern"] = 6, 3
    cfg = ModelConfig.from_hf_dict(g)
    assert (cfg.rope_theta, cfg.rope_local_theta) == (5e5, 2e4)
    assert cfg.layer_types == ("sliding_attention", "sliding_attention", "full_attention") * 2
    back = cfg.to_hf_dict(None, "BF16")
    assert back["rope_parameters"]["full_attention"]["rope_theta"] == 5e5 and "rope_theta" not in back
    assert "hidden_act" not in back and back["hidden_activation"] == "gelu_pytorch_tanh"
    q = _config(QWEN3)
    q.pop("head_dim")
    q["rope_parameters"] = {"rope_type": "default", "rope_theta": q.pop("rope_theta")}
    cfg = ModelConfig.from_hf_dict(q)
    assert cfg.head_dim == 128 and cfg.rope_theta == 1e6


@pytest.mark.parametrize(
    "kind,edit,words",
    [
        (GEMMA3, {"layer_types": ["sliding_attention", "dense"]}, "layer_types must be a list"),
        (GEMMA3, {"layer_types": ["full_attention"]}, "layer_types lists 1 layers"),
        (GEMMA3, {"sliding_window": "4"}, "sliding_window must be a whole number"),
        (GEMMA3, {"query_pre_attn_scalar": -1}, "query_pre_attn_scalar must be a finite positive"),
        (GEMMA3, {"rope_parameters": {"full_attention": 3}}, "rope_parameters.full_attention must be an object"),
        (QWEN3, {"use_sliding_window": "yes"}, "use_sliding_window must be true or false"),
        (QWEN3, {"head_dim": 1.5}, "head_dim must be a whole number"),
    ],
)
def test_bad_config_keys_are_one_line(kind, edit, words, tmp_path):
    src = tmp_path / "m"
    shutil.copytree(MASTERS[kind], src)
    (src / "config.json").write_text(json.dumps({**_config(kind), **edit}))
    with pytest.raises(CheckpointError, match=words) as err:
        open_checkpoint(src)
    assert "config.json" in str(err.value) and "\n" not in str(err.value)


# --- hf-packed and back ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_packed_holds_the_same_names_packed_codes_and_every_norm(kind, packed):
    master, out = read_all(MASTERS[kind]), read_all(packed[kind])
    for name, value in master.items():
        if name.endswith("_proj.weight"):
            codes, mean = absmean_quantize(Dense.from_torch(value))
            assert out[name].dtype == torch.uint8 and np.array_equal(unpack_codes(out[name].numpy()), codes), name
            scale = out[name[: -len("weight")] + "weight_scale"]
            assert scale.to(torch.float32).item() == torch.tensor(float(mean)).to(torch.bfloat16).float().item()
        else:  # norms (per-projection ones included) and the embedding, untouched
            assert out[name].dtype == value.dtype and torch.equal(out[name], value), name
    assert set(out) == set(master) | {n[: -len("weight")] + "weight_scale" for n in master if n.endswith("_proj.weight")}
    for name in ST_FILES:
        assert (packed[kind] / name).read_bytes() == (MASTERS[kind] / name).read_bytes(), name
    done = run_cli("verify", packed[kind], "--against", MASTERS[kind])
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("kind", KINDS)
def test_unpack_and_pack_again_is_byte_identical(kind, packed, tmp_path):
    convert(packed[kind], tmp_path / "master", "hf-bf16")
    convert(tmp_path / "master", tmp_path / "again", "hf-packed")
    a, b = read_all(packed[kind]), read_all(tmp_path / "again")
    assert set(a) == set(b) and all(a[n].dtype == b[n].dtype and torch.equal(a[n], b[n]) for n in a)


# --- GGUF ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("gguf_type", ["tq2_0", "tq1_0", "i2_s", "f16", "f32"])
def test_packed_gguf_packed_master_keeps_every_code_scale_and_norm(kind, gguf_type, packed, tmp_path):
    convert(packed[kind], tmp_path / "m.gguf", "gguf", {"gguf_type": gguf_type, "embed_type": "bf16"})
    convert(tmp_path / "m.gguf", tmp_path / "back", "hf-packed")
    a, b = read_all(packed[kind]), read_all(tmp_path / "back")
    assert set(a) == set(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name
    for name in ST_FILES:  # recorded in the GGUF, restored beside the weights
        assert (tmp_path / "back" / name).read_bytes() == (packed[kind] / name).read_bytes(), name
    convert(tmp_path / "back", tmp_path / "master", "hf-bf16")
    m, original = read_all(tmp_path / "master"), read_all(MASTERS[kind])
    for name in original:
        if not name.endswith("_proj.weight"):
            assert torch.equal(m[name], original[name]), name


def test_gemma_norms_are_stored_as_their_gain_exactly(tmp_path):
    """GGUF holds 1 + w for Gemma3's own norms (llama.cpp multiplies by it), w for the others, in F32."""
    convert(MASTERS[GEMMA3], tmp_path / "m.gguf", "gguf", {"gguf_type": "i2_s"})
    f, master = GGUFFile(tmp_path / "m.gguf"), read_all(MASTERS[GEMMA3])
    for hf, gguf, offset in (("norm.weight", "output_norm.weight", 1.0),
                             ("layers.1.post_feedforward_layernorm.weight", "blk.1.post_ffw_norm.weight", 1.0),
                             ("layers.0.self_attn.q_norm.weight", "blk.0.attn_q_norm.weight", 1.0),
                             ("layers.0.mlp.down_proj.norm.weight", "blk.0.ffn_down_norm_in.weight", 0.0)):  # fmt: skip
        stored = f.read_float(gguf)
        assert stored.dtype_name == "F32"
        assert np.array_equal(stored.data, master[hf].float().numpy() + np.float32(offset)), gguf
    assert f.get("gemma3.pooling_type") == 3 and f.get("gemma3.attention.sliding_window") == 4
    assert f.get("tokenizer.ggml.model") == "llama" and f.get("tokenizer.ggml.scores") is not None
    back = open_checkpoint(tmp_path / "m.gguf")
    assert back.config.layer_types == ("sliding_attention", "full_attention")  # the recorded config, exactly
    assert torch.equal(back.tensors["norm.weight"].load().torch().to(torch.bfloat16), master["norm.weight"])


def _with_norm_value(src: Path, dst: Path, name: str, value: float) -> Path:
    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    tensors[name] = tensors[name].clone()
    tensors[name][3] = value
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def test_a_norm_f32_cannot_hold_with_its_offset_is_refused_unless_allowed(tmp_path):
    """w = 1e-8 (bf16): float32(1 + w) rounds it away. Refused naming the tensor; --allow-lossy writes
    it with a warning, and reading back gives the rounded value."""
    src = _with_norm_value(MASTERS[GEMMA3], tmp_path / "src", "layers.0.input_layernorm.weight", 1e-8)
    out = tmp_path / "m.gguf"
    done = run_cli("convert", src, out, "--to", "gguf", "--gguf-type", "i2_s")
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "layers.0.input_layernorm.weight" in done.stderr and "1 of 256 values change when stored as F32 of w + 1" in done.stderr
    assert not out.exists()
    done = run_cli("convert", src, out, "--to", "gguf", "--gguf-type", "i2_s", "--allow-lossy")
    assert done.returncode == 0 and "layers.0.input_layernorm.weight" in done.stdout + done.stderr
    assert open_checkpoint(out).tensors["layers.0.input_layernorm.weight"].load().float32()[3] == 0.0
    # the same value in a per-projection norm (no offset) is exact
    src = _with_norm_value(MASTERS[GEMMA3], tmp_path / "src2", "layers.0.mlp.up_proj.norm.weight", 1e-8)
    assert run_cli("convert", src, tmp_path / "n.gguf", "--to", "gguf", "--gguf-type", "i2_s").returncode == 0


@pytest.mark.parametrize("kind", KINDS)
def test_inspect_and_verify_every_layout(kind, packed, tmp_path):
    convert(packed[kind], tmp_path / "m.gguf", "gguf", {"gguf_type": "i2_s"})
    for src in (MASTERS[kind], packed[kind], tmp_path / "m.gguf"):
        done = run_cli("inspect", src, "--json")
        assert done.returncode == 0, done.stderr
        info = json.loads(done.stdout)
        assert info["architecture"] == f"{'qwen3' if kind == QWEN3 else 'gemma3'}-embedding"
        assert "modules.json" in info["side_files"] and "1_Pooling/config.json" in info["side_files"]
        done = run_cli("verify", src, "--json")
        assert done.returncode == 0, done.stdout
        details = [c["detail"] for c in json.loads(done.stdout)["checks"] if c["name"] == "side_files"]
        assert "sentence-transformers: pooling lasttoken, L2 normalised" in details, details
    done = run_cli("verify", tmp_path / "m.gguf", "--against", MASTERS[kind])
    assert done.returncode == 0, done.stdout


# --- side files --------------------------------------------------------------------------------------


def test_a_module_file_linking_out_of_the_source_is_refused(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(MASTERS[QWEN3], src)
    outside = tmp_path / "secret.json"
    outside.write_text("{}")
    (src / "1_Pooling" / "config.json").unlink()
    (src / "1_Pooling" / "config.json").symlink_to(outside)
    done = run_cli("convert", src, tmp_path / "out", "--to", "hf-packed")
    assert done.returncode == 1 and "outside the checkpoint folder" in done.stderr and "1_Pooling" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("path", ["../elsewhere", "/etc", "a/../../b", "C:\\\\x"])
def test_a_module_path_outside_the_source_is_refused(path, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(MASTERS[QWEN3], src)
    modules = json.loads((src / "modules.json").read_text())
    modules[1]["path"] = path
    (src / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(CheckpointError, match="not a folder inside the checkpoint") as err:
        open_checkpoint(src)
    assert "modules.json" in str(err.value)


# --- what does not hold these models ---------------------------------------------------------------


def test_nanotron_refuses_in_one_line(tmp_path):
    done = run_cli("convert", MASTERS[GEMMA3], tmp_path / "nt", "--to", "nanotron")
    assert done.returncode == 2 and "no Nanotron model holds the gemma3-embedding family" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "nt").exists()


@pytest.mark.parametrize("command", [["run", "--prompt", "hi"], ["logits", "--tokens", "1,2", "--out", "x.npy"]])
def test_run_and_logits_refuse_an_embedding_model_in_one_line(command, tmp_path):
    done = run_cli(command[0], MASTERS[QWEN3], *command[1:], cwd=tmp_path)
    assert done.returncode == 2 and "is an embedding model" in done.stderr and "bitconvert embed" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_upload_dry_run_carries_the_module_folder_and_describes_the_pooling(packed):
    done = run_cli("upload", packed[GEMMA3], "someone/emb", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "1_Pooling/config.json" in done.stdout and "pipeline_tag: feature-extraction" in done.stdout
    assert "| Pooling | lasttoken |" in done.stdout and "| L2 normalisation | yes |" in done.stdout


def test_a_broken_pooling_config_fails_verify_naming_it(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(MASTERS[QWEN3], src)
    cfg = json.loads((src / "1_Pooling" / "config.json").read_text())
    cfg["pooling_mode_lasttoken"] = "yes"
    (src / "1_Pooling" / "config.json").write_text(json.dumps(cfg))
    done = run_cli("verify", src, "--json")
    assert done.returncode == 1
    failed = [c for c in json.loads(done.stdout)["checks"] if not c["passed"]]
    assert len(failed) == 1 and "1_Pooling/config.json" in failed[0]["detail"]
    assert "pooling_mode_lasttoken must be true or false" in failed[0]["detail"]


def test_the_converters_out_of_vocabulary_eos_reads_with_a_note(tmp_path):
    """bitnet.cpp's embedding converter forces EOS 151643 whatever the vocabulary: read, noted, unused."""
    out = tmp_path / "recipe.gguf"
    convert(MASTERS[QWEN3], out, "gguf", {"gguf_type": "i2_s", "recipe": "bitnet.cpp", "allow_lossy": True})
    assert GGUFFile(out).get("tokenizer.ggml.eos_token_id") == 151643
    ckpt = open_checkpoint(out)
    assert any("151643, outside the vocabulary of 384" in n for n in ckpt.notes), ckpt.notes
    assert ckpt.config.eos_token_id is None and ckpt.facts.gguf.pooling_type == 3


def test_verify_target_llama_cpp_names_the_tensors_its_loader_refuses(tmp_path):
    done = run_cli("verify", MASTERS[QWEN3], "--target", "llama.cpp", "--json")
    rule = [c for c in json.loads(done.stdout)["checks"] if c["name"] == "target.llama.cpp.known_tensors"]
    assert len(rule) == 1 and not rule[0]["passed"] and "attn_q_norm_in" in rule[0]["detail"]
    assert rule[0]["tensor"] == "layers.0.self_attn.q_proj.norm.weight"
    done = run_cli("verify", FIXTURES / "bitnet-2b4t-256-packed", "--target", "llama.cpp", "--json")
    rule = [c for c in json.loads(done.stdout)["checks"] if c["name"] == "target.llama.cpp.known_tensors"]
    assert len(rule) == 1 and rule[0]["passed"]


def test_qwen3_gguf_tokenizer_appends_the_end_token_as_the_original(tmp_path):
    """Last-token pooling reads the token the post-processor appends: the GGUF says add_eos, and the
    tokenizer.json rebuilt from it encodes as the original does."""
    from tokenizers import Tokenizer

    convert(MASTERS[QWEN3], tmp_path / "m.gguf", "gguf", {"gguf_type": "i2_s", "embed_type": "bf16"})
    f = GGUFFile(tmp_path / "m.gguf")
    original = Tokenizer.from_file(str(MASTERS[QWEN3] / "tokenizer.json"))
    end = original.token_to_id("<|endoftext|>")
    assert f.get("tokenizer.ggml.add_eos_token") is True and f.get("tokenizer.ggml.eos_token_id") == end
    assert f.get("tokenizer.ggml.pre") == "qwen2"
    ckpt = open_checkpoint(tmp_path / "m.gguf")  # its rebuilt side files live as long as it does
    rebuilt = Tokenizer.from_file(str(ckpt.side_file_names()["tokenizer.json"]))
    for text in ("query: What is BitNet? 12345", "Embeddings map texts\n\n  to vectors!"):
        ids = original.encode(text).ids
        assert ids[-1] == end and rebuilt.encode(text).ids == ids, text


@pytest.mark.parametrize(
    "recorded,words",
    [
        ({"modules.json": "[]", "1_Pooling/config.json": "{}"}, None),
        ({"../modules.json": "[]"}, "not a folder inside the checkpoint"),
        ({"notes.txt": "x"}, "not a sentence-transformers file"),
        ({"modules.json": "\udcc7"}, "not valid UTF-8"),  # a GGUF string holding bytes that are not UTF-8
        ({"1_Pooling/\ud800.json": "{}"}, "not valid UTF-8"),
    ],
)
def test_recorded_side_files_are_checked_as_read(recorded, words):
    from types import SimpleNamespace

    from bitconvert.formats.gguf.metadata import KEY_SIDE_FILES, read_side_files

    raw = json.dumps(recorded)
    f = SimpleNamespace(path=Path("m.gguf"), get=lambda key: raw if key == KEY_SIDE_FILES else None)
    if words is None:
        assert read_side_files(f) == recorded
    else:
        with pytest.raises(CheckpointError, match=words):
            read_side_files(f)
