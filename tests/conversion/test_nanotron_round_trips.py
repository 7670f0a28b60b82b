"""Nanotron: masters go there and back bit for bit at any TP size and either RoPE row order; resharding
equals converting directly, byte for byte; the shards are Nanotron's sharding rule (slices and
metadata written out by hand); tied embeddings are stored once, sub-norms kept beside the model
(or read from the old per-layer folders)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import read_all
from nanotron_tools import KINDS, SHARD, master_dtype, shard, to, tree
from safetensors.torch import save_file

from bitconvert.formats import open_checkpoint


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("tp", [1, 2, 4])
def test_a_master_round_trip_is_bit_identical(tmp_path, nanotron_masters, kind, tp):
    src, nt, back = nanotron_masters[kind], tmp_path / "nt", tmp_path / "back"
    dtype = master_dtype(kind)
    report = to(src, nt, "nanotron", dtype, tp=tp)
    assert report.ternary_sources == {"latent": 14}
    kept = read_all(nt / "bitconvert_kept.safetensors") if kind != "llama" else {}  # the sub-norms
    assert sorted(kept) == sorted(n for n in read_all(src) if "sub_norm" in n or n.endswith(("_ln.weight", "ffn_layernorm.weight")))
    assert len(list((nt / "model/model").rglob("*.safetensors"))) + len(kept) == report.tensors
    to(nt, back, "hf-bf16", dtype)
    a, b = read_all(src), read_all(back)
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name
    assert json.loads((back / "config.json").read_text())["architectures"] == json.loads(
        (src / "config.json").read_text()
    )["architectures"]
    assert (back / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()


@pytest.mark.parametrize("rope", [True, False])
def test_a_round_trip_is_exact_in_either_rope_layout(tmp_path, nanotron_masters, rope):
    src, nt, back = nanotron_masters["llama"], tmp_path / "nt", tmp_path / "back"
    to(src, nt, "nanotron", tp=2, rope_interleaved=rope, flavor="main")  # the PRs' model interleaves, always
    assert open_checkpoint(nt).facts.nanotron.rope_interleaved is rope
    to(nt, back, "hf-bf16")
    a, b = read_all(src), read_all(back)
    assert all(torch.equal(a[n], b[n]) for n in a)


@pytest.mark.parametrize("kind", ["bitnet-2b4t", "llama"])
def test_resharding_equals_direct_conversion_byte_for_byte(tmp_path, nanotron_masters, kind):
    src = nanotron_masters[kind]
    for tp in (1, 2, 4):
        to(src, tmp_path / f"direct{tp}", "nanotron", tp=tp)
    to(tmp_path / "direct2", tmp_path / "2to1", "nanotron", tp=1)
    to(tmp_path / "direct4", tmp_path / "4to2", "nanotron", tp=2)
    to(tmp_path / "direct1", tmp_path / "1to4", "nanotron", tp=4)
    for got, want in (("2to1", "direct1"), ("4to2", "direct2"), ("1to4", "direct4")):
        a, b = tree(tmp_path / got), tree(tmp_path / want)
        assert sorted(a) == sorted(b)
        for name in a:
            assert a[name] == b[name], f"{got} vs {want}: {name}"


def test_nanotron_to_packed_equals_packing_the_master(tmp_path, nanotron_masters):
    src = nanotron_masters["bitnet-2b4t"]
    to(src, tmp_path / "nt", "nanotron", tp=4)
    to(tmp_path / "nt", tmp_path / "via", "hf-packed")
    to(src, tmp_path / "direct", "hf-packed")
    a, b = read_all(tmp_path / "via"), read_all(tmp_path / "direct")
    assert sorted(a) == sorted(b) and sum(v.dtype == torch.uint8 for v in a.values()) == 14
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name


def test_the_shards_follow_nanotrons_sharding_rule(tiny_checkpoint, tmp_path):
    """Expected slices written out by hand from Nanotron's sharding rule (docs/nanotron.md) for hidden 64, 4 heads of 16, 2 kv heads, I=128."""
    src = tiny_checkpoint("llama", "master", layers=1)
    nt = tmp_path / "nt"
    to(src, nt, "nanotron", tp=2, rope_interleaved=False, flavor="main", nanotron_version="1.4")
    hf = read_all(src)
    q, k, v = (hf[f"model.layers.0.self_attn.{x}_proj.weight"] for x in "qkv")
    gate, up = hf["model.layers.0.mlp.gate_proj.weight"], hf["model.layers.0.mlp.up_proj.weight"]
    o, down = hf["model.layers.0.self_attn.o_proj.weight"], hf["model.layers.0.mlp.down_proj.weight"]
    embed, head = hf["model.embed_tokens.weight"], hf["lm_head.weight"]
    n = "None,None,None"
    expected = {
        # path: {rank: (shard contents, local_global_slices_pairs, unsharded_shape)}
        "decoder/0/pp_block/attn/qkv_proj": {
            0: (
                torch.cat([q[0:32], k[0:16], v[0:16]]),
                f"0,32,None|{n}#0,32,None|{n};32,48,None|{n}#64,80,None|{n};48,64,None|{n}#96,112,None|{n}",
                "(128, 64)",
            ),
            1: (
                torch.cat([q[32:64], k[16:32], v[16:32]]),
                f"0,32,None|{n}#32,64,None|{n};32,48,None|{n}#80,96,None|{n};48,64,None|{n}#112,128,None|{n}",
                "(128, 64)",
            ),
        },
        "decoder/0/pp_block/mlp/gate_up_proj": {
            0: (
                torch.cat([gate[0:64], up[0:64]]),
                f"0,64,None|{n}#0,64,None|{n};64,128,None|{n}#128,192,None|{n}",
                "(256, 64)",
            ),
            1: (
                torch.cat([gate[64:], up[64:]]),
                f"0,64,None|{n}#64,128,None|{n};64,128,None|{n}#192,256,None|{n}",
                "(256, 64)",
            ),
        },
        "decoder/0/pp_block/attn/o_proj": {
            0: (o[:, 0:32], f"{n}|{n}#{n}|0,32,None", "(64, 64)"),
            1: (o[:, 32:64], f"{n}|{n}#{n}|32,64,None", "(64, 64)"),
        },
        "decoder/0/pp_block/mlp/down_proj": {
            0: (down[:, 0:64], f"{n}|{n}#{n}|0,64,None", "(64, 128)"),
            1: (down[:, 64:128], f"{n}|{n}#{n}|64,128,None", "(64, 128)"),
        },
        "token_position_embeddings/pp_block/token_embedding": {
            0: (embed[0:160], f"{n}|{n}#0,160,None|{n}", "(320, 64)"),
            1: (embed[160:320], f"{n}|{n}#160,320,None|{n}", "(320, 64)"),
        },
        "lm_head/pp_block": {
            0: (head[0:160], f"{n}|{n}#0,160,None|{n}", "(320, 64)"),
            1: (head[160:320], f"{n}|{n}#160,320,None|{n}", "(320, 64)"),
        },
    }
    root = nt / "model/model"
    for path, ranks in expected.items():
        assert sorted(p.name for p in (root / path).iterdir()) == [SHARD.format(r=r, t=2) for r in (0, 1)], path
        for r, (data, pairs, shape) in ranks.items():
            got, meta = shard(root / path / SHARD.format(r=r, t=2))
            assert meta == {"version": "1.4", "local_global_slices_pairs": pairs, "unsharded_shape": shape}, path
            assert got.dtype == torch.bfloat16 and torch.equal(got, data), (path, r)
    norms = {
        "decoder/0/pp_block/input_layernorm": "model.layers.0.input_layernorm.weight",
        "decoder/0/pp_block/post_attention_layernorm": "model.layers.0.post_attention_layernorm.weight",
        "final_layer_norm/pp_block": "model.norm.weight",
    }
    for path, name in norms.items():
        assert [p.name for p in (root / path).iterdir()] == ["model_weight.safetensors"]
        got, meta = shard(root / path / "model_weight.safetensors")
        assert meta == {} and torch.equal(got, hf[name])
    folders = sorted(p.parent.relative_to(root).as_posix() for p in root.rglob("*.safetensors"))
    assert sorted(set(folders)) == sorted([*expected, *norms])


