"""The three I2_S byte layouts against bitnet.cpp's own quantize_i2_s, compiled here per build."""

from __future__ import annotations

import numpy as np
import pytest
from peer_tools import compile_quantize_i2_s, run_quantize_i2_s

from bitconvert.formats.gguf import i2s_layouts
from bitconvert.formats.gguf.i2s_layouts import LAYOUTS, decode, encode, indistinguishable, layout_problem


def random_codes(rows: int, cols: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1, 2, (rows, cols)).astype(np.int8)


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("quantize_i2_s")
    return {layout: compile_quantize_i2_s(tmp, layout) for layout in LAYOUTS}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(8, 256), (12, 640), (4, 64 * 3)])
def test_layout_equals_compiled_quantize_i2_s(builds, layout, shape):
    if layout_problem(layout, shape):
        pytest.skip(layout_problem(layout, shape))
    codes = random_codes(*shape, seed=sum(shape))
    magnitude = np.float32(0.0123456)
    values = codes.astype(np.float32) * magnitude  # what bitnet.cpp's converter hands it
    theirs = run_quantize_i2_s(builds[layout], values)
    ours = encode(codes, float(magnitude), layout)
    assert ours.dtype == np.uint8 and len(theirs) == ours.size == codes.size // 4 + 32
    assert bytes(ours) == theirs


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts_round_trip(layout):
    codes = random_codes(16, 384, seed=3)
    raw = encode(codes, 0.5, layout)
    back, scale = decode(raw, tuple(codes.shape), layout)
    assert back.dtype == np.int8 and np.array_equal(back, codes)
    assert scale.dtype == np.float32 and float(scale[0]) == 0.5


def test_layouts_differ_and_wrong_layout_scrambles():
    codes = random_codes(8, 256, seed=4)
    raws = {lay: bytes(encode(codes, 1.0, lay)) for lay in LAYOUTS}
    assert len(set(raws.values())) == 3
    wrong, _ = decode(encode(codes, 1.0, "x86"), (8, 256), "arm")
    assert not np.array_equal(wrong, codes)
    assert not indistinguishable(encode(codes, 1.0, "x86"), (8, 256))


def test_constant_tensor_is_layout_free():
    zeros = np.zeros((8, 256), dtype=np.int8)
    assert indistinguishable(encode(zeros, 1.0, "x86"), (8, 256))


def test_hand_worked_arm_example():
    """The example docs/gguf.md works by hand: 64 values 0..63 with code +1 only at value j = 17
    and -1 at j = 40. ARM: byte j % 16, shift 6 - 2 * (j // 16): j = 17 -> byte 1, shift 4,
    stored 2 -> byte 1 = 0b01_10_01_01 = 0x65; j = 40 -> byte 8, shift 2 (40 // 16 = 2), stored 0 ->
    byte 8 = 0b01_01_00_01 = 0x51; every other byte holds four zeros (stored 1) = 0x55."""
    codes = np.zeros((1, 64), dtype=np.int8)
    codes[0, 17], codes[0, 40] = 1, -1
    raw = encode(codes, 1.0, "arm")[:16].tolist()
    assert raw[1] == 0x65 and raw[8] == 0x51
    assert all(b == 0x55 for i, b in enumerate(raw) if i not in (1, 8))


def test_layout_problems_are_named():
    assert "multiple of 4" in layout_problem("x86-rows", (6, 256))
    assert "multiple of 128" in layout_problem("x86", (1, 64))
    assert layout_problem("arm", (1, 64)) is None
    with pytest.raises(ValueError, match="multiple of 4"):
        i2s_layouts.encode(np.zeros((6, 256), dtype=np.int8), 1.0, "x86-rows")


# --- through the GGUF writer and reader ------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_gguf_files_in_each_layout_read_back_and_say_so(layout, tmp_path):
    from conftest import make_checkpoint, run_cli

    from bitconvert.convert import convert
    from bitconvert.describe import describe_checkpoint
    from bitconvert.formats import open_checkpoint
    from bitconvert.formats.gguf.parser import GGUFFile

    src = make_checkpoint(tmp_path / "src", "llama", "packed", hidden=128, intermediate=256, seed=1)
    out = tmp_path / f"m-{layout}.gguf"
    convert(src, out, "gguf", {"gguf_type": "i2_s", "i2s_layout": layout})
    assert GGUFFile(out).get("bitconvert.i2s_layout") == layout
    a, b = open_checkpoint(src), open_checkpoint(out)
    for name in a.tensors:
        if a.is_quantized_linear(name):
            assert np.array_equal(a.tensors[name].load().codes, b.tensors[name].load().codes), name
    info = describe_checkpoint(out, stats=False)
    assert info["i2s_layout"] == layout
    shown = run_cli("inspect", out, "--no-stats")
    assert f"I2_S ({layout} layout)" in shown.stdout


def test_unrecorded_layout_is_assumed_x86_and_said(tmp_path):
    from conftest import make_checkpoint
    from peer_tools import run_bitnet_converter

    from bitconvert.describe import describe_checkpoint

    master = make_checkpoint(tmp_path / "m", "1bitllm", "master", hidden=128, intermediate=256, seed=2)
    theirs = run_bitnet_converter(master, tmp_path / "theirs.gguf")
    info = describe_checkpoint(theirs, stats=False)
    assert info["i2s_layout"] == "x86 (assumed: not recorded)"
    assert any("cannot tell x86, x86-rows and arm apart" in n for n in info["notes"])


def test_layout_option_is_refused_where_it_does_not_apply(tmp_path):
    from conftest import FIXTURES

    from bitconvert.convert import convert
    from bitconvert.errors import CheckpointError, UsageError

    with pytest.raises(UsageError, match="--i2s-layout applies to --gguf-type i2_s only"):
        convert(FIXTURES / "llama-packed", tmp_path / "a.gguf", "gguf", {"gguf_type": "tq2_0", "i2s_layout": "arm"})
    with pytest.raises(UsageError, match="--i2s-layout must be one of x86, x86-rows, arm"):
        convert(FIXTURES / "llama-packed", tmp_path / "a.gguf", "gguf", {"gguf_type": "i2_s", "i2s_layout": "neon"})
    assert not (tmp_path / "a.gguf").exists()
    assert CheckpointError  # shape refusals are covered by test_layout_problems_are_named
