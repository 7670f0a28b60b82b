"""Nanotron flavors (PR #180, PR #180 at e1c3c1a5, main) and checkpoint versions: side files that fit
each flavor's strict dataclasses, options its code refuses are usage errors, a conversion that
would lose what the flavor cannot hold stops unless --allow-lossy, resharding keeps the source's
flavor, and families are data (a renamed family converts, one Nanotron cannot hold is refused,
an unrecorded one is recognised by its records)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import FIXTURES, cli, lossless_llama, read_all
from nanotron_tools import shard, to, tree
from safetensors.torch import save_file

from bitconvert.convert import convert
from bitconvert.errors import CheckpointError, UsageError
from bitconvert.formats import open_checkpoint


#: PR #180's LlamaBitNetConfig fields, the dataclass Nanotron builds with Cls(**model_config.json).
BITNET_CONFIG_FIELDS = {
    "bos_token_id": int, "eos_token_id": int, "hidden_act": str, "hidden_size": int, "initializer_range": float,
    "intermediate_size": int, "is_bitnet_config": bool, "max_position_embeddings": int, "num_attention_heads": int,
    "num_hidden_layers": int, "num_key_value_heads": int, "pad_token_id": (int, type(None)), "pretraining_tp": int,
    "rms_norm_eps": float, "rope_scaling": (dict, type(None)), "tie_word_embeddings": bool, "use_cache": bool,
    "vocab_size": int,
}


#: main's LlamaConfig fields that bitconvert sets (the rest keep their defaults), in the class's order.
MAIN_LLAMA_CONFIG_FIELDS = {
    "bos_token_id": int, "eos_token_id": int, "hidden_act": str, "hidden_size": int, "initializer_range": float,
    "intermediate_size": int, "is_llama_config": bool, "max_position_embeddings": int, "num_attention_heads": int,
    "num_hidden_layers": int, "attention_bias": bool, "num_key_value_heads": int, "pad_token_id": (int, type(None)),
    "pretraining_tp": int, "rms_norm_eps": float, "rope_scaling": (dict, type(None)), "rope_theta": float,
    "rope_interleaved": bool, "tie_word_embeddings": bool, "use_cache": bool, "vocab_size": int,
}


#: Config sections and their fields present in both checkpoint versions' Config dataclasses (1.4 and 1.5).
YAML_FIELDS = {
    "general": {
        "project", "run", "seed", "step", "consumed_train_samples", "benchmark_csv_path", "ignore_sanity_checks"
    },
    "parallelism": {"dp", "pp", "tp", "pp_engine", "tp_mode", "tp_linear_async_communication", "expert_parallel_size"},
    "model": {"model_config", "init_method", "dtype", "make_vocab_size_divisible_by", "ddp_bucket_cap_mb"},
    "tokenizer": {"tokenizer_name_or_path", "tokenizer_revision", "tokenizer_max_length"},
}


@pytest.mark.parametrize(("flavor", "version"), [("pr180", "1.4"), ("pr178", "1.4"), ("main", "1.5"), ("main", "1.4")])
def test_side_files_fit_each_flavors_dataclasses(tmp_path, nanotron_masters, flavor, version):
    nt = tmp_path / "nt"
    to(nanotron_masters["bitnet-2b4t"], nt, "nanotron", tp=4, nanotron_version=version, flavor=flavor)
    mc = json.loads((nt / "model_config.json").read_text())
    fields = BITNET_CONFIG_FIELDS if flavor != "main" else MAIN_LLAMA_CONFIG_FIELDS
    assert list(mc) == list(fields) and mc["is_bitnet_config" if flavor != "main" else "is_llama_config"] is True
    for key, typ in fields.items():
        assert isinstance(mc[key], typ) and (typ is bool or not isinstance(mc[key], bool)), key
    if flavor == "main":
        assert mc["rope_theta"] == 500000.0 and mc["rope_interleaved"] is False
    doc = yaml.safe_load((nt / "config.yaml").read_text())
    assert set(doc) == set(YAML_FIELDS)  # general, parallelism, model are required; tokenizer too in 1.4
    for section, allowed in YAML_FIELDS.items():
        assert set(doc[section]) <= allowed, section
    assert doc["model"]["model_config"] == mc and doc["parallelism"]["tp"] == 4
    assert doc["model"]["init_method"] == {"std": 0.02} and doc["model"]["dtype"] == "bfloat16"
    # Config.__post_init__'s model checks
    assert mc["num_attention_heads"] % 4 == 0 and mc["num_key_value_heads"] >= 4
    meta = json.loads((nt / "checkpoint_metadata.json").read_text())
    base = {"version", "tp", "dp", "metas", "custom_metas"}
    assert set(meta) == (base | {"cp"} if version == "1.5" else base)
    assert meta["version"] == version and meta["tp"] == 4 and meta["dp"] == 1
    metas = meta["metas"]  # TrainingMetadata.__post_init__: the totals equal the sums over data stages
    assert metas["consumed_train_samples"] == sum(s["consumed_train_samples"] for s in metas["data_stages"])
    assert metas["data_stages"][0]["start_training_step"] == 1
    for f in (nt / "model/model").rglob("model_weight_*.safetensors"):
        assert shard(f)[1]["version"] == version


def test_flavor_options_that_its_code_refuses_are_usage_errors(tmp_path):
    src = FIXTURES / "llama-master"
    with pytest.raises(UsageError, match="loads checkpoint version 1.4 only"):
        to(src, tmp_path / "nt", "nanotron", flavor="pr180", nanotron_version="1.5")
    with pytest.raises(UsageError, match="interleaved RoPE only"):
        to(src, tmp_path / "nt", "nanotron", flavor="pr178", rope_interleaved=False)
    with pytest.raises(UsageError, match="--nanotron-flavor must be one of pr180, pr178, main"):
        to(src, tmp_path / "nt", "nanotron", flavor="pr999")
    r = cli("convert", src, tmp_path / "nt", "--to", "hf-packed", "--nanotron-flavor", "main")
    assert r.returncode == 2 and "--nanotron-flavor does not apply to --to hf-packed" in r.stderr
    assert not (tmp_path / "nt").exists()


def test_a_lossy_conversion_stops_unless_allowed(tmp_path):
    """A 2B-4T model into any Nanotron flavor loses its sub-norms: exit 1 naming them; --allow-lossy warns."""
    src = FIXTURES / "bitnet-2b4t-master"
    for flavor in ("pr180", "pr178", "main"):
        r = cli("convert", src, tmp_path / "nt", "--to", "nanotron", "--nanotron-flavor", flavor)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        assert "would lose the attention and FFN sub-norms" in lines[0] and "--allow-lossy" in lines[0]
        assert not (tmp_path / "nt").exists()
    r = cli("convert", src, tmp_path / "nt", "--to", "nanotron", "--allow-lossy", "--json")
    assert r.returncode == 0, r.stderr
    lost = [w for w in json.loads(r.stdout)["warnings"] if w.startswith("lost in Nanotron (pr180)")]
    assert len(lost) == 3  # sub-norms, decoder norms, rope_theta 500000
    assert any("sub-norms" in w for w in lost) and any("decoder norm" in w for w in lost)
    assert any("rope_theta 500000" in w for w in lost)
    # main holds rope_theta but not BitNet; the PRs at e1c3c1a5 hold the decoder norms
    losses = {}
    for flavor in ("pr178", "main"):
        report = to(src, tmp_path / flavor, "nanotron", flavor=flavor)
        losses[flavor] = [w for w in report.warnings if w.startswith("lost in")]
    assert len(losses["pr178"]) == 2 and any("rope_theta" in w for w in losses["pr178"])
    assert len(losses["main"]) == 2 and any("BitNet b1.58 quantization" in w for w in losses["main"])


def test_a_model_the_flavor_holds_converts_without_allow_lossy(tmp_path):
    """A Llama-architecture BitNet model with RoPE base 10000 fits PR #180 at e1c3c1a5 whole: no warning."""
    src = lossless_llama(tmp_path / "src")
    report = convert(src, tmp_path / "nt", "nanotron", {"flavor": "pr178", "tp": 2}).report
    assert not report.warnings and not (tmp_path / "nt/bitconvert_kept.safetensors").exists()