def test_interleaved_rope_permutes_q_and_k_rows_within_heads(tmp_path, nanotron_masters):
    nt = tmp_path / "nt"
    to(nanotron_masters["llama"], nt, "nanotron", tp=1)  # default: interleaved, what Nanotron's BitNet model applies
    hf = read_all(nanotron_masters["llama"])
    qkv, _ = shard(nt / "model/model/decoder/0/pp_block/attn/qkv_proj" / SHARD.format(r=0, t=1))
    d = 16  # head_dim: interleaved row 2j of a head is rotate_half row j, row 2j+1 is row j + d/2
    order = [h * d + (j // 2) + (j % 2) * (d // 2) for h in range(4) for j in range(d)]
    assert torch.equal(qkv[0:64], hf["model.layers.0.self_attn.q_proj.weight"][order])
    assert torch.equal(qkv[64:128], hf["model.layers.0.self_attn.k_proj.weight"][order])
    assert torch.equal(qkv[128:192], hf["model.layers.0.self_attn.v_proj.weight"])  # v is not rotated
    meta = json.loads((nt / "checkpoint_metadata.json").read_text())
    assert meta["custom_metas"]["bitconvert"]["rope_interleaved"] is True


def test_the_tied_embedding_is_stored_once_and_sub_norms_kept_beside(tmp_path, nanotron_masters):
    """No Nanotron model has sub-norms: with --allow-lossy they go beside the model, where Nanotron never looks."""
    nt = tmp_path / "nt"
    to(nanotron_masters["bitnet-2b4t"], nt, "nanotron", tp=2)
    root = nt / "model/model"
    assert not (root / "lm_head").exists()  # Nanotron saves a tied weight once, under the embedding
    assert not list(root.rglob("*sub_norm*"))
    hf, kept = read_all(nanotron_masters["bitnet-2b4t"]), read_all(nt / "bitconvert_kept.safetensors")
    assert sorted(kept) == sorted(n for n in hf if "sub_norm" in n)
    assert all(torch.equal(kept[n], hf[n]) for n in kept)
    record = json.loads((nt / "checkpoint_metadata.json").read_text())["custom_metas"]["bitconvert"]
    assert sorted(record["kept"]["tensors"]) == sorted(kept) and len(record["lost"]) == 2  # sub-norms, rope_theta


def test_the_old_layout_with_sub_norm_folders_still_reads(tmp_path, nanotron_masters):
    """bitconvert wrote sub-norms as attn/attn_sub_norm and mlp/ffn_sub_norm folders before flavors existed."""
    nt = tmp_path / "nt"
    to(nanotron_masters["bitnet-2b4t"], nt, "nanotron", tp=1)
    kept = read_all(nt / "bitconvert_kept.safetensors")
    for name, value in kept.items():
        layer, module = name.split(".")[2], "attn/attn_sub_norm" if "attn" in name else "mlp/ffn_sub_norm"
        folder = nt / f"model/model/decoder/{layer}/pp_block/{module}"
        folder.mkdir(parents=True)
        save_file({"data": value}, str(folder / "model_weight.safetensors"))
    (nt / "bitconvert_kept.safetensors").unlink()
    hf = read_all(nanotron_masters["bitnet-2b4t"])
    ckpt = open_checkpoint(nt)
    assert ckpt.config.family.key == "bitnet-b1.58" and not ckpt.warnings
    assert all(torch.equal(e.load().torch(), hf[n]) for n, e in ckpt.tensors.items())
