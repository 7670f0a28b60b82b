"""The three Nanotron codebases bitconvert writes for, as facts, and what each cannot hold. No I/O.

Each fact below was read from the code at the named commit (huggingface/nanotron):

- ``pr180`` (refs/pull/180/head, 2239f41e), the open BitNet pull request:
  ``LlamaForTrainingBitNet`` in ``models/llama_bitnet.py``, config ``LlamaBitNetConfig``
  (``is_bitnet_config``, no ``rope_theta`` field). Its decoder layer has no layernorms (both are
  commented out; each BitLinear normalizes its input without weights) and names its MLP attribute
  ``MLPBitNet``. RoPE: interleaved, base 10000 (``RotaryEmbedding`` built without ``theta``).
  Checkpoint version 1.4; ``load_weights`` refuses a newer one.
- ``pr178`` (e1c3c1a5), the same PR one commit earlier (closed PRs #178/#179): the same model
  with ``input_layernorm``, ``post_attention_layernorm`` and the MLP named ``mlp``.
- ``main`` (2411b022): no BitNet model. ``LlamaForTraining`` with ``LlamaConfig``
  (``is_llama_config``; holds ``rope_theta`` and ``rope_interleaved``, refuses ``is_bitnet_config``)
  runs every linear layer in full precision. Checkpoint version 1.5 (it loads 1.4 too).

No Nanotron model has the attention/FFN sub-norms of microsoft/bitnet-b1.58-2B-4T and 1bitLLM.
All three build the MLP activation from the same ``ACT2FN`` table (``nn/activations.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ...model.config import ModelConfig
from .options import DEFAULT_FLAVOR as _OPTIONS_DEFAULT
from .options import FLAVOR_CHOICES

#: the RoPE base every model without a ``rope_theta`` field uses
NANOTRON_ROPE_THETA = 10000.0
#: ``ACT2FN`` keys in nanotron/nn/activations.py (identical at all three commits)
ACTIVATIONS = frozenset(
    ["gelu", "gelu_10", "gelu_fast", "gelu_new", "gelu_python", "gelu_pytorch_tanh", "gelu_accurate", "laplace", "linear", "mish", "quick_gelu", "relu", "relu2", "relu6", "sigmoid", "silu", "swish", "tanh"]
)


@dataclass(frozen=True)
class Flavor:
    name: str
    #: who wrote the code, for messages
    title: str
    #: the decoder layer's MLP attribute: the parameter folder ``decoder/<i>/pp_block/<mlp>/``
    mlp: str
    #: the decoder layer has ``input_layernorm`` and ``post_attention_layernorm``
    decoder_norms: bool
    #: the linear layers quantize their weights to ternary (BitNet b1.58)
    bitnet: bool
    #: ``rope_theta`` and ``rope_interleaved`` are config fields; otherwise base 10000, interleaved
    rope_in_config: bool
    #: checkpoint versions its ``load_weights`` accepts, the first being what its ``save_weights`` writes
    versions: tuple[str, ...]


FLAVORS: dict[str, Flavor] = {
    "pr180": Flavor("pr180", "PR #180's model (2239f41e)", "MLPBitNet", False, True, False, ("1.4",)),
    "pr178": Flavor("pr178", "PR #180's model at e1c3c1a5", "mlp", True, True, False, ("1.4",)),
    "main": Flavor("main", "main's Llama (2411b022)", "mlp", True, False, True, ("1.5", "1.4")),
}
#: PR #180 is the one BitNet model in Nanotron a user can check out today (see docs/nanotron.md)
DEFAULT_FLAVOR = "pr180"
assert DEFAULT_FLAVOR == _OPTIONS_DEFAULT and tuple(FLAVORS) == FLAVOR_CHOICES, "options.py spells the flavors out"


def losses(cfg: ModelConfig, flavor: Flavor) -> list[str]:
    """What a model built by ``flavor``'s code would not have of ``cfg``'s model, one sentence each."""
    out = []
    family = cfg.family
    subs = [n for n in (family.norm("attn_sub_norm"), family.norm("ffn_sub_norm")) if n is not None]
    if subs:
        out.append(
            f"the attention and FFN sub-norms ({', '.join(n.path for n in subs)}): {flavor.title} has no such layers"
        )
    if not flavor.decoder_norms:
        out.append(f"the decoder norm weights ({', '.join(decoder_norm_paths(cfg))}): {flavor.title} has none")
    if cfg.hidden_act not in ACTIVATIONS:
        out.append(f"the activation {cfg.hidden_act!r}: {flavor.title} does not compute it")
    if not flavor.rope_in_config and cfg.rope_theta != NANOTRON_ROPE_THETA:
        out.append(
            f"rope_theta {cfg.rope_theta:g}: {flavor.title} has no rope_theta setting and uses {NANOTRON_ROPE_THETA:g}"
        )
    if not flavor.bitnet:
        out.append(f"the BitNet b1.58 quantization: {flavor.title} runs the linear layers in full precision")
    return out


def decoder_norm_paths(cfg: ModelConfig) -> list[str]:
    """The family's pre-attention and pre-FFN norms (``input_layernorm``, ``post_attention_layernorm``)."""
    return [n.path for n in (cfg.family.norm("attn_norm"), cfg.family.norm("ffn_norm")) if n is not None]
