"""The reference model: the three BitNet architectures in plain PyTorch, built from a Checkpoint.

One forward pass follows transformers' BitNetForCausalLM / LlamaForCausalLM (with its bitnet
quantizer) operation by operation: RMSNorm in fp32, NeoX (``rotate_half``) RoPE computed in fp32
and cast, scaled dot-product attention with grouped KV heads, relu² or SiLU gating, the
architecture's sub-norms before ``o_proj`` and ``down_proj``, tied or separate LM head. Linear
layers are :class:`~bitconvert.runtime.linear.TernaryLinear` (W1.58A8).

Weights: a quantized linear stored quantized (packed, GGUF) is used as stored, codes and scale;
one stored as floats (a master, and also ``unpack`` output) is quantized on load with absmean,
the arithmetic of transformers' online ``WeightQuant``, so the runtime computes what transformers
computes from the same file. (For ``unpack`` output that differs from the packed source: absmean
of codes x m is p*m, p the fraction of non-zero codes; ``verify --logits`` shows it.) Tensors are
loaded one at a time; latent floats are dropped as soon as they are quantized.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from ..model.checkpoint import Checkpoint
from ..model.config import ARCH_SPECS, QUANTIZED_LINEARS, ModelConfig
from ..errors import CheckpointError, UsageError
from ..formats import Progress, no_progress, open_checkpoint
from ..ternary.records import VALUES_ONLINE
from ..ternary import LinearClass, TernaryWeight, quantize
from .cache import KVCache
from .linear import DenseLinear, TernaryLinear, kernels_usable, rms_norm

ACTIVATIONS = {
    "relu2": lambda x: torch.square(F.relu(x)),
    "silu": F.silu,
    "swish": F.silu,
}


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rope_type(cfg: ModelConfig) -> str:
    raw = cfg.raw
    params = raw.get("rope_parameters") if isinstance(raw.get("rope_parameters"), dict) else {}
    scaling = raw.get("rope_scaling") if isinstance(raw.get("rope_scaling"), dict) else {}
    return str(params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default")


@dataclass
class Layer:
    input_norm: torch.Tensor
    post_attention_norm: torch.Tensor
    q: TernaryLinear | DenseLinear
    k: TernaryLinear | DenseLinear
    v: TernaryLinear | DenseLinear
    o: TernaryLinear | DenseLinear
    gate: TernaryLinear | DenseLinear
    up: TernaryLinear | DenseLinear
    down: TernaryLinear | DenseLinear
    attn_sub_norm: torch.Tensor | None
    ffn_sub_norm: torch.Tensor | None


class RuntimeModel:
    """A loaded model for one sequence at a time. ``logits(tokens)`` is the comparison entry point."""

    def __init__(self, config: ModelConfig, device: torch.device, dtype: torch.dtype) -> None:
        self.config = config
        self.device = device
        self.dtype = dtype
        self.embed: torch.Tensor
        self.layers: list[Layer] = []
        self.norm: torch.Tensor
        self.lm_head: torch.Tensor
        self.act = ACTIVATIONS[config.hidden_act]
        d = config.head_dim
        self.inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
        self.inv_freq = self.inv_freq.to(device)
        self.scaling = d**-0.5
        self.eps = config.rms_norm_eps
        self.source = ""
        #: how weights were interpreted where that is worth knowing
        self.notes: list[str] = []

    # --- inference ------------------------------------------------------------------------------

    def new_cache(self, capacity: int = 64) -> KVCache:
        c = self.config
        return KVCache(c.num_hidden_layers, c.num_key_value_heads, c.head_dim, self.dtype, self.device, capacity)

    def _check_tokens(self, tokens: Sequence[int]) -> torch.Tensor:
        ids = torch.as_tensor(list(tokens), dtype=torch.long)
        if ids.dim() != 1 or ids.numel() == 0:
            raise UsageError("give at least one token id")
        bad = (ids < 0) | (ids >= self.config.vocab_size)
        if bool(bad.any()):
            raise UsageError(f"token id {int(ids[bad][0])} is outside the vocabulary (0..{self.config.vocab_size - 1})")
        return ids.to(self.device)

    @torch.inference_mode()
    def forward(
        self, tokens: Sequence[int] | torch.Tensor, cache: KVCache | None = None, last_only: bool = False
    ) -> torch.Tensor:
        """float32 logits ``[T, vocab]`` (``[1, vocab]`` with ``last_only``) for ``tokens`` after the cache."""
        ids = self._check_tokens(tokens.tolist() if isinstance(tokens, torch.Tensor) else tokens)
        t = ids.numel()
        past = cache.length if cache is not None else 0
        if past + t > self.config.max_position_embeddings:
            limit = self.config.max_position_embeddings
            raise UsageError(f"{past + t} positions exceed the model's max_position_embeddings ({limit})")
        positions = torch.arange(past, past + t, device=self.device, dtype=torch.float32)
        freqs = positions[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(self.dtype), emb.sin().to(self.dtype)
        h = self.embed[ids]
        for i, layer in enumerate(self.layers):
            h = h + self._attention(i, layer, rms_norm(h, layer.input_norm, self.eps), cos, sin, cache, past)
            h = h + self._mlp(layer, rms_norm(h, layer.post_attention_norm, self.eps))
        if cache is not None:
            cache.advance(t)
        if last_only:
            h = h[-1:]
        h = rms_norm(h, self.norm, self.eps)
        return F.linear(h, self.lm_head).to(torch.float32)

    def logits(self, tokens: Sequence[int]) -> torch.Tensor:
        """float32 logits ``[T, vocab]`` on the CPU for one sequence, no cache kept."""
        return self.forward(tokens).cpu()

    def _attention(
        self,
        index: int,
        layer: Layer,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: KVCache | None,
        past: int,
    ) -> torch.Tensor:
        c = self.config
        t, d = x.shape[0], c.head_dim
        q = layer.q(x).view(t, c.num_attention_heads, d).transpose(0, 1)
        k = layer.k(x).view(t, c.num_key_value_heads, d).transpose(0, 1)
        v = layer.v(x).view(t, c.num_key_value_heads, d).transpose(0, 1)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if cache is not None:
            k, v = cache.update(index, k, v)
        groups = c.num_attention_heads // c.num_key_value_heads
        if groups > 1:  # kv head j serves query heads j*groups .. j*groups + groups-1
            s = k.shape[1]
            k = k[:, None].expand(c.num_key_value_heads, groups, s, d).reshape(c.num_attention_heads, s, d)
            v = v[:, None].expand(c.num_key_value_heads, groups, s, d).reshape(c.num_attention_heads, s, d)
        if t == 1:
            out = F.scaled_dot_product_attention(q[None], k[None], v[None], scale=self.scaling)
        elif past == 0:
            out = F.scaled_dot_product_attention(q[None], k[None], v[None], is_causal=True, scale=self.scaling)
        else:  # several new tokens after cached ones: each sees the past and the new ones up to itself
            s = k.shape[1]
            mask = torch.arange(s, device=self.device)[None, :] <= (past + torch.arange(t, device=self.device))[:, None]
            out = F.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=mask, scale=self.scaling)
        out = out[0].transpose(0, 1).reshape(t, c.num_attention_heads * d)
        if layer.attn_sub_norm is not None:
            out = rms_norm(out, layer.attn_sub_norm, self.eps)
        return layer.o(out)

    def _mlp(self, layer: Layer, x: torch.Tensor) -> torch.Tensor:
        h = self.act(layer.gate(x)) * layer.up(x)
        if layer.ffn_sub_norm is not None:
            h = rms_norm(h, layer.ffn_sub_norm, self.eps)
        return layer.down(h)

    # --- figures --------------------------------------------------------------------------------

    def weight_bytes(self) -> int:
        """Bytes held by weights (embedding counted once when the head is tied)."""
        total = self.embed.numel() * self.embed.element_size() + self.norm.numel() * self.norm.element_size()
        if self.lm_head is not self.embed:
            total += self.lm_head.numel() * self.lm_head.element_size()
        for layer in self.layers:
            for lin in (layer.q, layer.k, layer.v, layer.o, layer.gate, layer.up, layer.down):
                total += lin.nbytes
            for norm in (layer.input_norm, layer.post_attention_norm, layer.attn_sub_norm, layer.ffn_sub_norm):
                if norm is not None:
                    total += norm.numel() * norm.element_size()
        return total


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to do
        return None


def release_freed_memory() -> None:
    """Hand memory freed by temporaries back to the OS (glibc keeps it otherwise).

    Loading frees many tensor-sized temporaries (read buffers, unpacked planes); after a few big
    frees glibc serves later ones from its heap and keeps the holes, which shows as resident memory
    long after the load (about a quarter of the weights' size in the 2B-4T-shaped benchmark).
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"unknown device {device!r}; use cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available")
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"device {device!r} is not supported; use cpu or cuda")
    return dev


