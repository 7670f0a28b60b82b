"""``run`` and ``logits`` on the command line: prompts through the chat template or raw token ids give
what the library generates, text streams on stdout with rates on stderr, ``logits`` writes an
``.npy`` without leaving partial files, bad usage exits 2; the runtime benchmark script runs end to
end on a tiny model."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import torch
from conftest import FIXTURES, ROOT, cli, run_cli

from bitconvert.formats import open_checkpoint
from bitconvert.runtime import TextTokenizer, compute_logits, generate, load_model

PROMPT = [5, 17, 99, 3, 250, 42, 7, 7, 130, 64, 1, 200, 31, 8, 77, 150]


def test_run_generates_from_a_prompt_or_token_ids(tmp_path):
    src = FIXTURES / "bitnet-2b4t-packed"
    r = cli("run", src, "--prompt", "The quick brown fox", "--max-new-tokens", "12", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    tok = TextTokenizer.from_checkpoint(open_checkpoint(src))
    assert data["prompt_tokens"] == tok.encode_prompt("The quick brown fox")
    model = load_model(src)
    expected = generate(model, data["prompt_tokens"], max_new_tokens=12, stop_tokens={316})
    assert data["tokens"] == expected and data["text"] == tok.decode(expected)
    r = cli("run", src, "--tokens", ",".join(map(str, PROMPT[:5])), "--max-new-tokens", "6", "--ignore-eos")
    assert r.returncode == 0
    assert r.stdout.strip() == ",".join(map(str, generate(model, PROMPT[:5], max_new_tokens=6)))
    human = run_cli("run", src, "--prompt", "Hello", "--max-new-tokens", "4")  # streams text, rates on stderr
    assert human.returncode == 0 and "tok/s" in human.stderr


def test_run_usage_errors_exit_2():
    src = FIXTURES / "llama-packed"
    assert cli("run", src).returncode == 2
    assert cli("run", src, "--prompt", "x", "--tokens", "1").returncode == 2
    r = cli("run", src, "--tokens", "1,4000")
    assert r.returncode == 2 and "4000" in r.stderr
    assert cli("run", src, "--tokens", "1", "--temperature", "-1").returncode == 2
    assert cli("run", src, "--tokens", "1", "--dtype", "f64").returncode == 2
    assert cli("run", src, "--tokens", "1", "--device", "cuda").returncode == (0 if torch.cuda.is_available() else 2)


def test_the_logits_command_writes_npy(tmp_path):
    src = FIXTURES / "1bitllm-packed"
    out = tmp_path / "l.npy"
    r = cli("logits", src, "--tokens", "1,2,3,4", "--out", out)
    assert r.returncode == 0, r.stderr
    arr = np.load(out)
    assert arr.dtype == np.float32 and arr.shape == (4, 320)
    assert np.array_equal(arr, compute_logits(src, [1, 2, 3, 4]).numpy())
    assert cli("logits", src, "--tokens", "1", "--out", out).returncode == 2  # exists
    assert cli("logits", src, "--tokens", "1", "--out", out, "--force").returncode == 0
    assert np.load(out).shape == (1, 320)
    assert cli("logits", src, "--tokens", "1", "--out", tmp_path / "no" / "x.npy").returncode == 2
    assert [p.name for p in tmp_path.iterdir()] == ["l.npy"]  # no partial files left behind


def test_the_runtime_benchmark_runs_end_to_end(tmp_path):
    """benchmarks/runtime.py, which the GPU session runs with --device cuda, works end to end on a
    tiny model (runtime engines only: transformers' side is covered by tests/peers/)."""
    bench = ROOT / "benchmarks" / "runtime.py"
    out = tmp_path / "runtime.json"
    r = subprocess.run([sys.executable, bench, "--layers", "1", "--vocab", "512", "--prompt", "9", "--decode", "3",
                        "--repeats", "1", "--engines", "bitconvert-bf16,bitconvert-bf16-torch", "--json", out],
                       capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr
    summary = json.loads(out.read_text())
    assert summary["complete"] and [e["engine"] for e in summary["results"]] == ["bitconvert-bf16",
                                                                                  "bitconvert-bf16-torch"]
    assert all(e["kernel_linears"] == "0/7" and len(e["greedy_tokens"]) == 4 for e in summary["results"])
    c = summary["comparison"]["bitconvert-bf16-torch"]
    assert c["against"] == "bitconvert-bf16" and c["greedy_all_equal"] and c["prefill_top1_equal"]
    assert c["decode_ratio_median"] > 0 and c["target_met"] is None  # the 3x target is judged on CUDA only
    assert "decode tok/s bitconvert-bf16-torch / bitconvert-bf16" in r.stdout
    if not torch.cuda.is_available():
        r = subprocess.run([sys.executable, bench, "--device", "cuda"], capture_output=True, text=True, timeout=600,
                           check=False)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "no CUDA device" in r.stderr
