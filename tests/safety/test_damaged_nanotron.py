"""Damaged Nanotron checkpoints: a missing shard, mixed TP sizes or ranks, overlapping or out-of-range
slices, missing metadata, links out of the checkpoint, a config or layer count that disagrees, two
tensors in one file, weights changed behind their recorded scale: each is one line naming what is
wrong, and no output is left."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import FIXTURES, cli
from safetensors import safe_open
from safetensors.torch import save_file

from bitconvert.convert import convert
from bitconvert.errors import CheckpointError
from bitconvert.formats import open_checkpoint
from bitconvert.ternary import TernaryWeight


SHARD = "model_weight_pp-rank-0-of-1_tp-rank-{r}-of-{t}.safetensors"


def to(src: Path, dst: Path, fmt: str, dtype="BF16", **extra) -> dict:
    """Convert; into Nanotron with the whole Llama layout (pr178) and sub-norms kept beside unless told otherwise."""
    if fmt == "nanotron":
        extra = {"flavor": "pr178", "allow_lossy": True, **extra}
    return convert(src, dst, fmt, {"dtype": dtype, **extra}).report


def shard(path: Path) -> tuple[torch.Tensor, dict]:
    """The tensor and metadata of one Nanotron file, read with the official safetensors library."""
    with safe_open(str(path), "pt") as f:
        assert list(f.keys()) == ["data"]
        return f.get_tensor("data"), (f.metadata() or {})


def _break_missing_shard(nt: Path) -> None:
    (nt / "model/model/decoder/1/pp_block/mlp/down_proj" / SHARD.format(r=1, t=2)).unlink()


def _break_mixed_tp(nt: Path) -> None:
    folder = nt / "model/model/decoder/0/pp_block/attn/o_proj"
    for r in (0, 1):
        os.rename(folder / SHARD.format(r=r, t=2), folder / SHARD.format(r=r, t=4))
    for r in (2, 3):
        shutil.copy(folder / SHARD.format(r=0, t=4), folder / SHARD.format(r=r, t=4))


def _break_mixed_ranks_in_one_param(nt: Path) -> None:
    folder = nt / "model/model/decoder/0/pp_block/attn/o_proj"
    os.rename(folder / SHARD.format(r=1, t=2), folder / SHARD.format(r=1, t=3))


def _break_overlap(nt: Path) -> None:
    f = nt / "model/model/decoder/0/pp_block/mlp/gate_up_proj" / SHARD.format(r=1, t=2)
    data, meta = shard(f)
    meta["local_global_slices_pairs"] = meta["local_global_slices_pairs"].replace("#64,128,None", "#0,64,None")
    save_file({"data": data}, str(f), metadata=meta)


def _break_out_of_range(nt: Path) -> None:
    f = nt / "model/model/token_position_embeddings/pp_block/token_embedding" / SHARD.format(r=1, t=2)
    data, meta = shard(f)
    meta["local_global_slices_pairs"] = meta["local_global_slices_pairs"].replace("160,320", "170,330")
    save_file({"data": data}, str(f), metadata=meta)


def _break_metadata_key(nt: Path) -> None:
    f = nt / "model/model/lm_head/pp_block" / SHARD.format(r=0, t=2)
    data, meta = shard(f)
    del meta["unsharded_shape"]
    save_file({"data": data}, str(f), metadata=meta)


def _break_symlink(nt: Path) -> None:
    outside = nt.parent / "elsewhere"
    shutil.move(nt / "model/model/final_layer_norm/pp_block", outside)
    os.symlink(outside, nt / "model/model/final_layer_norm/pp_block")


def _break_meta_tp(nt: Path) -> None:
    p = nt / "checkpoint_metadata.json"
    p.write_text(p.read_text().replace('"tp": 2', '"tp": 4'))


def _break_extra_layer(nt: Path) -> None:
    shutil.copytree(nt / "model/model/decoder/1", nt / "model/model/decoder/2")


def _break_model_config(nt: Path) -> None:
    p = nt / "model_config.json"
    p.write_text(p.read_text().replace('"hidden_size": 64', '"hidden_size": 128'))


def _break_two_tensors(nt: Path) -> None:
    f = nt / "model/model/decoder/0/pp_block/input_layernorm/model_weight.safetensors"
    data, _ = shard(f)
    save_file({"data": data, "extra": data.clone()}, str(f))


BREAKS = {
    "missing shard": (_break_missing_shard, "missing shard tp-rank-1-of-2"),
    "mixed tp sizes": (_break_mixed_tp, "mismatched ranks"),
    "mixed ranks in one param": (_break_mixed_ranks_in_one_param, "mismatched ranks"),
    "overlapping slices": (_break_overlap, "does not tile"),
    "slice out of range": (_break_out_of_range, "outside a dimension"),
    "metadata key missing": (_break_metadata_key, "lacks 'unsharded_shape'"),
    "symlink outside": (_break_symlink, "points outside the checkpoint"),
    "metadata tp": (_break_meta_tp, "tp=4"),
    "unexpected parameter": (_break_extra_layer, "unexpected parameter"),
    "config disagrees": (_break_model_config, "hidden_size is 128"),
    "two tensors in a file": (_break_two_tensors, "holds one tensor, 'data'"),
}


@pytest.mark.parametrize("case", list(BREAKS))
def test_a_damaged_checkpoint_is_one_line_and_leaves_no_output(tmp_path, nanotron_masters, case):
    nt = tmp_path / "nt"
    to(nanotron_masters["llama"], nt, "nanotron", tp=2)
    breaker, message = BREAKS[case]
    breaker(nt)
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(")) as caught:
        to(nt, tmp_path / "out", "hf-bf16")
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["missing shard", "symlink outside"])
def test_a_damaged_checkpoint_on_the_command_line(tmp_path, nanotron_masters, case):
    nt = tmp_path / "nt"
    to(nanotron_masters["llama"], nt, "nanotron", tp=2)
    breaker, message = BREAKS[case]
    breaker(nt)
    r = cli("convert", nt, tmp_path / "out", "--to", "hf-bf16")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and message in lines[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_weights_changed_behind_their_record_are_one_line_at_load(tmp_path):
    """The recorded scale is checked when a weight is loaded (opening reads no data): a stale record stops."""
    nt = tmp_path / "nt"
    to(FIXTURES / "llama-packed", nt, "nanotron", tp=2, allow_approximate=True)
    assert all(e.ternary for n, e in open_checkpoint(nt).tensors.items() if "_proj" in n)
    f = nt / "model/model/decoder/1/pp_block/mlp/down_proj" / SHARD.format(r=0, t=2)
    data, meta = shard(f)
    save_file({"data": data * 1.5}, str(f), metadata=meta)  # as if edited in place
    ckpt = open_checkpoint(nt)  # still opens: nothing is read yet
    assert isinstance(ckpt.tensors["model.layers.0.mlp.down_proj.weight"].load(), TernaryWeight)
    with pytest.raises(CheckpointError, match="no longer equals the ternary weight") as caught:
        ckpt.tensors["model.layers.1.mlp.down_proj.weight"].load()
    assert "delete that record" in str(caught.value) and "\n" not in str(caught.value)
    r = cli("convert", nt, tmp_path / "out", "--to", "hf-packed")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "no longer equals" in r.stderr
    assert not (tmp_path / "out").exists()
