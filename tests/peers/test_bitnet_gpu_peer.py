"""``--to bitnet-gpu`` against microsoft/BitNet's own ``gpu/`` converter, run here on a CPU.

The peer (``gpu/convert_safetensors.py`` then ``gpu/convert_checkpoint.py`` at 16da220) runs as it
is, with the stand-ins ``tests/peer_tools.py`` lists (GPU_DRIVER: a config entry for the test
master's depth, import-only xformers and libbitnet.so stand-ins, ModelArgs for non-2B-4T widths).
Two masters: the tiny 2B-4T-style fixture, and one layer of BitNet b1.58 2B-4T's real widths
(hidden 2560, 20/5 heads, ffn 6912: the converter's own ModelArgs defaults, so no G3).
"""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest
from peer_tools import run_gpu_converter

from bitconvert.convert import convert
from bitconvert.formats import open_checkpoint
from bitconvert.formats.bitnet_gpu.layout import FP16_FILE, INT2_FILE
from bitconvert.ternary.recipes import bitnet_gpu_quantize
from conftest import FIXTURES, make_checkpoint, run_cli

FILES = (INT2_FILE, FP16_FILE)


@pytest.fixture(scope="module")
def peer_runs(tmp_path_factory):
    """(master, the peer's output folder) per case, each converted once."""
    root = tmp_path_factory.mktemp("gpu-peer")
    shapes = make_checkpoint(root / "master-2b4t-shapes", "bitnet-2b4t", "master", hidden=2560, intermediate=6912,
                             layers=1, heads=20, kv_heads=5, seed=3)  # fmt: skip
    masters = {"tiny": FIXTURES / "bitnet-2b4t-master", "2b4t-shapes": shapes}
    return {case: (m, run_gpu_converter(m, root / f"peer-{case}")) for case, m in masters.items()}


@pytest.mark.parametrize("case", ["tiny", "2b4t-shapes"])
def test_recipe_bitnet_gpu_writes_the_converters_bytes(peer_runs, case, tmp_path):
    master, peer = peer_runs[case]
    out = tmp_path / "gpu"
    result = convert(master, out, "bitnet-gpu", {"recipe": "bitnet-gpu"})
    for name in FILES:
        ours, theirs = (out / name).read_bytes(), (peer / name).read_bytes()
        assert hashlib.sha256(ours).hexdigest() == hashlib.sha256(theirs).hexdigest(), (case, name, len(ours), len(theirs))
    assert result.report.details["recipe"] == "bitnet-gpu" and not result.report.warnings
    # the default recipe (fp32 absmean) is not the converter's bf16 arithmetic: the comparison above can fail
    convert(master, tmp_path / "default", "bitnet-gpu")
    assert (tmp_path / "default" / INT2_FILE).read_bytes() != (peer / INT2_FILE).read_bytes()


@pytest.mark.parametrize("case", ["tiny", "2b4t-shapes"])
def test_the_converters_files_read_back_to_its_codes_and_scales(peer_runs, case, tmp_path):
    """The peer's own output (with the master's config.json beside it) reads as the codes and bf16
    scales its arithmetic gives each HF weight (q/k rows back in HF order, parts split)."""
    master, peer = peer_runs[case]
    folder = tmp_path / "peer"
    folder.mkdir()
    for name in FILES + ("config.json",):
        shutil.copyfile((master if name == "config.json" else peer) / name, folder / name)
    got, src = open_checkpoint(folder), open_checkpoint(master)
    assert got.format == "bitnet-gpu"
    quantized = [n for n in src.tensors if src.is_quantized_linear(n)]
    assert len(quantized) == 7 * src.config.num_hidden_layers
    for name in quantized:
        want = bitnet_gpu_quantize(src.tensors[name].load())
        have = got.tensors[name].load()
        assert np.array_equal(have.codes, want.codes), name
        assert have.scale == want.scale, (name, have.scale, want.scale)
    for name in src.tensors:
        if not src.is_quantized_linear(name):
            assert np.array_equal(got.tensors[name].load().data, src.tensors[name].load().data), name


def test_the_converters_output_alone_is_refused_in_one_line(peer_runs):
    _, peer = peer_runs["tiny"]
    r = run_cli("inspect", peer)
    assert r.returncode == 1 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(peer) in lines[0] and "config.json" in lines[0], r.stderr


def test_the_gpu_model_loads_both_files_strictly(tmp_path):
    """gpu/model.py's Transformer, kernel and float variants, takes every tensor of the files
    ``--to bitnet-gpu`` writes (strict load_state_dict: no key missing or left over, shapes equal)."""
    import json

    from peer_tools import load_in_gpu_model

    out = tmp_path / "gpu"
    convert(FIXTURES / "bitnet-2b4t-master", out, "bitnet-gpu")
    loaded = load_in_gpu_model(out, json.loads((out / "config.json").read_text()))
    int2 = loaded[INT2_FILE]
    assert int2["layers.0.attention.wqkv.weight"] == ["torch.int8", [128, 16]]
    assert int2["layers.0.attention.wqkv.weight_scale"] == ["torch.bfloat16", [4]]
    assert loaded[FP16_FILE]["layers.1.feed_forward.w13.weight"][1] == [256, 64]
    # and a file with a key too few is refused by that model (the load above can fail)
    import torch

    state = torch.load(out / INT2_FILE, weights_only=True)
    del state["norm.weight"]
    torch.save(state, out / INT2_FILE)
    with pytest.raises(AssertionError, match="Missing key"):
        load_in_gpu_model(out, json.loads((out / "config.json").read_text()))


def test_verify_reproduce_names_the_converters_recipe(peer_runs, tmp_path):
    """``verify PEER --reproduce MASTER`` rebuilds the converter's files with each recipe: bitnet-gpu
    reproduces them bit for bit, transformers' fp32 arithmetic differs in some codes."""
    from bitconvert.verify.reproduce import verify_reproduce

    master, peer = peer_runs["tiny"]
    folder = tmp_path / "peer"
    folder.mkdir()
    for name in FILES:
        shutil.copyfile(peer / name, folder / name)
    shutil.copyfile(master / "config.json", folder / "config.json")
    report = verify_reproduce(folder, master)
    assert report.passed and report.figures["reproducing_recipes"] == ["bitnet-gpu"]
    tried = report.figures["recipes"]
    assert tried["transformers"]["codes_differing"] > 0 and tried["bitnet-gpu"]["codes_differing"] == 0
