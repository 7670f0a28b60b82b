"""The reference model: any BitNet family in plain PyTorch, built from a Checkpoint.

One forward pass follows transformers' BitNetForCausalLM / LlamaForCausalLM (with its bitnet
quantizer) operation by operation: embedding, the family's runtime block per layer
(:mod:`bitconvert.runtime.blocks`), final RMSNorm, tied or separate LM head. RoPE is computed in
fp32 and cast. Linear layers are :class:`~bitconvert.runtime.linear.TernaryLinear` (W1.58A8).

Weights arrive as numpy values (:class:`~bitconvert.dtypes.Dense`, :class:`~bitconvert.ternary.TernaryWeight`)
and become torch tensors here, one at a time. A quantized linear stored quantized (packed, GGUF)
is used as stored, codes and scale; one stored as floats (a master's LATENT entry, ``unpack``
output too) is quantized on load with absmean, the arithmetic of transformers' online
``WeightQuant``, so the runtime computes what transformers computes from the same file. (For
``unpack`` output that differs from the packed source: absmean of codes x m is p*m, p the fraction
of non-zero codes; ``verify --logits`` shows it.) Latent floats are dropped as soon as they are quantized.
"""

from __future__ import annotations

import ctypes
import functools
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..dtypes import Dense, dtype_name, torch_dtype
from ..errors import CheckpointError, UsageError
from ..formats import Progress, no_progress, open_checkpoint
from ..formats.options import SHORT_NAMES
from ..model.checkpoint import Checkpoint, Kind, as_dense
from ..model.config import ModelConfig
from ..model.families import CAUSAL_LM, EMBEDDING_ROLE, FINAL_NORM_ROLE, LM_HEAD_ROLE
from ..ternary import LinearClass, TernaryWeight, quantize
from ..ternary.quantize import matches_record
from . import normed_block  # noqa: F401  (registers the embedding families' block)
from .blocks import ACTIVATIONS, BitNetBlock, block_for
from .cache import KVCache
from .linear import TernaryLinear, kernels_usable, offset_rms_norm

#: what the token embeddings are multiplied by before the first layer (``Family.embedding_scale``)
EMBEDDING_SCALES = {"none": lambda cfg: None, "sqrt_hidden": lambda cfg: cfg.hidden_size**0.5}

#: compute dtypes the runtime runs in, by name
COMPUTE_DTYPES = ("F32", "BF16", "F16")


