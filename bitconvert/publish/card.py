"""The README.md model card written when an upload has none: Hub front matter, format, loading, provenance.

What it says about the model comes from its family record (class, activation, sub-norms) and from
the consumer facts ``verify --target`` checks (what transformers and llama.cpp compute).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .. import __version__
from ..formats.gguf.archs import ACTIVATION_WORDS, graph, tensors_unknown_to
from ..model.families import CAUSAL_LM, EMBEDDING_TASK, FAMILIES, Family
from ..model.sentence_transformers import EmbeddingSetup
from ..verify.consumer_checks import family_name, foreign_sub_norms


@dataclass
class CardInput:
    repo_id: str  # where the card will live
    format: str  # bitconvert format name, e.g. hf-packed
    architecture: str  # the model family's key (``inspect``'s architecture), e.g. bitnet-b1.58
    files: list[str] = field(default_factory=list)  # files of the upload, for loading hints
    provenance: dict[str, Any] | None = None
    #: how the ternary weights are stored, as the reader labels them (e.g. "U8 packed + BF16 scale", "I2_S")
    storage: list[str] = field(default_factory=list)
    linear_class: str | None = None  # autobitlinear | bitlinear, where known
    #: an embedding model's sentence-transformers setup (pooling, normalisation, prompts), where it has one
    embedding: EmbeddingSetup | None = None


def _family(fmt: str) -> str:
    if fmt.startswith("hf-"):
        return "hf"
    if "gguf" in fmt:
        return "gguf"
    if "nanotron" in fmt:
        return "nanotron"
    return "other"


LIBRARY = {"hf": "transformers", "gguf": "gguf", "nanotron": "nanotron"}
#: the Hub's pipeline tag and extra tags by the family's task
PIPELINE = {CAUSAL_LM: "text-generation", EMBEDDING_TASK: "feature-extraction"}
TASK_TAGS = {CAUSAL_LM: [], EMBEDDING_TASK: ["sentence-transformers", "text-embeddings"]}


def _task(card: CardInput) -> str:
    family = FAMILIES.get(card.architecture)
    return family.task if family is not None else CAUSAL_LM


def front_matter(card: CardInput) -> str:
    """The YAML block the Hub reads, produced by huggingface_hub's own ModelCardData."""
    from huggingface_hub import ModelCardData

    prov = card.provenance or {}
    data = ModelCardData(
        library_name=LIBRARY.get(_family(card.format)),
        tags=["bitnet", "1.58-bit", card.format, *TASK_TAGS[_task(card)]],
        base_model=prov.get("base_model") or None,
        license=prov.get("license") or None,
        pipeline_tag=PIPELINE[_task(card)],
    )
    return data.to_yaml()


_SCALE_MEANING = {
    "autobitlinear": "the scale is mean|W| and multiplies the output",
    "bitlinear": "the scale is 1/mean|W| and divides the output",
}


def _scale_meaning(card: CardInput) -> str:
    meaning = _SCALE_MEANING.get(card.linear_class or "")
    return f" (here `{card.linear_class}`: {meaning})." if meaning else "."


def _storage(card: CardInput) -> str:
    return f" Ternary weights stored as: {', '.join(card.storage)}." if card.storage else ""


def _format_text(card: CardInput) -> str:
    fam = _family(card.format)
    if card.format == "hf-packed":
        return (
            "transformers' packed BitNet layout (`quantization_config.quant_method: bitnet`, offline mode): each "
            "quantized linear weight is stored as uint8 holding four ternary codes per byte (row blocks), next to "
            "a one-element `weight_scale` whose meaning is set by `quantization_config.linear_class`"
            + _scale_meaning(card)
        )
    if card.format == "hf-bf16":
        return (
            "Float master weights in the Hugging Face safetensors layout; the linear weights are quantized to "
            "ternary (absmean, one scale per tensor) when the model runs."
        )
    if fam == "gguf":
        return "A GGUF file with ternary weight types, for llama.cpp-family runtimes."
    if fam == "nanotron":
        return "A Nanotron checkpoint (one safetensors file per parameter and tensor-parallel rank)."
    return f"the `{card.format}` layout written by bitconvert."


def _loading(card: CardInput) -> str:
    fam, repo = _family(card.format), card.repo_id
    family = FAMILIES.get(card.architecture)
    if family is not None and family.task == EMBEDDING_TASK:
        return _embedding_loading(card, family)
    if fam == "hf":
        if family is not None and foreign_sub_norms(family):
            return (
                f"`{family.hf_architecture}` is not part of transformers: load it with the original "
                f"{family_name(family)} modelling code (`trust_remote_code=True` on a repository that ships it), "
                "or convert it with bitconvert.\n"
            )
        return (
            "With transformers:\n\n```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f'tokenizer = AutoTokenizer.from_pretrained("{repo}")\n'
            f'model = AutoModelForCausalLM.from_pretrained("{repo}", torch_dtype="bfloat16")\n```\n'
        )
    if fam == "gguf":
        gguf = next((f for f in card.files if f.endswith(".gguf")), "model.gguf")
        if any("I2_S" in s.upper() for s in [card.format, gguf, *card.storage]):
            return (
                "With bitnet.cpp (I2_S is its own type; upstream llama.cpp cannot read it):\n\n```sh\n"
                f"hf download {repo} {gguf} --local-dir model\n"
                f'python run_inference.py -m model/{gguf} -p "Hello"\n```\n'
            )
        return f'With llama.cpp:\n\n```sh\nllama-cli -hf {repo} -p "Hello"\n```\n' + _activation_note(family)
    if fam == "nanotron":
        return "With Nanotron's BitNet support (huggingface/nanotron PR #180), loading this directory.\n"
    return "With bitconvert (`bitconvert inspect`, `bitconvert convert`).\n"


