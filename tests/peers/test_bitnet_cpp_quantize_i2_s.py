"""The three I2_S byte layouts (x86, x86-rows, arm) are what bitnet.cpp's own ``quantize_i2_s`` writes,
compiled here once per build flavour (see peer_tools.py)."""

from __future__ import annotations

import numpy as np
import pytest
from gguf_tools import random_codes
from peer_tools import compile_quantize_i2_s, run_quantize_i2_s

from bitconvert.formats.gguf.i2s_layouts import LAYOUTS, encode, layout_problem


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("quantize_i2_s")
    return {layout: compile_quantize_i2_s(tmp, layout) for layout in LAYOUTS}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(8, 256), (12, 640), (4, 64 * 3)])
def test_each_layout_is_what_compiled_quantize_i2_s_writes(builds, layout, shape):
    if layout_problem(layout, shape):
        pytest.skip(layout_problem(layout, shape))
    codes = random_codes(*shape, seed=sum(shape))
    magnitude = np.float32(0.0123456)
    values = codes.astype(np.float32) * magnitude  # what bitnet.cpp's converter hands it
    theirs = run_quantize_i2_s(builds[layout], values)
    ours = encode(codes, float(magnitude), layout)
    assert ours.dtype == np.uint8 and len(theirs) == ours.size == codes.size // 4 + 32
    assert bytes(ours) == theirs
