"""What each fuzzer feeds and how: seeds from the shipped fixtures, a mutator, and the code under test.

An input is ``(context, data)``: ``context`` names the seed it grew from (which fixture, which
file), ``data`` is the mutated file. ``Target.run`` writes ``data`` where that file belongs in a
private copy of the checkpoint and opens it the way the CLI does; it returns normally when the
input is accepted and raises when it is refused (a ``BitconvertError``) or when something broke.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"
HF_FIXTURES = sorted(p.name for p in FIXTURES.iterdir() if (p / "config.json").is_file())
SIDE_JSON = ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json")


@dataclass
class Target:
    name: str
    #: context -> seed bytes
    seeds: dict[str, bytes]
    mutate: Callable[[random.Random, bytes, list[bytes]], bytes]
    run: Callable[[str, bytes, Path], None]
    extra: dict = field(default_factory=dict)


def _open(path: Path, load: bool = False) -> None:
    from bitconvert.formats import open_checkpoint

    ckpt = open_checkpoint(path)
    if load:  # a reader checks lazily what it can only check on load (codes, scales)
        for entry in ckpt.tensors.values():
            entry.load()
            # and what verify reads off the stored bytes instead of decoding them
            stored = entry.stored()
            if stored.counts is not None:
                stored.counts()


def _hf_copy(workdir: Path, fixture: str) -> Path:
    """A private copy of a fixture (created once per worker), restored file by file after each input."""
    dst = workdir / "hf" / fixture
    if not dst.exists():
        shutil.copytree(FIXTURES / fixture, dst)
    return dst


def _restore(dst: Path, fixture: str, names: tuple[str, ...]) -> None:
    for name in names:
        (dst / name).unlink(missing_ok=True)
        if (FIXTURES / fixture / name).exists():
            shutil.copyfile(FIXTURES / fixture / name, dst / name)


# --- safetensors header --------------------------------------------------------------------------------


def _run_safetensors(context: str, data: bytes, workdir: Path) -> None:
    from bitconvert.io.safetensors import SafetensorsFile

    path = workdir / "x.safetensors"
    path.write_bytes(data)
    st = SafetensorsFile(path)
    for name in st.tensors:
        st.read(name)


def safetensors_target() -> Target:
    from .mutate import mutate_safetensors

    seeds = {f"{f}/model.safetensors": (FIXTURES / f / "model.safetensors").read_bytes() for f in HF_FIXTURES}
    return Target("safetensors", seeds, mutate_safetensors, _run_safetensors)


# --- GGUF ----------------------------------------------------------------------------------------------


def _run_gguf(context: str, data: bytes, workdir: Path) -> None:
    from bitconvert.formats.gguf.parser import GGUFFile

    path = workdir / "x.gguf"
    path.write_bytes(data)
    GGUFFile(path)
    _open(path, load=True)


#: a TL1 kernel configuration for the 64-wide fixtures' weight shapes (hidden 64, intermediate 128,
#: two of four heads for k/v), in kernel_config.ini's grammar
NARROW_KERNELS = "".join(
    f"[Kernels_{i}]\nm = {m}\nk = {k}\nbm = 32\nbk = 32\nbmm = 32\n\n"
    for i, (m, k) in enumerate(((64, 64), (32, 64), (128, 64), (64, 128)))
)


def make_gguf_seeds(cache: Path) -> dict[str, bytes]:
    """Small GGUF files written by bitconvert itself from the packed fixtures (cached between runs)."""
    from bitconvert.convert import convert

    kernels = cache / "narrow-kernel_config.ini"
    kernels.write_text(NARROW_KERNELS)
    seeds = {}
    for fixture, gtype in (("llama-packed", None), ("bitnet-2b4t-packed", "i2_s"), ("1bitllm-packed", "tl1")):
        out = cache / f"{fixture}-{gtype or 'default'}.gguf"
        if not out.exists():
            opts = {"allow_fallback": True} if gtype is None else {"allow_fallback": True, "gguf_type": gtype}
            if gtype == "tl1":
                opts = {"gguf_type": gtype, "kernel_config": kernels}
            try:
                convert(FIXTURES / fixture, out, "gguf", opts)
            except Exception:  # an option this tree's GGUF writer does not take: fall back to its defaults
                convert(FIXTURES / fixture, out, "gguf", {"allow_fallback": True})
        seeds[f"{fixture}.gguf"] = out.read_bytes()
    # embedding models: bitconvert's own (offset norms, pooling, recorded side files) and the layout of
    # bitnet.cpp's embedding converter (F16 norms, an EOS outside the tiny vocabulary, no bitconvert keys)
    for fixture, opts in (
        ("bitnet-embedding-gemma3-master", {"gguf_type": "i2_s"}),
        ("bitnet-embedding-qwen3-master", {"gguf_type": "i2_s", "recipe": "bitnet.cpp", "allow_lossy": True}),
    ):
        out = cache / f"{fixture}-{opts.get('recipe', 'default')}.gguf"
        if (FIXTURES / fixture).is_dir():
            if not out.exists():
                convert(FIXTURES / fixture, out, "gguf", opts)
            seeds[f"{fixture}.gguf"] = out.read_bytes()
    return seeds


def gguf_target(cache: Path) -> Target:
    from .mutate import gguf_fields, mutate_gguf

    seeds = make_gguf_seeds(cache)
    layouts = {data: gguf_fields(data) for data in seeds.values()}

    def mutate(rng, data, others):
        fields, end = layouts[data]
        return mutate_gguf(rng, data, others, fields, end)

    return Target("gguf", seeds, mutate, _run_gguf)


# --- JSON readers --------------------------------------------------------------------------------------


def _run_hf_json(context: str, data: bytes, workdir: Path) -> None:
    fixture, name = context.split("/", 1)
    dst = _hf_copy(workdir, fixture)
    (dst / name).write_bytes(data)
    try:
        _open(dst)
    finally:
        _restore(dst, fixture, (name,))


def config_target() -> Target:
    from .mutate import mutate_json

    seeds = {f"{f}/config.json": (FIXTURES / f / "config.json").read_bytes() for f in HF_FIXTURES}
    return Target("config", seeds, mutate_json, _run_hf_json)


def index_target() -> Target:
    """The index of a one-shard checkpoint, naming that shard for every tensor."""
    from bitconvert.io.safetensors import SafetensorsFile

    from .mutate import mutate_json

    seeds = {}
    for f in HF_FIXTURES:
        st = SafetensorsFile(FIXTURES / f / "model.safetensors")
        index = {
            "metadata": {"total_size": sum(t.nbytes for t in st.tensors.values())},
            "weight_map": {name: "model.safetensors" for name in st.tensors},
        }
        seeds[f"{f}/model.safetensors.index.json"] = json.dumps(index, indent=2).encode()
    return Target("index", seeds, mutate_json, _run_hf_json)


def _nanotron_dirs(cache: Path) -> dict[str, Path]:
    from bitconvert.convert import convert

    out = {}
    for fixture in ("llama-master", "bitnet-2b4t-master"):
        d = cache / f"nanotron-{fixture}"
        if not d.exists():
            convert(FIXTURES / fixture, d, "nanotron", {"allow_lossy": True})  # rope_theta has no field there
        out[fixture] = d
    return out


def nanotron_target(cache: Path) -> Target:
    from .mutate import mutate_json

    dirs = _nanotron_dirs(cache)
    seeds = {
        f"{fixture}/{name}": (d / name).read_bytes()
        for fixture, d in dirs.items()
        for name in ("model_config.json", "checkpoint_metadata.json")
    }

    def run(context: str, data: bytes, workdir: Path) -> None:
        from bitconvert.formats.nanotron.config import read_meta
        from bitconvert.formats.nanotron.layout import param_specs

        fixture, name = context.split("/", 1)
        dst = workdir / "nanotron" / fixture
        if not dst.exists():
            shutil.copytree(dirs[fixture], dst)
        (dst / name).write_bytes(data)
        try:
            # the JSON and the per-layer plan it drives, always; the whole reader (it scans every
            # weight file, ~50 ms) on a fixed quarter of the inputs, chosen by content
            meta = read_meta(dst, fixture.startswith("bitnet"), set())
            param_specs(meta.config, meta.vocab_rows)
            if hashlib.sha256(data).digest()[0] % 4 == 0:
                _open(dst)
        finally:
            shutil.copyfile(dirs[fixture] / name, dst / name)

    return Target("nanotron", seeds, mutate_json, run)


def _run_tokenizer(context: str, data: bytes, workdir: Path) -> None:
    """tokenizer.json as the GGUF writer embeds it and as ``verify`` checks it."""
    from bitconvert.formats.gguf import tokenizer
    from bitconvert.verify.integrity import _side_file_checks
    from bitconvert.verify.report import VerifyReport

    fixture, name = context.split("/", 1)
    dst = _hf_copy(workdir, fixture)
    ckpt = _opened.get(fixture)
    if ckpt is None:  # the checkpoint itself is not under test here: open it once per worker
        from bitconvert.formats import open_checkpoint

        ckpt = _opened[fixture] = open_checkpoint(dst)
        ckpt.side_files = [dst / n for n in SIDE_JSON]
    (dst / name).write_bytes(data)
    try:
        cfg = ckpt.config
        tokenizer.from_side_files(ckpt.side_files, cfg.vocab_size, cfg.bos_token_id, cfg.eos_token_id)
        _side_file_checks(ckpt, VerifyReport(str(dst)))
    finally:
        _restore(dst, fixture, (name,))


_opened: dict = {}


def tokenizer_target() -> Target:
    from .mutate import mutate_json

    seeds = {}
    for f in ("llama-packed", "bitnet-2b4t-packed"):
        for name in ("tokenizer.json", "tokenizer_config.json"):
            seeds[f"{f}/{name}"] = (FIXTURES / f / name).read_bytes()
    return Target("tokenizer", seeds, mutate_json, _run_tokenizer)


# --- bitnet.cpp's kernel_config.ini and bitconvert's record of it ---------------------------------


def _run_kernel_config(context: str, data: bytes, workdir: Path) -> None:
    """A kernel_config.ini as --kernel-config reads it (then each tile checked for both TL types), or
    the JSON record a TL GGUF carries as the reader reads it."""
    from bitconvert.formats.gguf import kernel_config, tl_layouts

    if context.startswith("record/"):
        config = kernel_config.from_record(data.decode("utf-8", errors="surrogateescape"), "x.gguf")
    else:
        path = workdir / "kernel_config.ini"
        path.write_bytes(data)
        config = kernel_config.read_ini(path)
    for tile in config.tiles:
        config.tile(tile.m, tile.k)
        for kind in ("tl1", "tl2"):
            tl_layouts.tile_problem(kind, tile)


def kernel_config_target() -> Target:
    from bitconvert.formats.gguf import kernel_config

    from .mutate import mutate_bytes

    seeds = {"ini/narrow": NARROW_KERNELS.encode()}
    for name in kernel_config.PRESET_NAMES:
        for kind in ("tl1", "tl2"):
            config = kernel_config.preset(name, kind)
            seeds[f"ini/{name}-{kind}"] = config.to_ini().encode()
            used = [(t.m, t.k) for t in config.tiles]
            seeds[f"record/{name}-{kind}"] = kernel_config.record(config, used).encode()
    return Target("kernel_config", seeds, mutate_bytes, _run_kernel_config)


def _bitnet_gpu_dir(cache: Path) -> Path:
    """A bitnet-gpu folder bitconvert writes from the 2B-4T-style master (cached between runs)."""
    from bitconvert.convert import convert

    d = cache / "bitnet-gpu-bitnet-2b4t-master"
    if not d.exists():
        convert(FIXTURES / "bitnet-2b4t-master", d, "bitnet-gpu")
    return d


def bitnet_gpu_target(cache: Path) -> Target:
    """Both torch.save files of a bitnet-gpu folder: zip directory, pickle, then every tensor loaded."""
    from .mutate import mutate_torch_archive

    folder = _bitnet_gpu_dir(cache)
    names = ("model_state_int2.pt", "model_state_fp16.pt")
    seeds = {f"bitnet-gpu/{name}": (folder / name).read_bytes() for name in names}

    def run(context: str, data: bytes, workdir: Path) -> None:
        name = context.split("/", 1)[1]
        dst = workdir / "bitnet-gpu"
        if not dst.exists():
            shutil.copytree(folder, dst)
        (dst / name).write_bytes(data)
        try:
            _open(dst, load=True)
        finally:
            shutil.copyfile(folder / name, dst / name)

    return Target("bitnet-gpu", seeds, mutate_torch_archive, run)
#: a Dense module's config.json, fuzzed as a folder that modules.json names (no fixture has one)
DENSE_CONFIG = "2_Dense/config.json"
DENSE_SEED = json.dumps({"in_features": 256, "out_features": 64, "bias": True,
                         "activation_function": "torch.nn.modules.activation.Tanh"}).encode()  # fmt: skip


def _run_sentence_transformers(context: str, data: bytes, workdir: Path) -> None:
    """modules.json and a module's config as the HF reader collects side files from them, as the GGUF
    writer (bitconvert's pooling_type, bitnet.cpp's converter's) and ``verify`` read them."""
    from bitconvert.formats import open_checkpoint
    from bitconvert.formats.gguf import embedding_converter, metadata
    from bitconvert.model.sentence_transformers import read_embedding_setup
    from bitconvert.verify.integrity import _side_file_checks
    from bitconvert.verify.report import VerifyReport

    fixture, name = context.split("/", 1)
    dst = _hf_copy(workdir, fixture)
    touched = (name,)
    if name == DENSE_CONFIG:
        (dst / "2_Dense").mkdir(exist_ok=True)
        modules = json.loads((FIXTURES / fixture / "modules.json").read_text())
        modules.append({"idx": len(modules), "name": str(len(modules)), "path": "2_Dense",
                        "type": "sentence_transformers.models.Dense"})  # fmt: skip
        (dst / "modules.json").write_text(json.dumps(modules))
        touched = (name, "modules.json")
    (dst / name).write_bytes(data)
    try:
        ckpt = open_checkpoint(dst)
        files = ckpt.side_file_names()
        read_embedding_setup(files)
        embedding_converter.pooling_type(files)
        metadata.embedding_keys(ckpt, "qwen3", [])
        _side_file_checks(ckpt, VerifyReport(str(dst)))
    finally:
        _restore(dst, fixture, touched)


def sentence_transformers_target() -> Target:
    from .mutate import mutate_json

    seeds = {}
    for f in ("bitnet-embedding-qwen3-master", "bitnet-embedding-gemma3-master"):
        for name in ("modules.json", "1_Pooling/config.json", "config_sentence_transformers.json",
                     "sentence_bert_config.json"):  # fmt: skip
            seeds[f"{f}/{name}"] = (FIXTURES / f / name).read_bytes()
        seeds[f"{f}/{DENSE_CONFIG}"] = DENSE_SEED
    return Target("sentence_transformers", seeds, mutate_json, _run_sentence_transformers)


def all_targets(cache: Path) -> dict[str, Callable[[], Target]]:
    """Builders by name: a worker builds only the target it runs."""
    return {
        "safetensors": safetensors_target,
        "gguf": lambda: gguf_target(cache),
        "config": config_target,
        "index": index_target,
        "nanotron": lambda: nanotron_target(cache),
        "tokenizer": tokenizer_target,
        "kernel_config": kernel_config_target,
        "bitnet-gpu": lambda: bitnet_gpu_target(cache),
        "sentence_transformers": sentence_transformers_target,
    }


PARSERS = ("safetensors", "gguf", "config", "index", "nanotron", "tokenizer", "kernel_config", "bitnet-gpu",
           "sentence_transformers")