def _embedding_loading(card: CardInput, family: Family) -> str:
    """Where an embedding model with per-projection input norms runs, and where it does not."""
    unknown = tensors_unknown_to(family, family.gguf_arch)
    norms = ", ".join(f"`{n.path}.weight`" for n in family.norms if n.gguf in unknown)
    text = (
        f"Every projection applies its own RMSNorm before quantizing its input ({norms or 'none'}). "
        f"transformers and sentence-transformers load `{family.hf_architecture}` without those norms and compute "
        "another model; upstream llama.cpp refuses the GGUF tensors it does not know. Run it with bitconvert's "
        "reference runtime or bitnet.cpp's embedding build (I2_S GGUF).\n"
    )
    if _family(card.format) == "gguf" and unknown:
        text += f"\nThis GGUF holds the norms as `blk.N.{unknown[0]}` and the like ({len(unknown)} per layer).\n"
    return text


def _embedding_section(card: CardInput) -> str:
    """Pooling, normalisation and prompts, as the sentence-transformers side files give them."""
    setup = card.embedding
    if _task(card) != EMBEDDING_TASK:
        return ""
    if setup is None:
        return "## Embeddings\n\nNo sentence-transformers files (modules.json): pooling unknown.\n\n"
    modes = "+".join(setup.pooling.modes) if setup.pooling and setup.pooling.modes else "none"
    rows = [("Pooling", modes), ("L2 normalisation", "yes" if setup.normalize else "no"),
            ("Similarity", _cell(setup.similarity)), ("Max sequence length", _cell(setup.max_seq_length))]  # fmt: skip
    rows += [(f"Prompt `{name}`", f"`{_cell(text)}`" if text else "(none)") for name, text in setup.prompts.items()]
    table = "".join(f"| {k} | {v} |\n" for k, v in rows)
    return f"## Embeddings\n\n| | |\n|---|---|\n{table}\n"


def _words(activation: str) -> str:
    return ACTIVATION_WORDS.get(activation, activation)


def _activation_note(family: Family | None) -> str:
    """Where the GGUF consumer's graph applies another activation than the model's: say so."""
    if family is None:
        return ""
    runs = graph(family.gguf_arch)
    if not runs.activation or runs.activation == family.hidden_act:
        return ""
    own = _words(family.hidden_act)
    i2s = graph(family.gguf_arch_i2s) if family.gguf_arch_i2s else None
    elsewhere = f" (e.g. {i2s.consumer})" if i2s is not None and i2s.activation == family.hidden_act else ""
    return (
        f"\nNote: upstream {runs.consumer} computes this architecture's feed-forward with {_words(runs.activation)}, "
        f"while the model uses {own}; its outputs there are wrong. Use a runtime that implements {own}{elsewhere}.\n"
    )


def _architecture(card: CardInput) -> str:
    """The model's class and family in words, from its family record (the key itself when unknown)."""
    family = FAMILIES.get(card.architecture)
    if family is None:
        return card.architecture
    traits = [_words(family.hidden_act)]
    if any(n.role in ("attn_sub_norm", "ffn_sub_norm") for n in family.norms):
        traits.append("sub-norms")
    return f"{family.hf_architecture}, {family.title}; {', '.join(traits)}"


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ") if value not in (None, "") else "unknown"


def _provenance(card: CardInput) -> str:
    prov = card.provenance
    if not prov:
        return "Not converted by bitconvert (no provenance file); origin unknown.\n"
    src = prov.get("source") or {}
    if src.get("repo_id"):
        where = f"[{src['repo_id']}](https://huggingface.co/{src['repo_id']}) at `{src.get('revision') or 'main'}`"
        if src.get("commit"):
            where += f" (commit `{src['commit']}`)"
    else:
        where = f"local path `{src.get('path')}`" if src.get("path") else "unknown"
    rows = [
        ("Source", where),
        ("Source format", _cell(src.get("format"))),
        ("Base model", _cell(prov.get("base_model"))),
        ("bitconvert version", _cell(prov.get("bitconvert_version"))),
        ("Command", f"`{prov['command']}`" if prov.get("command") else "library call"),
    ]
    out = "| | |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)
    files = prov.get("source_files") or []
    if files:
        out += "\nSource files:\n\n| file | bytes | sha256 |\n|---|---:|---|\n"
        out += "".join(
            f"| {_cell(f.get('path'))} | {f.get('size', '')} | {_sha_cell(f.get('sha256'))} |\n" for f in files
        )
    return out


def _sha_cell(sha: object) -> str:
    # Without --hash-sources, only hashes known without reading the source are recorded (Hub files).
    return f"`{sha}`" if isinstance(sha, str) and sha else "not recorded"


def render_card(card: CardInput) -> str:
    from ..secrets import scrub_secrets

    name = card.repo_id.split("/")[-1]
    arch = _architecture(card)
    body = (
        f"# {name}\n\n"
        f"A BitNet b1.58 checkpoint: every linear weight is -1, 0 or +1 with one scale per tensor. "
        f"Architecture: {arch}.\n\n"
        f"## Format: `{card.format}`\n\n{_format_text(card)}{_storage(card)}\n\n"
        f"{_embedding_section(card)}"
        f"## How to load\n\n{_loading(card)}\n"
        f"## Provenance\n\n{_provenance(card)}\n"
        f"Card generated by bitconvert {__version__}.\n"
    )
    return scrub_secrets(f"---\n{front_matter(card)}\n---\n\n{body}")