def _rope_type(cfg: ModelConfig) -> str:
    raw = cfg.raw
    params = raw.get("rope_parameters") if isinstance(raw.get("rope_parameters"), dict) else {}
    scaling = raw.get("rope_scaling") if isinstance(raw.get("rope_scaling"), dict) else {}
    return str(params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default")


class RuntimeModel:
    """A loaded model for one sequence at a time. ``logits(tokens)`` is the comparison entry point."""

    def __init__(self, config: ModelConfig, device: torch.device, dtype: torch.dtype) -> None:
        self.config = config
        self.device = device
        self.dtype = dtype
        self.embed: torch.Tensor
        #: one runtime block per layer (the family's, see bitconvert.runtime.blocks)
        self.layers: list[BitNetBlock] = []
        self.norm: torch.Tensor
        self.lm_head: torch.Tensor
        d = config.head_dim
        #: each layer's RoPE base (Gemma3's sliding layers rotate with their own), and its frequencies
        self.layer_bases = [config.layer_attention(i)[0] for i in range(config.num_hidden_layers)]
        self.inv_freqs = {
            base: (1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.float32) / d))).to(device)
            for base in sorted(set(self.layer_bases) | {config.rope_theta})
        }
        self.inv_freq = self.inv_freqs[config.rope_theta]
        scale = EMBEDDING_SCALES[config.family.embedding_scale](config)
        #: the embedding multiplier, in the compute dtype as transformers casts it (None: none)
        self.embed_scale = None if scale is None else torch.tensor(scale, dtype=torch.float32).to(device, dtype)
        self.final_norm_offset = config.family.final_norm_offset
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

    def refuse_unless(self, task: str) -> None:
        """A UsageError unless this model computes ``task`` (a causal LM's logits, an embedding model's
        hidden states for pooling): one line naming the model and what it computes instead."""
        refuse_unless(self.config, task, self.source)

    def _backbone(self, tokens: Sequence[int], cache: KVCache | None) -> torch.Tensor:
        """The final-normed hidden states ``[T, hidden]`` (compute dtype) of ``tokens`` after the cache."""
        ids = self._check_tokens(tokens.tolist() if isinstance(tokens, torch.Tensor) else tokens)
        t = ids.numel()
        past = cache.length if cache is not None else 0
        if past + t > self.config.max_position_embeddings:
            limit = self.config.max_position_embeddings
            raise UsageError(f"{past + t} positions exceed the model's max_position_embeddings ({limit})")
        positions = torch.arange(past, past + t, device=self.device, dtype=torch.float32)
        ropes = {}
        for base, inv_freq in self.inv_freqs.items():
            freqs = positions[:, None] * inv_freq[None, :]
            emb = torch.cat((freqs, freqs), dim=-1)
            ropes[base] = (emb.cos().to(self.dtype), emb.sin().to(self.dtype))
        h = self.embed[ids]
        if self.embed_scale is not None:
            h = h * self.embed_scale
        for i, layer in enumerate(self.layers):
            cos, sin = ropes[self.layer_bases[i]]
            h = layer(h, i, cos, sin, cache, past)
        if cache is not None:
            cache.advance(t)
        return h

    @torch.inference_mode()
    def forward(
        self, tokens: Sequence[int] | torch.Tensor, cache: KVCache | None = None, last_only: bool = False
    ) -> torch.Tensor:
        """float32 logits ``[T, vocab]`` (``[1, vocab]`` with ``last_only``) for ``tokens`` after the cache."""
        self.refuse_unless(CAUSAL_LM)
        h = self._backbone(tokens, cache)
        if last_only:
            h = h[-1:]
        h = offset_rms_norm(h, self.norm, self.eps, self.final_norm_offset)
        return F.linear(h, self.lm_head).to(torch.float32)

    @torch.inference_mode()
    def hidden_states(self, tokens: Sequence[int]) -> torch.Tensor:
        """float32 ``[T, hidden]`` on the CPU: the backbone's output after its final norm, what an
        embedding model pools (one sequence, no cache)."""
        h = offset_rms_norm(self._backbone(tokens, None), self.norm, self.eps, self.final_norm_offset)
        return h.to(torch.float32).cpu()

    def logits(self, tokens: Sequence[int]) -> torch.Tensor:
        """float32 logits ``[T, vocab]`` on the CPU for one sequence, no cache kept."""
        return self.forward(tokens).cpu()

    # --- figures --------------------------------------------------------------------------------

    def weight_bytes(self) -> int:
        """Bytes held by weights (embedding counted once when the head is tied)."""
        total = self.embed.numel() * self.embed.element_size() + self.norm.numel() * self.norm.element_size()
        if self.lm_head is not self.embed:
            total += self.lm_head.numel() * self.lm_head.element_size()
        for layer in self.layers:
            total += sum(lin.nbytes for lin in layer.linears())
            total += sum(norm.numel() * norm.element_size() for norm in layer.norms())
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


def refuse_unless(cfg: ModelConfig, task: str, source: object) -> None:
    """A UsageError naming ``source`` unless its model computes ``task`` (``Family.task``)."""
    if cfg.family.task == task:
        return
    if task == CAUSAL_LM:
        raise UsageError(f"{source}: {cfg.family.title} is an embedding model, it has no next-token logits "
                         "to run or generate with; use bitconvert embed")  # fmt: skip
    raise UsageError(f"{source}: {cfg.family.title} is a causal language model, not an embedding model; "
                     "use bitconvert run or logits")  # fmt: skip


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


def _compute_dtype(dtype: str | torch.dtype) -> str:
    """The compute dtype's name, from a torch dtype or a name (``"BF16"``, or ``"bf16"`` as typed)."""
    try:
        name = SHORT_NAMES.get(dtype, dtype) if isinstance(dtype, str) else dtype_name(dtype)
    except (KeyError, TypeError):
        name = None
    if name not in COMPUTE_DTYPES:
        raise UsageError(f"compute dtype must be float32, bfloat16 or float16, got {dtype}")
    return name


