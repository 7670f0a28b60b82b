"""TL1/TL2 GGUFs without the peers: the byte layouts against the spec written out here, kernel
configurations read strictly, the writer's refusals, exact read-back and what ``inspect`` says.
(tests/peers/test_bitnet_cpp_tl.py compares the bytes with bitnet.cpp's own converter.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES, make_checkpoint, run_cli

from bitconvert.convert import convert
from bitconvert.errors import CheckpointError, UsageError
from bitconvert.formats import open_checkpoint
from bitconvert.formats.gguf import kernel_config, tl_layouts, types
from bitconvert.formats.gguf.kernel_config import KernelChoice, KernelConfig, Tile, assumed, parse_ini
from bitconvert.formats.gguf.options import KERNEL_PRESETS
from bitconvert.formats.gguf.parser import GGUFFile

DIMS = {"hidden": 256, "intermediate": 512, "layers": 2, "heads": 4, "kv_heads": 2}
SHAPES = [(256, 256), (128, 256), (512, 256), (256, 512)]
TL1 = KernelConfig(
    "tiny tl1",
    tuple(Tile(m, k, *t) for (m, k), t in zip(SHAPES, [(128, 64, 64), (128, 128, 32), (256, 128, 32), (128, 64, 32)])),
)
TL2 = KernelConfig(
    "tiny tl2",
    tuple(Tile(m, k, *t) for (m, k), t in zip(SHAPES, [(128, 96, 32), (128, 192, 32), (256, 96, 32), (128, 192, 32)])),
)
CONFIGS = {"tl1": TL1, "tl2": TL2}


def codes_of(m: int, k: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1, 2, (m, k)).astype(np.int8)


# --- the byte layouts, against loops written from the description (not the vectorised code) ------


def tl1_by_loops(c: np.ndarray, t: Tile) -> bytes:
    by = 256 // t.bmm
    n = lambda a, b: 3 * int(a) + int(b) + 4
    out = bytearray()
    for tm in range(t.m // t.bm):
        for tk in range(t.k // t.bk):
            for sm in range(t.bm // t.bmm):
                for sk in range(t.bk // by):
                    for g in range(t.bmm // 16):
                        for q in range(by // 4):
                            for r in range(16):
                                row, col = tm * t.bm + sm * t.bmm + 16 * g + r, tk * t.bk + sk * by + 4 * q
                                out.append(n(c[row, col], c[row, col + 1]) << 4 | n(c[row, col + 2], c[row, col + 3]))
    return bytes(out)


def tl2_by_loops(c: np.ndarray, t: Tile) -> bytes:
    k2 = t.k % t.bk
    k3 = t.k - k2
    row_of = lambda p: 8 * (0, 2, 1, 3)[p // 8] + p % 8  # rows in quarters 0, 2, 1, 3
    trip = lambda r, col: 9 * int(c[r, col]) + 3 * int(c[r, col + 1]) + int(c[r, col + 2])
    mags, signs, pairs = bytearray(), bytearray(), bytearray()
    for tm in range(t.m // t.bm):
        for tk in range(k3 // t.bk):
            for sm in range(t.bm // 32):
                for sk in range(t.bk // 6):
                    for p in range(32):
                        r, col = tm * t.bm + sm * 32 + row_of(p), tk * t.bk + 6 * sk
                        mags.append(abs(trip(r, col)) << 4 | abs(trip(r, col + 3)))
            for sm in range(t.bm // 32):
                for j in range(t.bk // 24):
                    for u in range(16):
                        word = 0
                        for q in range(16):
                            r, col = tm * t.bm + sm * 32 + 16 * (q % 2) + u, tk * t.bk + 24 * j + 3 * (q // 2)
                            word |= (trip(r, col) < 0) << (15 - q)
                        signs += word.to_bytes(2, "little")
    n = lambda a, b: 3 * int(a) + int(b) + 4
    for tm in range(t.m // t.bm):
        for t2 in range(k2 // 32):
            for sm in range(t.bm // 32):
                for sk in range(8):
                    for p in range(32):
                        r, col = tm * t.bm + sm * 32 + row_of(p), k3 + 32 * t2 + 4 * sk
                        pairs.append(n(c[r, col], c[r, col + 1]) << 4 | n(c[r, col + 2], c[r, col + 3]))
    return bytes(mags), bytes(signs), bytes(pairs)


@pytest.mark.parametrize("tile", TL1.tiles + (Tile(32, 16, 32, 16, 32), Tile(64, 32, 64, 8, 64)))
def test_tl1_bytes_follow_the_layout(tile):
    c = codes_of(tile.m, tile.k, tile.m + tile.k)
    data = tl_layouts.encode_tl1(c, 0.25, tile)
    n = tile.m * tile.k // 4
    assert data.size == types.TYPES[types.TL1].nbytes((tile.m, tile.k)) == -(-n // 32) * 32 + 32
    assert data[:n].tobytes() == tl1_by_loops(c, tile)
    assert data[n : n + 4].view("<f4")[0] == np.float32(0.25) and not data[n + 4 :].any()
    back, scale = tl_layouts.decode_tl1(data, c.shape, tile)
    assert np.array_equal(back, c) and scale[0] == np.float32(0.25)


@pytest.mark.parametrize("tile", TL2.tiles + (Tile(32, 1568, 32, 384, 32), Tile(64, 192, 64, 96, 32)))
def test_tl2_bytes_follow_the_layout(tile):
    c = codes_of(tile.m, tile.k, tile.m * 3 + tile.k)
    data = tl_layouts.encode_tl2(c, 0.5, tile)
    mags, signs, pairs = tl2_by_loops(c, tile)
    # the three streams, each whole, one after the other
    stream = mags + signs + pairs
    assert data[: len(stream)].tobytes() == stream
    fill = tl_layouts.tl2_fill(tile.m, tile.k)
    assert not data[len(stream) : -32].any() and data.size == -(-fill // 32) * 32 + 32
    assert data[-32:-28].view("<f4")[0] == np.float32(0.5) and not data[-28:].any()
    back, scale = tl_layouts.decode_tl2(data, c.shape, tile)
    assert np.array_equal(back, c) and scale[0] == np.float32(0.5)


def test_tl2_sizes_are_bitnet_cpps_formula():
    # (k - 256) * m / 3 * 5 / 8 + 256 * m / 2 * 4 / 8, as the converter computes it (Python floor)
    assert tl_layouts.tl2_fill(256, 512) == 30037 and tl_layouts.tl2_fill(2560, 6912) == 3713706
    assert (
        tl_layouts.nbytes("tl2", (2560, 2560)) == 1392640 + 32 and tl_layouts.nbytes("tl1", (640, 2560)) == 409600 + 32
    )


def test_invalid_bytes_are_found():
    tile = TL2.tiles[0]
    data = tl_layouts.encode_tl2(codes_of(256, 256, 1), 1.0, tile)
    assert tl_layouts.first_invalid_tl2(data, (256, 256), tile) is None
    bad = data.copy()
    bad[3] = 0xE0  # magnitude 14: no triplet
    assert "magnitude above 13" in tl_layouts.first_invalid_tl2(bad, (256, 256), tile)
    zero = tl_layouts.encode_tl2(np.zeros((256, 256), np.int8), 1.0, tile)
    zero[256 * 192 // 6] = (
        1  # the first sign byte (192 = 256 - 256 % 96 triplet columns)  # a sign bit on a zero triplet: no encoder writes it
    )
    assert "sign bit set on a zero triplet" in tl_layouts.first_invalid_tl2(zero, (256, 256), tile)
    one = tl_layouts.encode_tl1(codes_of(256, 256, 2), 1.0, TL1.tiles[0])
    one[5] = 0x9F
    assert "nibble above 8" in tl_layouts.first_invalid_tl1(one, (256, 256), TL1.tiles[0])


@pytest.mark.parametrize(
    "kind,tile,problem",
    [
        ("tl1", Tile(256, 256, 128, 64, 16), "bmm 16: TL1 kernels take 32 or 64"),
        ("tl1", Tile(256, 256, 96, 64, 32), "rows 256 are not tiled by bm 96"),
        ("tl1", Tile(256, 256, 128, 96, 32), "columns 256 are not tiled by bk 96"),
        ("tl2", Tile(256, 256, 128, 96, 64), "bmm 64: TL2 kernels take 32 only"),
        ("tl2", Tile(256, 256, 128, 64, 32), "bk 64 is not a multiple of 24"),
        ("tl2", Tile(256, 272, 128, 96, 32), "80 columns after the last whole bk tile are not a multiple of 32"),
        ("tl2", Tile(32, 1632, 32, 576, 32), "do not fit bitnet.cpp's TL2 size"),
    ],
)
def test_tiles_bitnet_cpp_cannot_pack_are_named(kind, tile, problem):
    assert problem in tl_layouts.tile_problem(kind, tile)


# --- kernel_config.ini --------------------------------------------------------------------------


def test_ini_grammar_round_trips_and_is_strict(tmp_path):
    text = TL2.to_ini()
    assert parse_ini(text, "x").tiles == TL2.tiles
    lenient = "# a comment\n[Kernels_0]\n M : 256\nK=256\n; another\nBM = 128\nbk = 96\nbmm = 32\n"
    assert parse_ini(lenient, "x").tiles == (Tile(256, 256, 128, 96, 32),)
    bad = {
        "[a]\nm = 1\nm = 2\n": "m given twice",
        "[a]\nm = 1\n[a]\n": "section [a] appears twice",
        "m = 1\n": "before any [section]",
        "[a]\nm = 0x10\n": "is not a whole number",
        "[a]\nm = 99999999999999\n": "is not a whole number",
        "[a]\nsize = 4\n": "unknown key 'size'",
        "[a]\nm = 256\nk = 256\n": "has no bm, bk, bmm",
        "[a]\nm = 256\nk = 256\nbm = 128\nbk = 96\nbmm = 32\n[b]\nm = 256\nk = 256\nbm = 256\nbk = 96\nbmm = 32\n": "given twice with different tiles",
        "": "names no weight shape",
        "[a\n": "neither a [section]",
    }
    for text, problem in bad.items():
        with pytest.raises(CheckpointError, match=problem.replace("[", r"\[")):
            parse_ini(text, "kernel_config.ini")
    (tmp_path / "k.ini").write_bytes(b"\xff\xfe")
    with pytest.raises(CheckpointError, match="not UTF-8"):
        kernel_config.read_ini(tmp_path / "k.ini")
    with pytest.raises(CheckpointError, match="cannot read"):
        kernel_config.read_ini(tmp_path / "missing.ini")


def test_record_round_trips_and_is_checked():
    text = kernel_config.record(TL2, [(256, 256), (256, 256), (512, 256)])
    back = kernel_config.from_record(text, "f.gguf")
    assert back.name == "tiny tl2" and back.tiles == (TL2.tiles[0], TL2.tiles[2])
    for broken in (
        "[]",
        "{}",
        '{"name": "x", "kernels": [[1, 2, 3]]}',
        '{"name": "x", "kernels": [[1, 2, 3, 4, true]]}',
        "{",
        5,
    ):
        with pytest.raises(CheckpointError, match="bitconvert.kernel_config is"):
            kernel_config.from_record(broken, "f.gguf")


def test_presets_listed_once():
    assert KERNEL_PRESETS == kernel_config.PRESET_NAMES
    assert kernel_config.preset_name("BITNET_B1_58-3b") == "bitnet_b1_58-3B"
    with pytest.raises(UsageError, match="--kernel-preset must be one of"):
        kernel_config.preset_name("llama")


# --- writing and reading ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def masters(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tl-masters")
    out = {}
    for kind, seed in (("bitnet-2b4t", 7), ("1bitllm", 5), ("llama", 6)):
        out[kind] = make_checkpoint(root / kind, kind, "master", **DIMS, seed=seed)
        out[kind + "-packed"] = make_checkpoint(root / f"{kind}-packed", kind, "packed", **DIMS, seed=seed)
    return out


@pytest.fixture(scope="module")
def ini_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tl-ini")
    for kind, config in CONFIGS.items():
        (root / f"{kind}.ini").write_text(config.to_ini())
    return {kind: root / f"{kind}.ini" for kind in CONFIGS}


@pytest.mark.parametrize("kind", ["tl1", "tl2"])
@pytest.mark.parametrize("model", ["bitnet-2b4t", "1bitllm", "llama", "bitnet-2b4t-packed", "llama-packed"])
def test_tl_reads_back_as_i2_s_does(masters, ini_files, tmp_path, model, kind):
    """The same codes and the same scale, exactly, as the I2_S file of the same source."""
    convert(masters[model], tmp_path / "tl.gguf", "gguf", {"gguf_type": kind, "kernel_config": ini_files[kind]})
    convert(masters[model], tmp_path / "i2s.gguf", "gguf", {"gguf_type": "i2_s"})
    tl, i2s = open_checkpoint(tmp_path / "tl.gguf"), open_checkpoint(tmp_path / "i2s.gguf")
    assert tl.facts.gguf.kernel_config == f"{kind}.ini (recorded in the file)"
    assert tl.facts.gguf.architecture == i2s.facts.gguf.architecture
    f = GGUFFile(tmp_path / "tl.gguf")
    assert f.get("general.file_type") == {"tl1": 38, "tl2": 39}[kind]
    assert sum(t.type == {"tl1": 38, "tl2": 39}[kind] for t in f.tensors.values()) == 14
    for name, entry in tl.tensors.items():
        a, b = entry.load(), i2s.tensors[name].load()
        if hasattr(a, "codes"):
            assert np.array_equal(a.codes, b.codes) and a.scale == b.scale, name
            stored = entry.stored()
            assert stored.counts() == tuple(int(v) for v in (
                (a.codes == -1).sum(), (a.codes == 0).sum(), (a.codes == 1).sum(), 0)), name  # fmt: skip
        else:
            assert np.array_equal(a.data, b.data), name
    # and on to another format: the same packed checkpoint either way
    convert(tmp_path / "tl.gguf", tmp_path / "from-tl", "hf-packed", {})
    convert(tmp_path / "i2s.gguf", tmp_path / "from-i2s", "hf-packed", {})
    for file in ("model.safetensors",):
        assert (tmp_path / "from-tl" / file).read_bytes() == (tmp_path / "from-i2s" / file).read_bytes()


def test_options_are_refused_where_they_cannot_apply(masters, ini_files, tmp_path):
    m = masters["bitnet-2b4t"]
    cases = [
        ({"gguf_type": "tl2"}, "name its configuration with --kernel-config FILE"),
        (
            {"gguf_type": "i2_s", "kernel_preset": "bitnet_b1_58-3B"},
            "--kernel-preset applies to --gguf-type tl1 or tl2 only",
        ),
        ({"gguf_type": "tl2", "kernel_preset": "bitnet_b1_58-3B", "kernel_config": ini_files["tl2"]}, "not both"),
        ({"gguf_type": "tl2", "kernel_config": ini_files["tl2"], "recipe": "llama.cpp"}, "--recipe llama.cpp writes"),
    ]
    for options, problem in cases:
        with pytest.raises(UsageError, match=problem):
            convert(m, tmp_path / "x.gguf", "gguf", options)
        assert not (tmp_path / "x.gguf").exists()
    with pytest.raises(
        CheckpointError, match=r"weight shape 256×256 has no kernel in the preset bitnet_b1_58-3B \(tl2\)"
    ):
        convert(m, tmp_path / "x.gguf", "gguf", {"gguf_type": "tl2", "kernel_preset": "bitnet_b1_58-3B"})
    # a TL1 configuration is no TL2 one: its tiles are named and refused
    with pytest.raises(CheckpointError, match="bm 128, bk 64, bmm 64: TL2 cannot pack it: bmm 64"):
        convert(m, tmp_path / "x.gguf", "gguf", {"gguf_type": "tl2", "kernel_config": ini_files["tl1"]})
    assert not (tmp_path / "x.gguf").exists()


def test_cli_names_the_configuration(masters, ini_files, tmp_path):
    out = tmp_path / "m.gguf"
    res = run_cli(
        "convert", masters["llama"], out, "--to", "gguf", "--gguf-type", "tl1", "--kernel-config", ini_files["tl1"]
    )
    assert res.returncode == 0, res.stderr
    res = run_cli("inspect", out)
    assert res.returncode == 0 and "TL kernel configuration: tl1.ini (recorded in the file)" in res.stdout
    assert "TL1 (bm 128, bk 64, bmm 64) + F32 scale in data" in res.stdout
    bad = tmp_path / "bad.ini"
    bad.write_text("[Kernels_0]\nm = 256\n")
    res = run_cli(
        "convert", masters["llama"], tmp_path / "n.gguf", "--to", "gguf", "--gguf-type", "tl1", "--kernel-config", bad
    )
    assert (
        res.returncode == 1
        and res.stderr.count("\n") == 1
        and "bad.ini: [Kernels_0] (line 1) has no k, bm, bk, bmm" in res.stderr
    )
    res = run_cli(
        "convert", masters["llama"], tmp_path / "n.gguf", "--to", "gguf", "--gguf-type", "tl1", "--kernel-preset", "x"
    )
    assert res.returncode == 2 and "--kernel-preset" in res.stderr


def test_reading_with_another_configuration_is_noted_and_refused_where_it_cannot_fit(masters, ini_files, tmp_path):
    out = tmp_path / "m.gguf"
    convert(masters["bitnet-2b4t"], out, "gguf", {"gguf_type": "tl1", "kernel_config": ini_files["tl1"]})
    other = KernelConfig("other", tuple(Tile(t.m, t.k, t.bm, t.bk, 32) for t in TL1.tiles))
    with assumed(KernelChoice(None, None)):
        assert open_checkpoint(out).facts.gguf.kernel_config == "tl1.ini (recorded in the file)"
    from bitconvert.formats.gguf.reader import GGUFReader

    ckpt = GGUFReader().read(out, kernels=other)
    assert any("whose tiles differ from the ones the file records (tl1.ini)" in n for n in ckpt.notes)
    with (
        assumed(KernelChoice(preset="bitnet_b1_58-3B")),
        pytest.raises(CheckpointError, match=r"weight shape 256×256 has no kernel in preset bitnet_b1_58-3B \(tl1\)"),
    ):
        open_checkpoint(out)


def test_tl_on_the_narrow_fixtures(tmp_path):
    """64-wide fixtures: a TL1 configuration of their own shapes works; TL2 needs bk of 24s."""
    config = KernelConfig(
        "narrow", tuple(Tile(m, k, 32, 32, 32) for m, k in ((64, 64), (32, 64), (128, 64), (64, 128)))
    )
    (tmp_path / "n.ini").write_text(config.to_ini())
    convert(
        FIXTURES / "llama-packed",
        tmp_path / "n.gguf",
        "gguf",
        {"gguf_type": "tl1", "kernel_config": tmp_path / "n.ini"},
    )
    src, back = open_checkpoint(FIXTURES / "llama-packed"), open_checkpoint(tmp_path / "n.gguf")
    for name in src.config.quantized_linear_names():
        assert np.array_equal(src.tensors[name].load().codes, back.tensors[name].load().codes), name
    info = json.loads(run_cli("inspect", tmp_path / "n.gguf", "--json").stdout)
    assert info["kernel_config"] == "n.ini (recorded in the file)"


def test_gguf_py_reader_does_not_read_tl_files(masters, ini_files, tmp_path):
    """gguf-py does not know id 38 and takes 39 for MXFP4: its reader refuses a TL1 file and either
    refuses a TL2 file or reads its weights as MXFP4 of the wrong size."""
    gguf = pytest.importorskip("gguf")
    for kind in ("tl1", "tl2"):
        path = tmp_path / f"{kind}.gguf"
        convert(masters["llama"], path, "gguf", {"gguf_type": kind, "kernel_config": ini_files[kind]})
        if kind == "tl1":
            with pytest.raises(ValueError):
                gguf.GGUFReader(path)
            continue
        try:
            reader = gguf.GGUFReader(path)
        except ValueError:
            continue
        ours = GGUFFile(path)
        for t in reader.tensors:
            if ours.tensors[t.name].type == types.TL2:
                assert t.tensor_type.name == "MXFP4" and t.n_bytes != ours.tensors[t.name].nbytes, t.name
