"""``verify --target bitnet-gpu``: the facts of microsoft/BitNet's gpu/ model and W2A8 kernel, each
rule passing the checkpoint it should and failing the one it should not."""

from __future__ import annotations

import pytest
from conftest import FIXTURES, make_checkpoint

from bitconvert.convert import convert
from bitconvert.verify.targets import verify_target


def _checks(report) -> dict:
    return {c.name.removeprefix("bitnet-gpu."): c for c in report.checks}


@pytest.fixture(scope="module")
def shapes_2b(tmp_path_factory):
    """One layer of 2B-4T's widths, packed: the kernel's shapes (3840 x 2560, 2560 x 2560, ...)."""
    root = tmp_path_factory.mktemp("gpu-target")
    return make_checkpoint(root / "packed", "bitnet-2b4t", "packed", hidden=2560, intermediate=6912, layers=1,
                           heads=20, kv_heads=5, seed=7)  # fmt: skip


def test_format_and_model_rules(tmp_path):
    convert(FIXTURES / "bitnet-2b4t-master", tmp_path / "gpu", "bitnet-gpu")
    src, gpu = (
        _checks(verify_target(FIXTURES / "bitnet-2b4t-master", "bitnet-gpu")),
        _checks(verify_target(tmp_path / "gpu", "bitnet-gpu")),
    )
    assert not src["format"].passed and "convert with --to bitnet-gpu" in src["format"].detail
    assert gpu["format"].passed and gpu["model"].passed and src["model"].passed
    for checks in (src, gpu):  # 64 wide: not ModelArgs' sizes, and no kernel for its shapes
        assert not checks["model_args"].passed and "hidden_size 64 (ModelArgs: 2560)" in checks["model_args"].detail
        assert not checks["kernel_shapes"].passed and "64 x 64" in checks["kernel_shapes"].detail
        assert checks["fused_scales"].passed  # no weight of a shape the kernel runs
    one = _checks(verify_target(FIXTURES / "1bitllm-master", "bitnet-gpu"))
    assert not one["model"].passed and "this model uses silu" in one["model"].detail
    llama = _checks(verify_target(FIXTURES / "llama-master", "bitnet-gpu"))
    assert not llama["model"].passed and "attn_sub_norm, ffn_sub_norm" in llama["model"].detail


def _with_scales(src, out, k: float, v: float):
    """``src`` with k_proj's and v_proj's scales set to ``k`` and ``v`` times q_proj's."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(src / "model.safetensors")
    p = "model.layers.0.self_attn."
    for x, factor in (("k", k), ("v", v)):
        tensors[p + f"{x}_proj.weight_scale"] = tensors[p + "q_proj.weight_scale"] * factor
    out.mkdir()
    for f in src.iterdir():
        if f.name != "model.safetensors":
            (out / f.name).write_bytes(f.read_bytes())
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    return out


def test_the_kernels_scale_split(shapes_2b, tmp_path):
    """wqkv 3840 x 2560: the kernel scales rows by thirds of 1280, so q rows 1280-2559 get s_k and
    k rows get s_v (1920 rows); with equal q/k/v scales nothing changes."""
    pytest.importorskip("torch")
    differ = _with_scales(shapes_2b, tmp_path / "differ", 2.0, 4.0)
    same = _with_scales(shapes_2b, tmp_path / "same", 1.0, 1.0)
    convert(differ, tmp_path / "gpu", "bitnet-gpu")  # the rule reads the GPU files the same way
    for src in (differ, tmp_path / "gpu"):
        checks = _checks(verify_target(src, "bitnet-gpu"))
        assert checks["kernel_shapes"].passed
        bad = checks["fused_scales"]
        assert not bad.passed and bad.figure == 1920 and bad.tensor == "model.layers.0.self_attn.q_proj.weight"
    assert _checks(verify_target(same, "bitnet-gpu"))["fused_scales"].passed
    only_v = _checks(verify_target(_with_scales(shapes_2b, tmp_path / "v", 1.0, 2.0), "bitnet-gpu"))["fused_scales"]
    assert not only_v.passed and only_v.figure == 640  # k rows 2560-3199 take s_v
