"""Verifying and inspecting need no torch: integrity (with and without digests), ``--against``,
``--target`` and ``inspect`` of every fixture and of GGUF and Nanotron outputs run on numpy."""

from __future__ import annotations

from conftest import FIXTURES

from bitconvert.convert import convert


def test_verifying_and_inspecting_import_no_torch(tmp_path):
    """verify (with and without digests, against a reference, for a consumer) and inspect of every
    fixture and of GGUF and Nanotron outputs run on numpy: torch is never imported."""
    import subprocess
    import sys

    gguf, nt = tmp_path / "m.gguf", tmp_path / "nt"
    convert(FIXTURES / "bitnet-2b4t-256-packed", gguf, "gguf", {"gguf_type": "i2_s"})
    convert(FIXTURES / "llama-packed", nt, "nanotron", {"tp": 2, "allow_approximate": True, "allow_lossy": True})
    sources = [str(p) for p in sorted(FIXTURES.iterdir()) if (p / "config.json").is_file()] + [str(gguf), str(nt)]
    script = (
        "import sys\n"
        "from bitconvert.describe import describe_checkpoint\n"
        "from bitconvert.verify import VerifyRequest, run, verify_integrity\n"
        f"for src in {sources!r}:\n"
        "    assert verify_integrity(src, digests=False).passed and verify_integrity(src).passed, src\n"
        "    assert run(src, VerifyRequest(against=src, target='transformers')).checks, src\n"
        "    assert describe_checkpoint(src)['tensors'], src\n"
        "print('torch' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "False"
