"""Reading Nanotron checkpoints, including the ones Nanotron itself wrote (plain LlamaConfig, no
bitconvert record, numpy-style shapes; lost sub-norms and rope_theta reported as warnings): every
entry says what it is, and opening reads headers only."""

from __future__ import annotations

import json

import torch
from conftest import FIXTURES, cli, read_all
from nanotron_tools import SHARD, count_row_reads, shard, to
from safetensors.torch import save_file

from bitconvert.formats import open_checkpoint


def test_a_checkpoint_nanotron_wrote_reads_without_custom_metas(tmp_path, nanotron_masters):
    """A checkpoint Nanotron itself wrote: upstream LlamaConfig, no bitconvert record, numpy-style shapes."""
    nt = tmp_path / "nt"
    to(nanotron_masters["llama"], nt, "nanotron", tp=2, flavor="main")
    mc = json.loads((nt / "model_config.json").read_text())
    assert mc["is_llama_config"] and mc["rope_theta"] == 500000.0 and mc["rope_interleaved"] is False
    (nt / "checkpoint_metadata.json").unlink()
    f = nt / "model/model/decoder/0/pp_block/attn/qkv_proj" / SHARD.format(r=1, t=2)
    data, meta = shard(f)
    meta["unsharded_shape"] = "(np.int64(192), 64)"
    save_file({"data": data}, str(f), metadata=meta)
    ckpt = open_checkpoint(nt)
    assert ckpt.format == "nanotron" and ckpt.config.family.key == "llama"
    assert ckpt.config.rope_theta == 500000.0 and any("plain Llama" in n for n in ckpt.notes)
    hf = read_all(nanotron_masters["llama"])
    for name, entry in ckpt.tensors.items():
        assert torch.equal(entry.load().torch(), hf[name]), name


def test_a_checkpoint_that_lost_parts_in_nanotron_reads_with_warnings(tmp_path, nanotron_masters):
    """What Nanotron saves of a 2B-4T model: no sub-norms, no rope_theta, custom_metas null. Warnings, not notes."""
    nt = tmp_path / "nt"
    to(nanotron_masters["bitnet-2b4t"], nt, "nanotron", tp=2)
    meta_path = nt / "checkpoint_metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["custom_metas"] = None
    meta_path.write_text(json.dumps(meta))
    (nt / "bitconvert_kept.safetensors").unlink()  # Nanotron's save has only the model folder
    ckpt = open_checkpoint(nt)
    assert ckpt.config.family.key == "llama" and ckpt.config.hidden_act == "relu2"
    assert ckpt.config.rope_theta == 10000.0 and any("no bitconvert record" in n for n in ckpt.notes)
    assert len(ckpt.warnings) == 2
    assert any("relu2 without the attention/FFN sub-norms" in w for w in ckpt.warnings)
    assert any("rope_theta is absent" in w for w in ckpt.warnings)
    hf = read_all(nanotron_masters["bitnet-2b4t"])
    assert all(torch.equal(e.load().torch(), hf[n]) for n, e in ckpt.tensors.items())
    r = cli("convert", nt, tmp_path / "back", "--to", "hf-bf16", "--json")
    assert r.returncode == 0, r.stderr
    warnings = json.loads(r.stdout)["warnings"]
    assert len(warnings) == 2 and all(w.startswith("source: ") for w in warnings)


def test_every_entry_says_what_it_is(tmp_path):
    """Latent linears LATENT, norms and embeddings DENSE, weights behind a recorded scale TERNARY; stored
    bytes are the floats in HF row order, counted against the written magnitude where recorded."""
    from bitconvert.formats.nanotron.flavors import FLAVORS
    from bitconvert.formats.nanotron.options import FLAVOR_CHOICES, VERSIONS
    from bitconvert.model.checkpoint import Kind

    assert tuple(FLAVORS) == FLAVOR_CHOICES and VERSIONS == ("1.4", "1.5")
    to(FIXTURES / "llama-master", tmp_path / "m", "nanotron", tp=2)
    ckpt = open_checkpoint(tmp_path / "m")
    assert ckpt.facts.nanotron.tensor_parallel == 2 and ckpt.facts.nanotron.flavor == "pr178"
    assert ckpt.facts.nanotron.version == "1.4" and ckpt.facts.linear_class is None
    hf = read_all(FIXTURES / "llama-master")
    for name, entry in ckpt.tensors.items():
        assert entry.kind is (Kind.LATENT if ckpt.is_quantized_linear(name) else Kind.DENSE), name
        stored = entry.stored()
        assert stored.layout == "floats" and stored.dtype_name == "BF16"
        assert bytes(stored.data) == hf[name].view(torch.int16).numpy().tobytes(), name
    to(FIXTURES / "llama-packed", tmp_path / "p", "nanotron", tp=2, allow_approximate=True)
    ckpt = open_checkpoint(tmp_path / "p")
    packed = open_checkpoint(FIXTURES / "llama-packed")
    assert ckpt.facts.linear_class.value == "bitlinear"
    for name in ckpt.config.quantized_linear_names():
        entry, want = ckpt.tensors[name], packed.tensors[name].load()
        assert entry.kind is Kind.TERNARY and entry.dtype_name == want.scale.dtype_name
        stored = entry.stored()
        assert stored.scale == want.scale and stored.counts() == packed.tensors[name].stored().counts()
        got = entry.load()
        assert got.scale == want.scale and (got.codes == want.codes).all()


def test_opening_reads_no_tensor_data(tmp_path, monkeypatch):
    """Opening (what `inspect --no-stats` does) reads headers only, even where scales are recorded."""
    nt = tmp_path / "nt"
    to(FIXTURES / "llama-packed", nt, "nanotron", tp=2, allow_approximate=True)
    reads = count_row_reads(monkeypatch)
    ckpt = open_checkpoint(nt)
    assert sum(e.ternary for e in ckpt.tensors.values()) == 14 and reads == []
    ckpt.tensors["model.layers.0.self_attn.o_proj.weight"].load()
    assert sum(reads) == 64 * 64 * 2  # the one tensor asked for, once
    r = cli("inspect", "--no-stats", "--json", nt)
    assert r.returncode == 0, r.stderr
