"""sentence-transformers' side files: how an embedding model pools and normalises, typed and checked.

A sentence-transformers model directory lists its pipeline in ``modules.json`` (a Transformer over
the checkpoint's own folder, then e.g. ``Pooling`` and ``Normalize``), each module's settings in its
own folder (``1_Pooling/config.json``), and beside them ``config_sentence_transformers.json``
(prompts, similarity) and ``sentence_bert_config.json`` (sequence length). bitconvert carries these
files with the model, derives GGUF's ``pooling_type`` from them and hands the runtime the pooling.

Every parser here takes the parsed JSON and the file it came from, and refuses what it cannot use
in one line naming that file: a module folder must be a plain relative path inside the checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import CheckpointError
from ..io.jsonfile import parse_json_text

MODULES_FILE = "modules.json"
ST_CONFIG_FILE = "config_sentence_transformers.json"
SBERT_CONFIG_FILE = "sentence_bert_config.json"
MODULE_CONFIG = "config.json"
#: the files that make a model a sentence-transformers one, besides the module folders' own
TOP_LEVEL_FILES = (MODULES_FILE, ST_CONFIG_FILE, SBERT_CONFIG_FILE)
#: sentence-transformers' pooling modes, by the ending of their ``pooling_mode_*`` key, in its order
POOLING_MODES = ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens", "weightedmean_tokens", "lasttoken")
#: how deep a module folder may sit (real ones are one level: ``1_Pooling``)
MAX_FOLDER_PARTS = 4
MAX_MODULES = 64
MAX_NAME_BYTES = 255


@dataclass(frozen=True)
class Module:
    """One step of the pipeline: its folder (``""``: the checkpoint's own) and its class."""

    index: int
    name: str
    path: str
    type: str

    @property
    def kind(self) -> str:
        """The class name without its package: ``Pooling``, ``Normalize``, ``Transformer``, ``Dense``."""
        return self.type.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class Pooling:
    """A Pooling module's settings: the modes it concatenates (usually one), whether prompts count."""

    modes: tuple[str, ...]
    include_prompt: bool = True
    dimension: int | None = None


@dataclass(frozen=True)
class DenseLayer:
    """A Dense module's settings: ``activation(x @ W.T + b)`` on the pooled vector, its weights in the
    module folder's ``model.safetensors`` (``linear.weight``, ``linear.bias``)."""

    folder: str
    in_features: int
    out_features: int
    bias: bool
    #: the activation's class as sentence-transformers saves it (``torch.nn.modules.activation.Tanh``)
    activation: str


@dataclass
class EmbeddingSetup:
    """What the side files say an embedding model does after its backbone."""

    modules: tuple[Module, ...]
    pooling: Pooling | None = None
    normalize: bool = False
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    similarity: str | None = None
    max_seq_length: int | None = None
    do_lower_case: bool = False
    #: the Dense modules' settings, by module folder
    dense: dict[str, DenseLayer] = field(default_factory=dict)

    def pooling_mode(self) -> str | None:
        """The one pooling mode, when the Pooling module applies exactly one; else None."""
        if self.pooling is None or len(self.pooling.modes) != 1:
            return None
        return self.pooling.modes[0]


def _fail(source: str | Path, problem: str) -> CheckpointError:
    return CheckpointError(source, problem)


def module_folder(path: Any, source: str | Path) -> str:
    """A module's ``path`` as a checked relative folder name (``""`` for the checkpoint's own folder)."""
    if not isinstance(path, str):
        raise _fail(source, f"module path must be a string, got {path!r:.80}")
    if path in ("", "."):
        return ""
    try:
        path.encode("utf-8")  # JSON escapes can spell lone surrogates, which no file system path holds
    except UnicodeEncodeError:
        raise _fail(source, f"module path {path!r:.80} is not valid UTF-8: refused") from None
    parts = PurePosixPath(path).parts
    bad = (
        "\\" in path or "\0" in path or path.startswith("/") or (len(path) > 1 and path[1] == ":")
        or any(p in ("..", ".") for p in parts) or len(parts) > MAX_FOLDER_PARTS
        or any(len(p.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES for p in parts)
    )  # fmt: skip
    if bad:
        raise _fail(source, f"module path {path!r:.80} is not a folder inside the checkpoint: refused")
    return "/".join(parts)


def parse_modules(data: Any, source: str | Path) -> tuple[Module, ...]:
    """``modules.json``: a list of ``{"idx", "name", "path", "type"}`` objects."""
    if not isinstance(data, list):
        raise _fail(source, "modules.json is not a list of modules")
    if len(data) > MAX_MODULES:
        raise _fail(source, f"modules.json lists {len(data)} modules, more than {MAX_MODULES}")
    out = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise _fail(source, f"module {i} is not an object")
        kind = item.get("type")
        if not isinstance(kind, str) or not kind:
            raise _fail(source, f"module {i} has no type")
        idx, name = item.get("idx", i), item.get("name", str(i))
        if isinstance(idx, bool) or not isinstance(idx, int) or not isinstance(name, str):
            raise _fail(source, f"module {i}: idx must be a whole number and name a string")
        out.append(Module(idx, name, module_folder(item.get("path", ""), source), kind))
    return tuple(out)


def _flag(d: Mapping[str, Any], key: str, default: bool, source: str | Path) -> bool:
    value = d.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _fail(source, f"{key} must be true or false, got {value!r:.80}")
    return value


def parse_pooling(data: Any, source: str | Path) -> Pooling:
    """A Pooling module's ``config.json``: its ``pooling_mode_*`` flags."""
    if not isinstance(data, dict):
        raise _fail(source, "pooling config is not a JSON object")
    modes = tuple(m for m in POOLING_MODES if _flag(data, f"pooling_mode_{m}", False, source))
    dim = data.get("word_embedding_dimension")
    if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0):
        raise _fail(source, f"word_embedding_dimension must be a positive whole number, got {dim!r:.80}")
    return Pooling(modes, _flag(data, "include_prompt", True, source), dim)


def _whole(data: Mapping[str, Any], key: str, source: str | Path) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise _fail(source, f"{key} must be a positive whole number, got {value!r:.80}")
    return value


def parse_dense(data: Any, source: str | Path, folder: str) -> DenseLayer:
    """A Dense module's ``config.json``: its widths, bias and activation class."""
    if not isinstance(data, dict):
        raise _fail(source, "Dense config is not a JSON object")
    activation = data.get("activation_function", "torch.nn.modules.activation.Tanh")
    if not isinstance(activation, str):
        raise _fail(source, f"activation_function must be a class name, got {activation!r:.80}")
    return DenseLayer(folder, _whole(data, "in_features", source), _whole(data, "out_features", source),
                      _flag(data, "bias", True, source), activation)  # fmt: skip


def _parse_st_config(data: Any, source: str | Path, setup: EmbeddingSetup) -> None:
    if not isinstance(data, dict):
        raise _fail(source, "not a JSON object")
    prompts = data.get("prompts") or {}
    if not isinstance(prompts, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in prompts.items()):
        raise _fail(source, "prompts must map names to strings")
    setup.prompts = dict(prompts)
    for key, attr in (("default_prompt_name", "default_prompt_name"), ("similarity_fn_name", "similarity")):
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            raise _fail(source, f"{key} must be a string, got {value!r:.80}")
        setattr(setup, attr, value)
    if setup.default_prompt_name is not None and setup.default_prompt_name not in setup.prompts:
        raise _fail(source, f"default_prompt_name {setup.default_prompt_name!r:.80} is not one of the prompts")


def _parse_sbert_config(data: Any, source: str | Path, setup: EmbeddingSetup) -> None:
    if not isinstance(data, dict):
        raise _fail(source, "not a JSON object")
    length = data.get("max_seq_length")
    if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length <= 0):
        raise _fail(source, f"max_seq_length must be a positive whole number, got {length!r:.80}")
    setup.max_seq_length = length
    setup.do_lower_case = _flag(data, "do_lower_case", False, source)