def load_model(
    src: str | Path | Checkpoint,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    use_kernels: bool | None = None,
    progress: Progress = no_progress,
) -> RuntimeModel:
    """Build the reference model from a checkpoint (path in any readable format, or opened).

    ``dtype`` is the compute dtype of activations and of the dense weights (embedding, norms,
    LM head); ternary weights stay int8 codes (or packed bytes on CUDA) whatever it is.
    ``use_kernels``: use the Triton kernels (default: on CUDA when Triton imports; True on the CPU
    needs ``TRITON_INTERPRET=1`` and is for tests only).
    """
    dev = _device(device)
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise UsageError(f"compute dtype must be float32, bfloat16 or float16, got {dtype}")
    ckpt = src if isinstance(src, Checkpoint) else open_checkpoint(src)
    cfg = ckpt.config
    where = str(ckpt.path / "config.json") if ckpt.path.is_dir() else str(ckpt.path)
    if cfg.hidden_act not in ACTIVATIONS:
        raise CheckpointError(where, f"hidden_act {cfg.hidden_act!r} is not supported by the runtime (relu2, silu)")
    if _rope_type(cfg) != "default":
        raise CheckpointError(where, f"RoPE type {_rope_type(cfg)!r} is not supported by the runtime (default only)")
    if use_kernels is None:  # by default only where they are fast: the CPU has its own int8 path
        kernel = dev.type == "cuda" and kernels_usable(dev)
    elif use_kernels and not kernels_usable(dev):
        raise UsageError(f"the Triton kernels cannot run on {dev} (they need CUDA, or TRITON_INTERPRET=1 on the CPU)")
    else:
        kernel = use_kernels
    q = cfg.quantization
    input_norm_eps = q.rms_norm_eps if q is not None and q.use_rms_norm else None
    model = RuntimeModel(cfg, dev, dtype)
    model.source = f"{ckpt.path} ({ckpt.format})"
    parts: dict[str, object] = {}
    recorded = 0
    names = list(ckpt.tensors)
    for i, name in enumerate(names):
        progress(i, len(names), name)
        entry = ckpt.tensors[name]
        value = entry.load()
        if ckpt.is_quantized_linear(name):
            if not entry.ternary:
                # Stored as floats: quantize what is on disk, as transformers' online WeightQuant does
                # (s = 1/mean|W| in fp32). A reader may hand such floats over as codes + a recorded
                # scale (unpack output); their float values are exactly codes x that magnitude.
                if isinstance(value, TernaryWeight):
                    online = ckpt.info.get("float_values") == VALUES_ONLINE
                    value = value.online_master(entry.dtype) if online else value.dequantize(entry.dtype)
                    recorded += 1
                value = quantize(value, LinearClass.BITLINEAR, torch.float32)
            parts[name] = TernaryLinear(value, dev, input_rms_norm_eps=input_norm_eps, use_kernel=kernel)
        elif isinstance(value, TernaryWeight):
            parts[name] = DenseLinear(value.dequantize(dtype).to(dev))
        else:
            parts[name] = value.to(device=dev, dtype=dtype)
        del value
        if name.endswith("down_proj.weight"):  # once per layer
            release_freed_memory()
    progress(len(names), len(names), "")
    release_freed_memory()
    if recorded:
        model.notes.append(
            f"{recorded} weights are stored as floats with a recorded ternary scale; they were quantized online "
            "from the floats, as transformers does, not read as codes + recorded scale"
        )
    _assemble(model, cfg, parts)
    return model