def test_resharding_keeps_the_source_flavor(tmp_path):
    """Nanotron -> Nanotron changes the TP size only: the source's flavor (and RoPE row order) unless told."""
    src = lossless_llama(tmp_path / "src")
    for tp in (1, 2):
        convert(src, tmp_path / f"direct{tp}", "nanotron", {"flavor": "pr178", "tp": tp})
    report = convert(tmp_path / "direct2", tmp_path / "2to1", "nanotron", {"tp": 1}).report  # no flavor, not lossy
    assert report.details["flavor"] == "pr178" and not report.warnings
    assert tree(tmp_path / "2to1") == tree(tmp_path / "direct1")
    r = cli("convert", tmp_path / "direct1", tmp_path / "cli2", "--to", "nanotron", "--tp", "2")
    assert r.returncode == 0, r.stderr
    assert tree(tmp_path / "cli2") == tree(tmp_path / "direct2")
    # main with interleaved rows, which is not main's default, stays so
    to(FIXTURES / "llama-master", tmp_path / "main2", "nanotron", tp=2, flavor="main", rope_interleaved=True)
    report = convert(tmp_path / "main2", tmp_path / "main1", "nanotron", {"tp": 1, "allow_lossy": True}).report
    assert report.details["flavor"] == "main" and report.details["rope_interleaved"] is True
    assert json.loads((tmp_path / "main1/model_config.json").read_text())["rope_interleaved"] is True
    # a flavor asked for is the one written; the refusal names a flavor only where that one holds the model whole
    with pytest.raises(CheckpointError, match="--nanotron-flavor pr180 would lose the decoder norm") as caught:
        convert(tmp_path / "direct2", tmp_path / "pr180", "nanotron", {"flavor": "pr180"})
    assert str(caught.value).endswith("or try --nanotron-flavor pr178") and "\n" not in str(caught.value)
    with pytest.raises(CheckpointError, match="would lose") as caught:  # rope_theta 500000: pr178 stops too
        convert(FIXTURES / "llama-master", tmp_path / "pr180", "nanotron", {"flavor": "pr180"})
    assert "try --nanotron-flavor" not in str(caught.value)
    assert not (tmp_path / "pr180").exists()


