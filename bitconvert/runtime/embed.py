"""Sentence embeddings from an embedding model, as sentence-transformers computes them.

The model's sentence-transformers side files say what follows the backbone (``modules.json``: a
Transformer, a Pooling module, then e.g. Dense and Normalize modules); :class:`Embedder` applies
exactly that: text (with a named prompt prepended, lower-cased where ``do_lower_case`` says so)
through the checkpoint's ``tokenizer.json`` with its special tokens (Qwen3's appends the end token
last-token pooling reads), refused beyond ``max_seq_length``; the backbone's final-normed hidden
states (the runtime, W1.58A8); the pooling mode of ``1_Pooling/config.json``; then, in the order
``modules.json`` lists them, each Dense module (``activation(x W^T + b)``, its weights from the
folder's ``model.safetensors``) and L2 normalization. One sequence at a time, so no padding is
involved. A pipeline step it cannot compute (a module before the pooling, several pooling modes at
once, an unknown activation) is refused in one line naming the file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError, UsageError
from ..formats import Progress, no_progress, open_checkpoint
from ..model.checkpoint import Checkpoint
from ..model.families import EMBEDDING_TASK
from ..model.sentence_transformers import (
    MODULE_CONFIG,
    MODULES_FILE,
    DenseLayer,
    EmbeddingSetup,
    Pooling,
    read_embedding_setup,
)
from .model import RuntimeModel, dense_tensor, load_model, refuse_unless
from .tokenizer import TextTokenizer

#: the pipeline steps computed here, by class name; the Transformer is the backbone itself
COMPUTED_MODULES = ("Transformer", "Pooling", "Dense", "Normalize")
#: a Dense module's activation, by the class name sentence-transformers saves for it
DENSE_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "torch.nn.modules.linear.Identity": lambda x: x,
    "torch.nn.modules.activation.Tanh": torch.tanh,
    "torch.nn.modules.activation.ReLU": torch.relu,
    "torch.nn.modules.activation.Sigmoid": torch.sigmoid,
    "torch.nn.modules.activation.GELU": torch.nn.functional.gelu,
}
DENSE_WEIGHTS = "model.safetensors"
Step = Callable[[torch.Tensor], torch.Tensor]


def _weighted_mean(h: torch.Tensor, skip: int) -> torch.Tensor:
    weights = torch.arange(1, h.shape[0] + 1, dtype=h.dtype)[:, None]  # position i weighs i + 1
    weights[:skip] = 0
    return (h * weights).sum(0) / weights.sum()


#: sentence-transformers' pooling modes over one unpadded sequence's hidden states ``[T, hidden]``;
#: ``skip``: the prompt's tokens, which a Pooling with ``include_prompt: false`` leaves out of its
#: averages (the first and last token are found as before, as sentence-transformers finds them)
POOLINGS: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
    "lasttoken": lambda h, skip: h[-1],
    "cls_token": lambda h, skip: h[0],
    "mean_tokens": lambda h, skip: h[skip:].mean(0),
    "max_tokens": lambda h, skip: h[skip:].max(0).values,
    "mean_sqrt_len_tokens": lambda h, skip: h[skip:].sum(0) / ((h.shape[0] - skip) ** 0.5),
    "weightedmean_tokens": _weighted_mean,
}


def l2_normalize(v: torch.Tensor) -> torch.Tensor:
    """``v / max(|v|, 1e-12)``, as torch's F.normalize (sentence-transformers' Normalize)."""
    return v / v.norm().clamp_min(1e-12)


#: GGUF's ``{arch}.pooling_type`` (llama.cpp's enum) -> the sentence-transformers pooling mode
GGUF_POOLING = {1: "mean_tokens", 2: "cls_token", 3: "lasttoken"}


def embedding_setup(ckpt: Checkpoint, notes: list[str] | None = None) -> EmbeddingSetup:
    """The side files' pipeline, checked for what :class:`Embedder` computes (one line otherwise).

    A GGUF without them (another converter's) is embedded with its ``pooling_type`` and L2
    normalization, as llama.cpp's embedding tool does by default; ``notes`` says so."""
    files = ckpt.side_file_names()
    where = files.get(MODULES_FILE, ckpt.path)
    setup = read_embedding_setup(files)
    pooling_type = ckpt.facts.gguf.pooling_type if ckpt.facts.gguf is not None else None
    if setup is None and pooling_type in GGUF_POOLING:
        mode = GGUF_POOLING[pooling_type]
        if notes is not None:
            notes.append(f"no sentence-transformers files: pooling {mode} from the GGUF's pooling_type "
                         f"({pooling_type}), L2-normalized as llama.cpp's embedding tool does")  # fmt: skip
        return EmbeddingSetup((), Pooling((mode,)), normalize=True)
    if setup is None:
        raise CheckpointError(ckpt.path, f"no {MODULES_FILE} and no GGUF pooling_type: the model's pooling is "
                                         "unknown, nothing to embed with")  # fmt: skip
    other = [m.kind for m in setup.modules if m.kind not in COMPUTED_MODULES]
    if other:
        raise CheckpointError(where, f"module {other[0]} is not computed by the runtime ({', '.join(COMPUTED_MODULES)})")
    kinds = [m.kind for m in setup.modules]
    if "Pooling" in kinds and any(k not in ("Transformer", "Pooling") for k in kinds[: kinds.index("Pooling")]):
        raise CheckpointError(where, "a module before the Pooling is not computed by the runtime (only after it)")
    dense = [m.path for m in setup.modules if m.kind == "Dense" and m.path not in setup.dense]
    if dense:
        raise CheckpointError(where, f"Dense module {dense[0]!r:.80} has no {MODULE_CONFIG} in its folder")
    if setup.pooling is None:
        raise CheckpointError(where, "no Pooling module with its config.json: the pooling is unknown")
    if len(setup.pooling.modes) != 1 or setup.pooling.modes[0] not in POOLINGS:
        modes = "+".join(setup.pooling.modes) or "none"
        folder = next(m.path for m in setup.modules if m.kind == "Pooling")
        raise CheckpointError(files.get(f"{folder}/{MODULE_CONFIG}", where),
                              f"pooling {modes} is not computed by the runtime (one of {', '.join(POOLINGS)})")
    return setup


def _dense_step(ckpt: Checkpoint, layer: DenseLayer, device: torch.device) -> Step:
    """``activation(x @ W.T + b)`` with the module folder's weights, checked against its config."""
    from ..io.safetensors import SafetensorsFile

    files = ckpt.side_file_names()
    config = files.get(f"{layer.folder}/{MODULE_CONFIG}", ckpt.path)
    if layer.activation not in DENSE_ACTIVATIONS:
        raise CheckpointError(config, f"Dense activation {layer.activation!r:.80} is not computed by the runtime")
    name = f"{layer.folder}/{DENSE_WEIGHTS}"
    if name not in files:
        raise CheckpointError(config, f"no {name} beside it (the Dense weights; a pickle is never loaded)")
    st = SafetensorsFile(files[name])
    wanted = {"linear.weight": (layer.out_features, layer.in_features)}
    if layer.bias:
        wanted["linear.bias"] = (layer.out_features,)
    values = {}
    for key, shape in wanted.items():
        if key not in st.tensors or tuple(st.tensors[key].shape) != shape:
            found = tuple(st.tensors[key].shape) if key in st.tensors else "none"
            raise CheckpointError(files[name], f"{key} must be {list(shape)} as the config says, found {found}")
        values[key] = dense_tensor(st.read(key), torch.float32, device)
    weight, bias, act = values["linear.weight"], values.get("linear.bias"), DENSE_ACTIVATIONS[layer.activation]
    return lambda v: act(torch.nn.functional.linear(v, weight, bias))


def pipeline_steps(ckpt: Checkpoint, setup: EmbeddingSetup, device: torch.device) -> list[Step]:
    """What follows the Pooling, in the order of ``modules.json``: Dense layers and the normalization."""
    steps: list[Step] = []
    for module in setup.modules:
        if module.kind == "Dense":
            steps.append(_dense_step(ckpt, setup.dense[module.path], device))
        elif module.kind == "Normalize":
            steps.append(l2_normalize)
    if not setup.modules and setup.normalize:  # a GGUF's pooling_type: normalized, as llama.cpp does
        steps.append(l2_normalize)
    return steps


@dataclass
class Embedded:
    """One input's embedding: its token ids and its float32 vector."""

    tokens: list[int]
    vector: np.ndarray
    text: str | None = None


@dataclass
class Embedder:
    """A loaded embedding model with its tokenizer and pipeline."""

    model: RuntimeModel
    setup: EmbeddingSetup
    tokenizer: TextTokenizer | None
    source: str
    notes: list[str] = field(default_factory=list)
    #: what follows the pooling (see :func:`pipeline_steps`)
    steps: list[Step] = field(default_factory=list)

    @property
    def pooling(self) -> str:
        return self.setup.pooling_mode() or ""

    def _prompt(self, prompt_name: str | None) -> str:
        """The prompt text named (or the model's default), "" for none."""
        name = prompt_name if prompt_name is not None else self.setup.default_prompt_name
        if name is None:
            return ""
        if name not in self.setup.prompts:
            known = ", ".join(self.setup.prompts) or "none"
            raise UsageError(f"{self.source}: no prompt named {name!r} (the model has: {known})")
        return self.setup.prompts[name]

    def prompt_length(self, prompt_name: str | None = None) -> int:
        """How many leading tokens the pooling leaves out: the prompt's, where the Pooling module says
        ``include_prompt: false`` (counted as sentence-transformers 5 counts them: the prompt encoded
        alone, less a final special token such as an appended end token); else 0."""
        prompt = self._prompt(prompt_name)
        if not prompt or self.setup.pooling is None or self.setup.pooling.include_prompt:
            return 0
        ids = self._tokenize(prompt)
        assert self.tokenizer is not None  # _tokenize refused otherwise
        return len(ids) - (1 if ids and ids[-1] in self.tokenizer.special_ids() else 0)

    def _tokenize(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise UsageError(f"{self.source} has no tokenizer.json (a GGUF's is rebuilt from a byte-level BPE "
                             "vocabulary only); give token ids (--tokens) instead of text")  # fmt: skip
        if self.setup.do_lower_case:
            text = text.lower()
        return self.tokenizer.tokenizer.encode(text, add_special_tokens=True).ids

    def encode(self, text: str, prompt_name: str | None = None) -> list[int]:
        """Token ids of ``text`` as sentence-transformers feeds them (prompt, case, specials, length)."""
        ids = self._tokenize(self._prompt(prompt_name) + text)
        limit = self.setup.max_seq_length
        if limit is not None and len(ids) > limit:  # the end (with the end token) is what pools
            raise UsageError(f"{len(ids)} tokens exceed the model's max_seq_length ({limit})")
        return ids

    def embed_tokens(self, ids: Sequence[int], skip: int = 0) -> np.ndarray:
        """The float32 embedding of one token sequence, pooled and normalized as the side files say
        (``skip``: leading prompt tokens the pooling leaves out, see :meth:`prompt_length`)."""
        if skip >= len(ids) and skip:
            raise UsageError(f"the text adds no token after the prompt's {skip}: nothing to pool")
        hidden = self.model.hidden_states(list(ids))
        v = POOLINGS[self.pooling](hidden, skip).to(self.model.device)
        for step in self.steps:
            v = step(v)
        return v.cpu().numpy()

    def embed(self, texts: Sequence[str] = (), tokens: Sequence[Sequence[int]] = (),
              prompt_name: str | None = None) -> list[Embedded]:  # fmt: skip
        """Each text's embedding (through the tokenizer), then each token list's (as given)."""
        out = []
        skip = self.prompt_length(prompt_name) if texts else 0
        for text in texts:
            ids = self.encode(text, prompt_name)
            out.append(Embedded(ids, self.embed_tokens(ids, skip), text))
        for ids in tokens:
            out.append(Embedded(list(ids), self.embed_tokens(ids)))
        return out


def load_embedder(
    src: str | Path | Checkpoint,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = torch.float32,
    *,
    progress: Progress = no_progress,
) -> Embedder:
    """An :class:`Embedder` for ``src`` (any readable layout of an embedding family); a UsageError
    naming it when it is a causal LM, a CheckpointError when its pipeline cannot be computed."""
    ckpt = src if isinstance(src, Checkpoint) else open_checkpoint(src)
    refuse_unless(ckpt.config, EMBEDDING_TASK, ckpt.path)
    notes: list[str] = []
    setup = embedding_setup(ckpt, notes)  # before the weights: a pipeline we cannot compute is refused first
    tokenizer = TextTokenizer.from_checkpoint(ckpt)
    model = load_model(ckpt, device, dtype, progress=progress)
    steps = pipeline_steps(ckpt, setup, model.device)
    return Embedder(model, setup, tokenizer, f"{ckpt.path}", list(ckpt.notes) + notes + list(model.notes), steps)


def embed(
    src: str | Path | Checkpoint,
    texts: Sequence[str] = (),
    *,
    tokens: Sequence[Sequence[int]] = (),
    prompt_name: str | None = None,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = torch.float32,
) -> np.ndarray:
    """float32 ``[len(texts) + len(tokens), dim]``: the sentence embeddings of ``texts`` (through the
    checkpoint's tokenizer, with prompt ``prompt_name`` if given) then of ``tokens`` (ids as given),
    from any readable checkpoint of an embedding family."""
    if not texts and not tokens:
        raise UsageError("give at least one text or token list to embed")
    embedder = load_embedder(src, device, dtype)
    return np.stack([e.vector for e in embedder.embed(texts, tokens, prompt_name)])