def dense_tensor(value: Dense, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``value`` as a torch tensor of ``dtype`` on ``device``, copied at most once.

    A value read from a file is usually a read-only view of its mapping: where it must be converted
    anyway, torch converts straight from that view (the result is a new tensor, so nothing ever
    writes through it); otherwise :meth:`Dense.torch` copies it once.
    """
    data = value.data
    if data.flags.writeable or (torch_dtype(value.dtype_name) == dtype and device.type == "cpu"):
        return value.torch().to(device=device, dtype=dtype)
    with warnings.catch_warnings():  # torch warns about read-only arrays; this view is only read
        warnings.simplefilter("ignore", UserWarning)
        view = torch.from_numpy(np.ascontiguousarray(data))
    if value.dtype_name == "BF16":
        view = view.view(torch.bfloat16)
    return view.to(device=device, dtype=dtype)


def _quantized_linear(entry, value, recorded: list[str]) -> TernaryWeight:
    """The codes and scale a quantized linear runs with: stored ternary as it is; floats quantized as
    transformers' online WeightQuant does (s = 1/mean|W| in fp32, the layer divides by it)."""
    if isinstance(value, TernaryWeight):
        return value
    # Floats written from a ternary weight (unpack output) carry its scale in a record; they are still
    # quantized from the floats, as transformers does, which the notes then say.
    if entry.kind is Kind.LATENT and entry.record is not None and matches_record(value, entry.record) is not None:
        recorded.append(entry.name)
    return quantize(value, LinearClass.BITLINEAR, "F32")


def load_model(
    src: str | Path | Checkpoint,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = torch.float32,
    *,
    use_kernels: bool | None = None,
    progress: Progress = no_progress,
) -> RuntimeModel:
    """Build the reference model from a checkpoint (path in any readable format, or opened).

    ``dtype`` is the compute dtype of activations and of the dense weights (embedding, norms,
    LM head): a torch dtype or its name (``"BF16"``); ternary weights stay int8 codes (or packed
    bytes on CUDA) whatever it is. ``use_kernels``: use the Triton kernels (default: on CUDA when
    Triton imports; True on the CPU needs ``TRITON_INTERPRET=1`` and is for tests only).
    """
    dev = _device(device)
    compute = _compute_dtype(dtype)
    torch_compute = torch_dtype(compute)
    ckpt = src if isinstance(src, Checkpoint) else open_checkpoint(src)
    cfg = ckpt.config
    where = str(ckpt.path / "config.json") if ckpt.path.is_dir() else str(ckpt.path)
    block = block_for(cfg, where)  # first: a family the runtime cannot compute is refused as such
    if cfg.hidden_act not in ACTIVATIONS:
        known = ", ".join(ACTIVATIONS)
        raise CheckpointError(where, f"hidden_act {cfg.hidden_act!r} is not supported by the runtime ({known})")
    if cfg.bidirectional or cfg.attn_logit_softcapping is not None:
        what = "bidirectional attention" if cfg.bidirectional else "attention logit soft-capping"
        raise CheckpointError(where, f"{what} is not supported by the runtime (causal attention without capping only)")
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
    model = RuntimeModel(cfg, dev, torch_compute)
    model.source = f"{ckpt.path} ({ckpt.format})"
    parts: dict[str, object] = {}
    recorded: list[str] = []
    names = list(ckpt.tensors)
    for i, name in enumerate(names):
        progress(i, len(names), name)
        entry = ckpt.tensors[name]
        value = entry.load()
        if ckpt.is_quantized_linear(name):
            weight = _quantized_linear(entry, value, recorded)
            del value
            parts[name] = TernaryLinear(weight, dev, input_rms_norm_eps=input_norm_eps, use_kernel=kernel)
            del weight
        else:  # dense as stored; a ternary tensor the config leaves unconverted runs dequantized
            parts[name] = dense_tensor(as_dense(value, compute), torch_compute, dev)
            del value
        if name.endswith("down_proj.weight"):  # once per layer
            release_freed_memory()
    progress(len(names), len(names), "")
    release_freed_memory()
    if recorded:
        model.notes.append(
            f"{len(recorded)} weights are stored as floats with a recorded ternary scale; they were quantized online "
            "from the floats, as transformers does, not read as codes + recorded scale"
        )
    model.embed = parts[cfg.tensor_name(EMBEDDING_ROLE)]  # type: ignore[assignment]
    model.norm = parts[cfg.tensor_name(FINAL_NORM_ROLE)]  # type: ignore[assignment]
    tied = cfg.tie_word_embeddings
    model.lm_head = model.embed if tied else parts[cfg.tensor_name(LM_HEAD_ROLE)]  # type: ignore[assignment]
    model.layers = [block(cfg, cfg.layer_prefix(i), parts, where) for i in range(cfg.num_hidden_layers)]
    return model


def compute_logits(
    src: str | Path | Checkpoint,
    tokens: Sequence[int],
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = torch.float32,
) -> torch.Tensor:
    """float32 logits ``[len(tokens), vocab]`` (on the CPU) of the reference runtime for ``src``."""
    ckpt = src if isinstance(src, Checkpoint) else open_checkpoint(src)
    refuse_unless(ckpt.config, CAUSAL_LM, ckpt.path)  # before anything is loaded
    model = load_model(ckpt, device, dtype)
    try:
        return model.logits(tokens)
    finally:
        del model