def _renamed_llama(root: Path, architecture: str) -> Path:
    src = shutil.copytree(FIXTURES / "llama-master", root / architecture)
    cfg = json.loads((src / "config.json").read_text())
    cfg["architectures"] = [architecture]
    (src / "config.json").write_text(json.dumps(cfg))
    return src


def test_a_renamed_family_converts_unchanged(tmp_path, monkeypatch):
    """Families are data: a renamed copy of the Llama record goes to Nanotron and back as Llama does."""
    from dataclasses import replace

    from bitconvert.model.families import FAMILIES

    copy = replace(FAMILIES["llama"], key="llama-renamed", hf_architecture="RenamedLlamaForCausalLM", model_types=())
    monkeypatch.setitem(FAMILIES, copy.key, copy)
    src = _renamed_llama(tmp_path, copy.hf_architecture)
    to(src, tmp_path / "nt", "nanotron", tp=2)
    to(FIXTURES / "llama-master", tmp_path / "llama", "nanotron", tp=2)
    a, b = tree(tmp_path / "nt"), tree(tmp_path / "llama")
    assert sorted(a) == sorted(b) and [n for n in a if a[n] != b[n]] == ["checkpoint_metadata.json"]  # hf_config
    assert open_checkpoint(tmp_path / "nt").config.family.key == copy.key
    to(tmp_path / "nt", tmp_path / "back", "hf-bf16")
    assert json.loads((tmp_path / "back/config.json").read_text())["architectures"] == [copy.hf_architecture]
    want, got = read_all(src), read_all(tmp_path / "back")
    assert sorted(want) == sorted(got) and all(torch.equal(want[n], got[n]) for n in want)


def test_a_family_nanotron_cannot_hold_is_refused(tmp_path, monkeypatch):
    from dataclasses import replace

    from bitconvert.model.families import FAMILIES

    family = replace(FAMILIES["llama"], key="no-nanotron", hf_architecture="NoNanotronForCausalLM", nanotron=False)
    monkeypatch.setitem(FAMILIES, family.key, family)
    src = _renamed_llama(tmp_path, family.hf_architecture)
    with pytest.raises(UsageError, match="no Nanotron model holds the no-nanotron family") as caught:
        to(src, tmp_path / "nt", "nanotron")
    assert "\n" not in str(caught.value) and not (tmp_path / "nt").exists()


def test_an_unrecorded_checkpoints_family_comes_from_the_records(tmp_path, monkeypatch):
    """No recorded HF config: the family is the record whose sub-norms and activation the files show."""
    from dataclasses import replace

    from bitconvert.model.families import FAMILIES

    gelu = replace(FAMILIES["1bitllm"], key="gelu-subnorms", hf_architecture="GeluBitnetForCausalLM", hidden_act="gelu")
    monkeypatch.setitem(FAMILIES, gelu.key, gelu)
    nt = tmp_path / "nt"
    to(FIXTURES / "1bitllm-master", nt, "nanotron", tp=1)
    for name, value in read_all(nt / "bitconvert_kept.safetensors").items():  # the sub-norms, as old folders
        layer, module = name.split(".")[2], "attn/attn_sub_norm" if "attn" in name else "mlp/ffn_sub_norm"
        folder = nt / f"model/model/decoder/{layer}/pp_block/{module}"
        folder.mkdir(parents=True)
        save_file({"data": value}, str(folder / "model_weight.safetensors"))
    (nt / "bitconvert_kept.safetensors").unlink()
    meta = json.loads((nt / "checkpoint_metadata.json").read_text())
    meta["custom_metas"] = None
    (nt / "checkpoint_metadata.json").write_text(json.dumps(meta))
    assert open_checkpoint(nt).config.family.key == "1bitllm"  # silu, sub-norms
    mc = json.loads((nt / "model_config.json").read_text())
    (nt / "model_config.json").write_text(json.dumps({**mc, "hidden_act": "gelu"}))
    ckpt = open_checkpoint(nt)
    assert ckpt.config.family.key == gelu.key and ckpt.config.hidden_act == "gelu"
    assert [w for w in ckpt.warnings if "sub-norms" in w] == []  # only rope_theta, which the PRs' config lacks