def _read(path: Path) -> Any:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(path, f"cannot read: {exc.strerror or exc}") from None
    return parse_json_text(raw, path)


def read_modules(path: Path) -> tuple[Module, ...]:
    return parse_modules(_read(path), path)


def read_embedding_setup(files: Mapping[str, Path]) -> EmbeddingSetup | None:
    """The setup the side files describe (``files``: relative name -> path, as a checkpoint lists
    them); None when there is no ``modules.json``. A Pooling module whose config is missing counts
    as no pooling (sentence-transformers would fail to load it)."""
    if MODULES_FILE not in files:
        return None
    setup = EmbeddingSetup(read_modules(files[MODULES_FILE]))
    pooling = next((m for m in setup.modules if m.kind == "Pooling"), None)
    if pooling is not None:
        name = f"{pooling.path}/{MODULE_CONFIG}" if pooling.path else MODULE_CONFIG
        if name in files and pooling.path:
            setup.pooling = parse_pooling(_read(files[name]), files[name])
    setup.normalize = any(m.kind == "Normalize" for m in setup.modules)
    for module in setup.modules:
        name = f"{module.path}/{MODULE_CONFIG}"
        if module.kind == "Dense" and module.path and name in files:
            setup.dense[module.path] = parse_dense(_read(files[name]), files[name], module.path)
    if ST_CONFIG_FILE in files:
        _parse_st_config(_read(files[ST_CONFIG_FILE]), files[ST_CONFIG_FILE], setup)
    if SBERT_CONFIG_FILE in files:
        _parse_sbert_config(_read(files[SBERT_CONFIG_FILE]), files[SBERT_CONFIG_FILE], setup)
    return setup


def is_sentence_transformers_file(name: str, folders: tuple[str, ...]) -> bool:
    """Whether side file ``name`` (relative, ``/``-separated) belongs to the sentence-transformers setup."""
    return name in TOP_LEVEL_FILES or any(name.startswith(f + "/") for f in folders if f)
