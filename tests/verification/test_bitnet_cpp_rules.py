"""``verify --target bitnet.cpp``: what its first release loads (architectures, tensor types), on files
and on sources. tests/peers/test_bitnet_cpp_runtime.py shows the same facts by running that release."""

from __future__ import annotations

import pytest
from conftest import FIXTURES, make_checkpoint

from bitconvert.convert import convert
from bitconvert.formats.gguf.kernel_config import KernelConfig, Tile
from bitconvert.verify import verify_target

DIMS = {"hidden": 256, "intermediate": 512, "layers": 1, "heads": 4, "kv_heads": 2}


def rules(src, target: str = "bitnet.cpp") -> dict:
    return {c.name.split(".")[-1]: c for c in verify_target(src, target).checks}


@pytest.mark.parametrize("target", ["bitnet.cpp", "bitnet.cpp-arm"])
def test_architectures_of_the_first_release(target):
    for kind in ("1bitllm-master", "llama-packed"):
        assert rules(FIXTURES / kind, target)["architecture"].passed, kind
    found = rules(FIXTURES / "bitnet-2b4t-master", target)
    assert not found["architecture"].passed
    assert "'bitnet-b1.58', which bitnet.cpp's first release refuses" in found["architecture"].detail
    assert "390c3077" in found["architecture"].detail and "390c3077" in found["ffn_activation"].detail


def test_tensor_types(tmp_path):
    model = make_checkpoint(tmp_path / "m", "1bitllm", "master", **DIMS, seed=3)
    tiles = KernelConfig("t", tuple(Tile(m, k, 128, 96, 32) for m, k in ((256, 256), (128, 256), (512, 256))) +
                         (Tile(256, 512, 128, 192, 32),))  # fmt: skip
    (tmp_path / "k.ini").write_text(tiles.to_ini())
    for gguf_type in ("i2_s", "tq1_0", "tl2"):
        options = {"gguf_type": gguf_type, **({"kernel_config": tmp_path / "k.ini"} if gguf_type == "tl2" else {})}
        convert(model, tmp_path / f"{gguf_type}.gguf", "gguf", options)
    assert rules(tmp_path / "i2_s.gguf")["tensor_types"].passed
    assert rules(tmp_path / "tq1_0.gguf")["tensor_types"].passed
    tl = rules(tmp_path / "tl2.gguf")["tensor_types"]
    assert not tl.passed and tl.figure == 7 and "7 TL2 tensors" in tl.detail and "lookup-table kernels" in tl.detail
    assert rules(model)["tensor_types"].passed  # a source: what `convert --to gguf` writes
