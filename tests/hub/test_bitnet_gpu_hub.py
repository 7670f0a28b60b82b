"""hf:// sources in the bitnet-gpu layout: the two W2A8 files and the side files are fetched,
nothing else (other pickles are never downloaded)."""

from __future__ import annotations

from bitconvert.formats.bitnet_gpu.layout import FP16_FILE, INT2_FILE
from bitconvert.hub.source import BITNET_GPU_FILES, HubRef, _layout_files


def test_the_w2a8_files_and_config_are_selected():
    assert BITNET_GPU_FILES == (INT2_FILE, FP16_FILE)
    repo = ["config.json", INT2_FILE, FP16_FILE, "tokenizer.json", "model_state.pt", "optimizer.pt", "README.md"]
    assert _layout_files(repo, "", HubRef("org/name")) == (
        "bitnet-gpu", sorted(["config.json", INT2_FILE, FP16_FILE, "tokenizer.json"])
    )
