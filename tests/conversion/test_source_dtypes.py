"""Dense tensors keep the source's dtype unless --dtype says otherwise.

An fp16 master is made from a fixture with values bf16 cannot hold, so a silent re-rounding to
bf16 (what pack, unpack and the GGUF metadata used to do) changes bits and logits.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import pytest
import torch
from conftest import FIXTURES, cli, read_all
from safetensors.torch import save_file

from bitconvert.model.families import LINEARS
from bitconvert.runtime import compute_logits


TOKENS = [315, 39, 276, 75, 78, 270, 257, 75, 67, 0, 220, 51, 261, 220, 80, 84]


def is_linear(name: str) -> bool:
    return any(f".{lin.path}.weight" in name for lin in LINEARS)


def fp16_master(src: Path, out: Path) -> Path:
    """The fixture master in fp16, every dense value nudged off the bf16 grid."""
    tensors = read_all(src / "model.safetensors")
    nudged = {}
    for name, w in tensors.items():
        w = w.float()
        if not is_linear(name):
            w = w * 1.0009765625 + 3.0517578125e-05  # 1 + 2^-10, 2^-15: fp16 keeps these bits, bf16 not
        nudged[name] = w.half()
    out.mkdir()
    save_file(nudged, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((src / "config.json").read_text())
    cfg["torch_dtype"] = "float16"
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    for side in src.glob("tokenizer*.json"):
        (out / side.name).write_bytes(side.read_bytes())
    return out


@pytest.fixture(scope="module")
def master(tmp_path_factory) -> Path:
    return fp16_master(FIXTURES / "bitnet-2b4t-master", tmp_path_factory.mktemp("fp16") / "master")


def dense_of(path: Path) -> dict[str, torch.Tensor]:
    return {n: t for n, t in read_all(path).items() if not is_linear(n) and not n.endswith("weight_scale")}


def test_the_fp16_master_is_off_the_bf16_grid(master):
    # guard: the test means something only if bf16 cannot hold these values
    dense = dense_of(master)
    assert all(not torch.equal(t, t.bfloat16().half()) for t in dense.values())


def test_pack_and_unpack_keep_fp16_dense_tensors(master, tmp_path):
    src = dense_of(master)
    packed, unpacked = tmp_path / "packed", tmp_path / "unpacked"
    r = cli("pack", master, packed)
    assert r.returncode == 0, r.stderr
    r = cli("unpack", packed, unpacked)
    assert r.returncode == 0, r.stderr
    for out in (packed, unpacked):
        got = dense_of(out)
        assert sorted(got) == sorted(src)
        for name, t in src.items():
            assert got[name].dtype == torch.float16, (out.name, name)
            assert torch.equal(got[name], t), (out.name, name)
        assert json.loads((out / "config.json").read_text())["torch_dtype"] == "float16"
    # unpacked linear weights (codes x mean|W|) are written in the model's dtype too
    assert {t.dtype for t in read_all(unpacked).values()} == {torch.float16}


def test_the_dtype_option_still_converts(master, tmp_path):
    r = cli("pack", master, tmp_path / "p", "--dtype", "bf16")
    assert r.returncode == 0, r.stderr
    got = dense_of(tmp_path / "p")
    assert {t.dtype for t in got.values()} == {torch.bfloat16}
    assert json.loads((tmp_path / "p" / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_packed_logits_equal_the_masters(master, tmp_path):
    ref = compute_logits(master, TOKENS)
    kept = tmp_path / "kept"
    assert cli("pack", master, kept, "--scale-dtype", "f32").returncode == 0
    rounded = tmp_path / "rounded"
    assert cli("pack", master, rounded, "--scale-dtype", "f32", "--dtype", "bf16").returncode == 0
    diff_kept = (compute_logits(kept, TOKENS) - ref).abs().max().item()
    diff_rounded = (compute_logits(rounded, TOKENS) - ref).abs().max().item()
    print(f"\nmax |logit diff| vs the fp16 master: source dtype kept {diff_kept:.3g}, bf16 {diff_rounded:.3g}")
    assert diff_kept <= 1e-5
    assert diff_rounded > 10 * max(diff_kept, 1e-6)  # the re-rounding this test guards against shows


def test_gguf_records_the_source_config_as_it_was(master, tmp_path):
    out = tmp_path / "m.gguf"
    r = cli("convert", master, out, "--to", "gguf", "--gguf-type", "f16")
    assert r.returncode == 0, r.stderr
    field = gguf.GGUFReader(str(out)).fields["bitconvert.hf_config"]
    recorded = json.loads(bytes(field.parts[field.data[0]]).decode())
    assert recorded == json.loads((master / "config.json").read_text())