def _assemble(model: RuntimeModel, cfg: ModelConfig, parts: dict[str, object]) -> None:
    spec = ARCH_SPECS[cfg.architecture]

    def linear(name: str) -> TernaryLinear | DenseLinear:
        p = parts[name]
        return p if isinstance(p, (TernaryLinear, DenseLinear)) else DenseLinear(p)  # not converted: dense

    model.embed = parts["model.embed_tokens.weight"]  # type: ignore[assignment]
    model.norm = parts["model.norm.weight"]  # type: ignore[assignment]
    model.lm_head = model.embed if cfg.tie_word_embeddings else parts["lm_head.weight"]  # type: ignore[assignment]
    def norm(name: str | None) -> torch.Tensor | None:
        return parts[name + ".weight"] if name else None  # type: ignore[return-value]

    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        lins = {lin.split(".")[-1].removesuffix("_proj"): linear(p + lin + ".weight") for lin in QUANTIZED_LINEARS}
        model.layers.append(
            Layer(
                input_norm=norm(p + "input_layernorm"),  # type: ignore[arg-type]
                post_attention_norm=norm(p + "post_attention_layernorm"),  # type: ignore[arg-type]
                attn_sub_norm=norm(p + spec.attn_sub_norm if spec.attn_sub_norm else None),
                ffn_sub_norm=norm(p + spec.ffn_sub_norm if spec.ffn_sub_norm else None),
                **lins,
            )
        )


def compute_logits(
    src: str | Path | Checkpoint,
    tokens: Sequence[int],
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """float32 logits ``[len(tokens), vocab]`` (on the CPU) of the reference runtime for ``src``."""
    model = load_model(src, device, dtype)
    try:
        return model.logits(tokens)
    finally:
        del model
