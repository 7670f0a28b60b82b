"""Quantizing needs no torch: ``bitconvert.ternary`` imports none, and its mean|W| is summed in the
order torch would use on this machine (thread count and SIMD width, calibrated once torch is loaded)."""

from __future__ import annotations

import subprocess
import sys


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=False)


def test_the_ternary_package_does_not_import_torch():
    r = _python("import bitconvert.ternary, bitconvert.ternary.recipes; import sys; assert 'torch' not in sys.modules")
    assert r.returncode == 0, r.stderr


SUMMATION_ORDER = """
import json, sys
import bitconvert.ternary
from bitconvert.ternary.fast.summation import calibrated_lanes, summation_order
order = summation_order()
assert 'torch' not in sys.modules
import torch
threads = torch.get_num_threads()
print(json.dumps([order, [threads, calibrated_lanes(threads)], summation_order()]))
"""


def test_summation_order_without_torch_is_torchs():
    """Quantizing without torch sums mean|W| in the order torch would use here: its starting thread
    count and its build's SIMD width (calibrated against torch once it is loaded)."""
    import json

    r = _python(SUMMATION_ORDER)
    assert r.returncode == 0, r.stderr
    without, calibrated, with_torch = json.loads(r.stdout)
    assert calibrated[1] is not None
    assert without == calibrated == with_torch
