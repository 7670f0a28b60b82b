"""Benchmark: the Triton ternary kernels against cuBLAS bf16 and a transformers-style compiled path.

    python benchmarks/kernels.py [--batches 1 8 512] [--reps 50] [--no-cuda-graphs] [--json out.json]

For every linear shape of BitNet b1.58 2B-4T (out x in), in one run on one CUDA device:

- unpack int8 / bf16         bitconvert.kernels.unpack_ternary (packed HF bytes to dense codes)
- compiled unpack bf16       torch.compile'd shifts and masks, what transformers does per forward
- ternary_linear             bitconvert.kernels.ternary_linear on the prepared weight (W1.58A8;
                             GEMV up to 8 tokens, quantize + int8 GEMM above)
- cuBLAS bf16                F.linear with the dense bf16 weight
- transformers-style         torch.compile'd int8 activation quantization + unpack to bf16 +
                             F.linear + rescale, the way transformers' BitLinear runs packed weights

Each call runs as a CUDA graph replay (``--no-cuda-graphs``: a plain call) preceded by an L2
flush (zeroing a buffer several times the L2 size) and is timed on the device with CUDA events;
the table shows medians. The ceiling is the device copy bandwidth, measured with a 1 GiB
device-to-device copy. GB/s counts the bytes a method must move at least: its packed or dense
weight, the activations and the output. Before timing, every ternary_linear and unpack result is
checked against the torch reference on the same device.

``--dry-run`` checks this script's plumbing on the CPU (tiny shapes, Triton interpreter, wall
clock, no compile); its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: (name, out_features, in_features) of BitNet b1.58 2B-4T.
SHAPES = [
    ("q_proj/o_proj", 2560, 2560),
    ("k_proj/v_proj", 640, 2560),
    ("gate/up_proj", 6912, 2560),
    ("down_proj", 2560, 6912),
    ("lm_head", 128256, 2560),
]
DRY_RUN_SHAPES = [("tiny", 64, 96), ("tiny-wide", 32, 160)]
BF16_BYTES = 2


@dataclass
class Row:
    shape: str
    out_features: int
    in_features: int
    batch: int | None  # None for unpack rows
    method: str
    us: float
    bytes_moved: int
    gbps: float
    copy_fraction: float
    floor_us: float  # bytes_moved at the copy bandwidth
    speedup_vs_cublas: float | None
    check: str  # "ok", "FAIL (...)" or "-" (not checked)


class Timer:
    """Median device time of a callable, each call after an L2 flush (CUDA events)."""

    def __init__(self, device, reps: int, warmup: int, cuda_graphs: bool, flush_mib: int) -> None:
        import torch

        self.torch = torch
        self.reps, self.warmup, self.cuda_graphs = reps, warmup, cuda_graphs
        self.flush_buffer = torch.empty(flush_mib << 20, dtype=torch.uint8, device=device)

    def _as_replay(self, fn: Callable[[], object]) -> Callable[[], object]:
        torch = self.torch
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm up (compile, autotune, allocate) outside the capture
            for _ in range(max(self.warmup, 2)):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        return graph.replay

    def median_us(self, fn: Callable[[], object]) -> float:
        torch = self.torch
        run = self._as_replay(fn) if self.cuda_graphs else fn
        for _ in range(self.warmup):
            run()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(self.reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(self.reps)]
        for start, end in zip(starts, ends):
            # The flush also keeps the GPU busy while the host enqueues the call, so host-side
            # launch overhead does not show up as idle time between the two events.
            self.flush_buffer.zero_()
            start.record()
            run()
            end.record()
        torch.cuda.synchronize()
        return statistics.median(s.elapsed_time(e) * 1e3 for s, e in zip(starts, ends))


class WallClockTimer:
    """For --dry-run on the CPU: plumbing only."""

    def __init__(self, reps: int) -> None:
        self.reps = reps

    def median_us(self, fn: Callable[[], object]) -> float:
        fn()
        samples = []
        for _ in range(self.reps):
            start = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - start) * 1e6)
        return statistics.median(samples)


def copy_bandwidth_gbps(device, reps: int = 10) -> float:
    """Device-to-device copy of 1 GiB: bytes read + written per second."""
    import torch

    size = 1 << 30
    src = torch.empty(size, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    for _ in range(2):
        dst.copy_(src)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for start, end in zip(starts, ends):
        start.record()
        dst.copy_(src)
        end.record()
    torch.cuda.synchronize()
    seconds = statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends)) / 1e3
    del src, dst
    return 2 * size / seconds / 1e9


# ---- the transformers-style comparison (our own code, following what transformers does) ------


def unpack_bf16_shifts(packed):
    """HF row-block bytes to bf16 codes with shifts and masks; the plain torch way."""
    import torch

    planes = [(packed >> shift) & 3 for shift in (0, 2, 4, 6)]
    return torch.cat(planes, dim=0).to(torch.bfloat16) - 1


def transformers_style_linear(x, packed, weight_scale):
    """int8-valued activations kept in bf16, weights unpacked to bf16 every call, bf16 matmul."""
    import torch
    import torch.nn.functional as F

    act_scale = 127.0 / x.float().abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
    x_quant = (x.float() * act_scale).round().clamp(-128, 127).to(torch.bfloat16)
    y = F.linear(x_quant, unpack_bf16_shifts(packed))
    return (y.float() / act_scale * weight_scale.float()).to(x.dtype)


def compiled(fn, enabled: bool):
    import torch

    if not enabled:
        return fn
    torch._dynamo.reset()  # one function, many shapes: start each case from a clean cache
    return torch.compile(fn, dynamic=False)


# ---- the run -------------------------------------------------------------------------------


def check_close(out, ref) -> str:
    out, ref = out.float(), ref.float()
    scale = float(ref.abs().max()) or 1.0
    err = float((out - ref).abs().max()) / scale
    return "ok" if err <= 1e-2 else f"FAIL (max err {err:.2e} of max|ref|)"


def bench_shape(name, out_features, in_features, batches, timer, copy_gbps, device, use_compile) -> list[Row]:
    import torch
    import torch.nn.functional as F

    from bitconvert import kernels
    from bitconvert.kernels.torch_path import ternary_linear_torch
    from bitconvert.ternary import LinearClass, pack_codes, unpack_codes

    generator = torch.Generator(device=device).manual_seed(0)
    codes = torch.randint(-1, 2, (out_features, in_features), generator=generator, device=device, dtype=torch.int8)
    packed = torch.from_numpy(pack_codes(codes.cpu().numpy())).to(device)
    del codes
    weight = kernels.prepare_weight(packed)
    scale = torch.tensor([0.0123], dtype=torch.bfloat16, device=device)  # stored mean|W|
    packed_bytes = packed.numel()
    rows: list[Row] = []

    def add(batch, method, fn, bytes_moved, check="-", cublas_us=None) -> float:
        us = timer.median_us(fn)
        gbps = bytes_moved / us / 1e3
        rows.append(
            Row(
                name,
                out_features,
                in_features,
                batch,
                method,
                us,
                bytes_moved,
                gbps,
                gbps / copy_gbps,
                bytes_moved / copy_gbps / 1e3,
                None if cublas_us is None else cublas_us / us,
                check,
            )
        )
        return us

    reference_codes = torch.from_numpy(unpack_codes(packed.cpu().numpy())).to(device)
    for dtype, label in ((torch.int8, "unpack int8"), (torch.bfloat16, "unpack bf16")):
        ok = "ok" if torch.equal(kernels.unpack_ternary(weight, dtype), reference_codes.to(dtype)) else "FAIL"
        moved = packed_bytes * (1 + 4 * dtype.itemsize)
        add(None, label, lambda d=dtype: kernels.unpack_ternary(weight, d), moved, ok)
    compiled_unpack = compiled(unpack_bf16_shifts, use_compile)
    ok = "ok" if torch.equal(compiled_unpack(packed), reference_codes.to(torch.bfloat16)) else "FAIL"
    label = "compiled unpack bf16" if use_compile else "torch unpack bf16"
    add(None, label, lambda: compiled_unpack(packed), packed_bytes * 9, ok)

    dense = (reference_codes.to(torch.bfloat16) * scale).contiguous()
    del reference_codes
    for batch in batches:
        x = torch.randn(batch, in_features, generator=generator, device=device).to(torch.bfloat16)
        io_bytes = (batch * in_features + batch * out_features) * BF16_BYTES
        dense_bytes = out_features * in_features * BF16_BYTES
        cublas_us = add(batch, "cuBLAS bf16", lambda: F.linear(x, dense), dense_bytes + io_bytes)
        ours = kernels.ternary_linear(x, weight, scale, LinearClass.AUTOBITLINEAR)
        check = check_close(ours, ternary_linear_torch(x, packed, scale, LinearClass.AUTOBITLINEAR))
        path = "GEMV" if batch <= kernels.GEMV_MAX_TOKENS else "GEMM"
        add(
            batch,
            f"ternary_linear ({path})",
            lambda: kernels.ternary_linear(x, weight, scale, LinearClass.AUTOBITLINEAR),
            packed_bytes + io_bytes,
            check,
            cublas_us,
        )
        style = compiled(transformers_style_linear, use_compile)
        add(
            batch,
            "transformers-style" + (" compiled" if use_compile else " eager"),
            lambda: style(x, packed, scale),
            packed_bytes + io_bytes,
            check_close(style(x, packed, scale), ours),
            cublas_us,
        )
    return rows


def format_table(rows: list[Row]) -> str:
    header = (
        f"{'shape (out x in)':<28} {'batch':>5}  {'method':<30} {'us':>9} {'GB/s':>8} {'copy%':>6}"
        f" {'floor us':>9} {'vs cuBLAS':>9}  check"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        shape = f"{r.shape} {r.out_features}x{r.in_features}"
        batch = "-" if r.batch is None else str(r.batch)
        speedup = "" if r.speedup_vs_cublas is None else f"{r.speedup_vs_cublas:.2f}x"
        lines.append(
            f"{shape:<28} {batch:>5}  {r.method:<30} {r.us:>9.1f} {r.gbps:>8.0f} {100 * r.copy_fraction:>5.0f}% "
            f"{r.floor_us:>9.1f} {speedup:>9}  {r.check}"
        )
    return "\n".join(lines)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 512], help="tokens per call")
    parser.add_argument("--shapes", nargs="+", help="only these shape names (default: all)")
    parser.add_argument("--reps", type=int, default=50, help="timed calls per case (median)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--flush-mib", type=int, default=256, help="L2 flush buffer (H100 L2: 50 MiB)")
    parser.add_argument("--no-cuda-graphs", action="store_true", help="time plain calls, not graph replays")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (eager comparisons)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON ('-': stdout)")
    parser.add_argument("--dry-run", action="store_true", help="check the plumbing on CPU; numbers mean nothing")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before Triton's import: the kernels run on the CPU
    import torch

    from bitconvert import kernels
    from bitconvert.kernels.backend import triton_interpreting

    if args.dry_run:
        device, shapes, timer, copy_gbps = torch.device("cpu"), DRY_RUN_SHAPES, WallClockTimer(2), 1.0
        batches, use_compile = [1, 8, 33], False  # both kernel paths, interpreter-sized
    else:
        if not torch.cuda.is_available():
            print("benchmarks/kernels.py: no CUDA device here (torch.cuda.is_available() is False);"
                  " these are GPU kernel timings, nothing to measure. (--dry-run checks the script on CPU.)",
                  file=sys.stderr)
            return 2
        if not kernels.uses_triton("cuda") or triton_interpreting():
            reason = kernels.triton_unavailable_reason() or "Triton is in interpreter mode (TRITON_INTERPRET=1)"
            print(f"benchmarks/kernels.py: the Triton kernels cannot run compiled: {reason}", file=sys.stderr)
            return 2
        device = torch.device("cuda")
        shapes = [s for s in SHAPES if not args.shapes or s[0] in args.shapes]
        batches, use_compile = args.batches, not args.no_compile
        timer = Timer(device, args.reps, args.warmup, not args.no_cuda_graphs, args.flush_mib)
        copy_gbps = copy_bandwidth_gbps(device)

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (dry run)"
    print(f"device: {device_name}; copy bandwidth {copy_gbps:.0f} GB/s (1 GiB device copy, read + write)")
    rows: list[Row] = []
    for name, out_features, in_features in shapes:
        rows += bench_shape(name, out_features, in_features, batches, timer, copy_gbps, device, use_compile)
        print(f"  measured {name} {out_features}x{in_features}", file=sys.stderr)
    print(format_table(rows))

    if args.json:
        import triton

        report = {
            "device": device_name,
            "torch": torch.__version__,
            "triton": triton.__version__,
            "copy_gbps": copy_gbps,
            "settings": {k: v for k, v in vars(args).items() if k != "json"},
            "rows": [asdict(r) for r in rows],
        }
        text = json.dumps(report, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    failed = [r for r in rows if r.check.startswith("FAIL")]
    if failed:
        print(f"{len(failed)} result check(s) failed; see the check column", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
