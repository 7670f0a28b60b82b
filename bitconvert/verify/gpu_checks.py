"""``verify --target bitnet-gpu``: what microsoft/BitNet's ``gpu/`` model and W2A8 CUDA kernel compute.

A rule about the W2A8 files applies to a ``bitnet-gpu`` SRC as stored, and to any other SRC as
``convert --to bitnet-gpu`` would write it (each weight's scale as bf16 mean|W|). numpy only.
"""

from __future__ import annotations

from ..formats.bitnet_gpu.layout import GPU_ACTIVATION, MODEL_ARGS, NAME, NORMS, gpu_tensors
from ..model.checkpoint import Kind
from ..ternary.linear_class import LinearClass
from ..ternary.quantize import quantize
from ..ternary.weight import TernaryWeight
from .consumer_checks import Finding, Subject

#: (N, K) of the weights ``bitlinear_int8xint2`` has a kernel for (M = 1 only), and the number of
#: equal row ranges it splits N into to pick a scale (``ws_num``), as bitnet_kernels.cu lists them
KERNEL_SHAPES = {
    (3840, 2560): 3, (2560, 2560): 1, (13824, 2560): 2, (2560, 6912): 1, (4800, 3200): 6, (3200, 3200): 1,
    (20480, 3200): 2, (3200, 10240): 1, (5120, 27648): 1, (55296, 5120): 1,
}  # fmt: skip
#: what ModelArgs() holds besides the sizes (gpu/model.py)
MODEL_ARGS_ROPE_THETA = 500000.0
MODEL_ARGS_NORM_EPS = 1e-5


def gpu_format(f: Subject) -> Finding:
    if f.ckpt.format == NAME:
        return Finding(True, f"{NAME}: model_state_int2.pt and model_state_fp16.pt as gpu/convert_checkpoint.py writes them")
    return Finding(False, f"gpu/generate.py loads only gpu/convert_checkpoint.py's files; {f.ckpt.format} is not one: "
                          f"convert with --to {NAME}")  # fmt: skip


def gpu_model(f: Subject) -> Finding:
    family, cfg = f.cfg.family, f.cfg
    lacking = [role for role in NORMS if family.norm(role) is None]
    if lacking:
        return Finding(False, f"the {family.key} family has no {', '.join(lacking)}, which every gpu/model.py block has")
    if cfg.hidden_act != GPU_ACTIVATION:
        return Finding(False, f"gpu/model.py runs the FFN with {GPU_ACTIVATION} (squared ReLU); this model uses {cfg.hidden_act}")
    return Finding(True, f"sub-norms and {GPU_ACTIVATION} FFN, as gpu/model.py computes")


def gpu_model_args(f: Subject) -> Finding:
    cfg = f.cfg
    differ = [f"{k} {getattr(cfg, k)} (ModelArgs: {v})" for k, v in MODEL_ARGS.items() if getattr(cfg, k) != v]
    if cfg.rope_theta != MODEL_ARGS_ROPE_THETA:
        differ.append(f"rope_theta {cfg.rope_theta:g} (ModelArgs: {MODEL_ARGS_ROPE_THETA:g})")
    if cfg.rms_norm_eps != MODEL_ARGS_NORM_EPS:
        differ.append(f"rms_norm_eps {cfg.rms_norm_eps:g} (ModelArgs: {MODEL_ARGS_NORM_EPS:g})")
    if cfg.head_dim * cfg.num_attention_heads != cfg.hidden_size:
        differ.append(f"head_dim {cfg.head_dim} (ModelArgs: hidden_size / heads)")
    if differ:
        return Finding(False, "the model is built from ModelArgs() defaults (BitNet b1.58 2B-4T); this one has "
                              + "; ".join(differ))  # fmt: skip
    return Finding(True, "the sizes, RoPE base and norm epsilon of ModelArgs()")


def _layout(f: Subject):
    """The GPU dict's tensors, or a failed Finding where the layout cannot hold the model."""
    try:
        return gpu_tensors(f.cfg)
    except ValueError as exc:
        return Finding(False, str(exc))


def gpu_kernel_shapes(f: Subject) -> Finding:
    layout = _layout(f)
    if isinstance(layout, Finding):
        return layout
    missing = sorted({t.shape for t in layout if t.fused and t.shape not in KERNEL_SHAPES})
    if missing:
        shown = ", ".join(f"{n} x {k}" for n, k in missing)
        return Finding(False, f"no kernel for {shown}: bitlinear_int8xint2 prints 'required ladder gemm kernel' and "
                              "leaves those outputs zero", float(len(missing)), 0.0)  # fmt: skip
    return Finding(True, "every fused weight has a kernel (for one token at a time)")


def _scale(f: Subject, name: str) -> float:
    """The bf16 mean|W| the layout stores for ``name`` (quantized as the default recipe would)."""
    entry = f.ckpt.tensors[name]
    value = entry.load()
    tw = value if isinstance(value, TernaryWeight) else quantize(value, LinearClass.AUTOBITLINEAR, "BF16")
    return tw.scale.to(LinearClass.AUTOBITLINEAR, "BF16").item() if entry.kind is not Kind.DENSE else 0.0


def gpu_fused_scales(f: Subject) -> Finding:
    """Rows whose scale the kernel takes from another part: it splits N into ``ws_num`` equal ranges."""
    layout = _layout(f)
    if isinstance(layout, Finding):
        return layout
    worst, where, checked = 0, None, 0
    for t in layout:
        ws_num = KERNEL_SHAPES.get(t.shape) if t.fused else None
        if ws_num is None:
            continue
        checked += 1
        scales = [_scale(f, p.hf_name) for p in t.parts]
        span = t.shape[0] // ws_num
        wrong = 0
        for slot, part in enumerate(t.parts):
            for row in range(part.start, part.start + part.rows, span):  # one kernel range at a time
                stop = min(part.start + part.rows, (row // span + 1) * span)
                picked = row // span
                used = scales[picked] if picked < len(scales) else 0.0
                wrong += (stop - row) * (used != scales[slot])
        if wrong > worst:
            worst, where = wrong, t.parts[0].hf_name
    if not checked:
        return Finding(True, "no fused weight of a shape the kernel runs")
    if worst:
        return Finding(False, f"up to {worst} rows of a fused weight are scaled with another part's scale (the kernel "
                              "picks ws[row / (N / ws_num)], equal ranges, not the q/k/v split)", float(worst), 0.0,
                       where)  # fmt: skip
    return Finding(True, "every row gets its own part's scale (the parts' scales agree where the ranges cross)")
