"""The runtime on the files Microsoft's BitNet Embeddings converter writes (run here through
``peer_tools.run_bitnet_embedding_converter``, with the additions that module records): a Qwen3
I2_S file embeds as its master does, up to the roundings the file makes; a Gemma3 one records no sliding window, so it computes another
model than its master on texts longer than the window, and ``verify --embeddings`` says so."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FIXTURES
from peer_tools import run_bitnet_embedding_converter

pytest.importorskip("torch")

from bitconvert.verify import VerifyRequest, run
from bitconvert.verify.embeddings import TEXTS

MASTERS = {k: FIXTURES / f"bitnet-embedding-{k}-master" for k in ("qwen3", "gemma3")}


def test_the_converters_qwen3_i2s_embeds_as_the_master(tmp_path):
    from bitconvert.runtime.embed import load_embedder

    theirs = run_bitnet_embedding_converter(MASTERS["qwen3"], tmp_path / "theirs.gguf", "i2_s")
    master = load_embedder(MASTERS["qwen3"])
    ids = [master.encode(t) for t in TEXTS]
    embedder = load_embedder(theirs)
    assert embedder.pooling == "lasttoken" and embedder.setup.normalize
    assert any("pooling_type (3)" in n for n in embedder.notes)  # no side files in their file: its key
    a = np.stack([embedder.embed_tokens(t) for t in ids]).astype(np.float64)
    b = np.stack([master.embed_tokens(t) for t in ids]).astype(np.float64)
    cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    # Not the master bit for bit: their F16 token embeddings round values below F16's normal range and
    # their numpy absmean can differ from torch's in a scale's last bit (measured: one text at 0.99995)
    assert cos.min() >= 0.9999
    # run as the file holds the master (scales, F16 embeddings), the master gives the same numbers
    report = run(theirs, VerifyRequest(against=MASTERS["qwen3"], embeddings=True))
    (check,) = [c for c in report.checks if c.name == "against.embeddings"]
    assert check.passed and check.figure >= 1 - 1e-6, check.detail


def test_the_converters_gemma3_file_runs_every_layer_global_and_verify_says_so(tmp_path):
    theirs = run_bitnet_embedding_converter(MASTERS["gemma3"], tmp_path / "theirs.gguf", "i2_s")
    report = run(theirs, VerifyRequest(against=MASTERS["gemma3"], embeddings=True))
    (check,) = [c for c in report.checks if c.name == "against.embeddings"]
    assert not check.passed and check.figure < 0.99
    assert "sliding_window: src None, ref 4" in check.detail
