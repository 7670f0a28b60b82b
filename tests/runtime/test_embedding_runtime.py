"""The runtime's sentence embeddings of BitNet Embeddings models (Qwen3 and Gemma3 backbones) against
a reference built from transformers' own Qwen3Model / Gemma3TextModel, on every layout bitconvert writes.

The reference is transformers' backbone class, built from the fixture's config.json and loaded with
the master's state dict, with these additions (transformers has no BitNet Embeddings class; what the
model card and Microsoft's conversion guide describe is reproduced here, each piece named):

- every ``nn.Linear`` of the backbone is replaced by :class:`BitLinearReference`: its own input
  RMSNorm (transformers' Qwen3RMSNorm, the standard ``w * x_hat`` kind, parameter ``norm.weight``,
  eps = the config's rms_norm_eps: the checkpoints do not say which eps it uses), then per-token int8
  absmax activations (127 / max|x|, rounded half to even, clamped to [-128, 127], as transformers'
  bitnet ActQuant), ternary weights by absmean (1 / mean|W| in fp32, as transformers' WeightQuant),
  the integer product in fp32 (exact), divided by the activation scale and by the weight scale;
  for a packed checkpoint whose ``weight_scale`` is bf16 (bitconvert's default, as 2B-4T ships),
  a second reference multiplies by mean|W| rounded to bf16, as transformers' AutoBitLinear does with
  such a file (the rounding alone moves the fixtures' embeddings to a cosine of about 0.9999); a
  TQ2_0 GGUF holds the scale as each block's f16 ``d``, so its reference rounds mean|W| to f16;
- attention is transformers' eager implementation; the compute dtype is float32;
- pooling and normalization are sentence-transformers' Pooling (last token, as the fixtures' side
  files say; asserted) and Normalize (``F.normalize``), written out here on the unpadded sequence;
- the text goes through transformers' AutoTokenizer of the fixture (its tokenizer.json).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import FIXTURES, run_cli

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from bitconvert.convert import convert
from bitconvert.errors import UsageError

TEXTS = ("What is BitNet?", "Ternary weights take 1.58 bits each.", "a b c d e f g h i j k l")
MASTERS = {"qwen3": FIXTURES / "bitnet-embedding-qwen3-master", "gemma3": FIXTURES / "bitnet-embedding-gemma3-master"}
BACKBONES = {"qwen3": "Qwen3Model", "gemma3": "Gemma3TextModel"}
MIN_COSINE = 0.99999


class BitLinearReference(torch.nn.Module):
    """norm -> int8 absmax activations -> ternary matmul x mean|W| (see the module docstring)."""

    def __init__(self, in_features: int, out_features: int, eps: float, scale_dtype=None) -> None:
        super().__init__()
        self.scale_dtype = scale_dtype
        from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm

        self.weight = torch.nn.Parameter(torch.empty(out_features, in_features))
        self.norm = Qwen3RMSNorm(in_features, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x).float()
        act_scale = 127.0 / x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
        q = (x * act_scale).round().clamp(-128, 127)
        w = self.weight.float()
        mean = w.abs().mean().clamp(min=1e-5)
        codes = (w * (1.0 / mean)).round().clamp(-1, 1)
        if self.scale_dtype is None:
            return ((q @ codes.t()) / act_scale / (1.0 / mean)).to(self.weight.dtype)
        return ((q @ codes.t()) / act_scale * mean.to(self.scale_dtype).float()).to(self.weight.dtype)


def reference_model(master, scale_dtype=None):
    from safetensors.torch import load_file

    cls = getattr(transformers, BACKBONES[master.name.split("-")[2]], None)
    if cls is None:
        pytest.skip(f"transformers {transformers.__version__} has no {BACKBONES[master.name.split('-')[2]]}")
    config = transformers.AutoConfig.from_pretrained(master)
    config._attn_implementation = "eager"
    model = cls(config).to(torch.float32)
    linears = [name for name, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)]
    assert len(linears) == 7 * config.num_hidden_layers  # the seven projections per layer, nothing else
    for name in linears:
        mod = model.get_submodule(name)
        model.set_submodule(name, BitLinearReference(mod.in_features, mod.out_features, config.rms_norm_eps, scale_dtype))
    state = {k: v.to(torch.float32) for k, v in load_file(master / "model.safetensors").items()}
    model.load_state_dict(state, strict=True)  # every tensor of the master has its place, and no other
    return model.eval()


def reference_embeddings(master, scale_dtype=None) -> tuple[np.ndarray, list[list[int]]]:
    pooling = json.loads((master / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_lasttoken"] and not pooling["pooling_mode_mean_tokens"]
    assert any(m["type"].endswith("Normalize") for m in json.loads((master / "modules.json").read_text()))
    tokenizer = transformers.AutoTokenizer.from_pretrained(master)
    model = reference_model(master, scale_dtype)
    vectors, ids = [], []
    with torch.no_grad():
        for text in TEXTS:
            enc = tokenizer(text, return_tensors="pt")
            hidden = model(**enc).last_hidden_state[0]
            vectors.append(torch.nn.functional.normalize(hidden[-1], dim=-1).numpy())
            ids.append(enc["input_ids"][0].tolist())
    return np.stack(vectors), ids


@pytest.fixture(scope="module", params=sorted(MASTERS))
def layouts(request, tmp_path_factory):
    """The master, its packed checkpoints (fp32 and bf16 weight_scale), an I2_S and a TQ2_0 GGUF of it
    written by bitconvert; the references (exact scales, and bf16 scales); the token ids."""
    master = MASTERS[request.param]
    out = tmp_path_factory.mktemp(request.param)
    convert(master, out / "packed", "hf-packed", {"scale_dtype": "f32"})
    convert(master, out / "packed-bf16", "hf-packed")
    convert(master, out / "i2s.gguf", "gguf", {"gguf_type": "i2_s"})
    convert(master, out / "tq2.gguf", "gguf", {"gguf_type": "tq2_0"})
    expected, ids = reference_embeddings(master)
    rounded = {name: reference_embeddings(master, dtype) for name, dtype in (("bf16", torch.bfloat16),
                                                                             ("f16", torch.float16))}  # fmt: skip
    assert all(r[1] == ids for r in rounded.values())
    paths = {"master": master, "packed": out / "packed", "packed-bf16": out / "packed-bf16",
             "gguf-i2_s": out / "i2s.gguf", "gguf-tq2_0": out / "tq2.gguf"}  # fmt: skip
    return paths, {"exact": expected, **{name: r[0] for name, r in rounded.items()}}, ids


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (a64 * b64).sum(-1) / np.linalg.norm(a64, axis=-1) / np.linalg.norm(b64, axis=-1)


@pytest.mark.parametrize("layout", ["master", "packed", "packed-bf16", "gguf-i2_s", "gguf-tq2_0"])
def test_embeddings_equal_transformers_backbone_with_bitlinear(layouts, layout):
    from bitconvert.runtime.embed import load_embedder

    paths, references, ids = layouts
    expected = references[{"packed-bf16": "bf16", "gguf-tq2_0": "f16"}.get(layout, "exact")]
    embedder = load_embedder(paths[layout])
    if embedder.tokenizer is not None:  # where the layout keeps a tokenizer, it tokenizes as transformers
        assert [embedder.encode(t) for t in TEXTS] == ids
    got = np.stack([embedder.embed_tokens(t) for t in ids])
    cos = cosines(got, expected)
    assert cos.min() >= MIN_COSINE, f"{layout}: cosines {cos}"
    assert np.allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-6)


def test_the_embed_command_gives_the_reference_on_the_i2s_gguf(layouts, tmp_path):
    """The same proof through the command line: ``bitconvert embed FILE.gguf --tokens ... --out``."""
    paths, references, ids = layouts
    args = [a for t in ids for a in ("--tokens", ",".join(map(str, t)))]
    r = run_cli("embed", paths["gguf-i2_s"], *args, "--out", tmp_path / "e.npy")
    assert r.returncode == 0, r.stderr
    assert cosines(np.load(tmp_path / "e.npy"), references["exact"]).min() >= MIN_COSINE


def test_gguf_i2s_embeds_as_the_master(layouts):
    from bitconvert.runtime import embed

    paths, _, ids = layouts
    a = embed(paths["gguf-i2_s"], tokens=ids)
    b = embed(paths["master"], tokens=ids)
    assert cosines(a, b).min() >= MIN_COSINE


def test_a_wrong_block_is_seen(layouts):
    """The comparison can fail: the same runtime with every layer's per-projection norms ignored
    (what stock transformers computes from these files) is far from the reference."""
    from bitconvert.runtime.embed import load_embedder
    from bitconvert.runtime.normed_block import PreNormedLinear

    paths, references, ids = layouts
    expected = references["exact"]
    embedder = load_embedder(paths["master"])
    for layer in embedder.model.layers:
        for short in layer.PROJECTIONS:
            lin = getattr(layer, short)
            if isinstance(lin, PreNormedLinear):
                setattr(layer, short, lin.linear)
    got = np.stack([embedder.embed_tokens(t) for t in ids])
    assert cosines(got, expected).min() < 0.999


def test_embed_command_json_and_npy(tmp_path):
    master = MASTERS["qwen3"]
    r = run_cli("embed", master, "--text", TEXTS[0], "--text", TEXTS[1], "--json", "--out", tmp_path / "e.npy")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    saved = np.load(tmp_path / "e.npy")
    assert saved.shape == (2, 256) and saved.dtype == np.float32
    assert np.array_equal(np.array([e["embedding"] for e in doc["embeddings"]], dtype=np.float32), saved)
    assert doc["pooling"] == "lasttoken" and doc["normalized"] is True
    assert doc["embeddings"][0]["tokens"][-1] == 330  # the tokenizer's appended end token, which pools


def test_embed_refuses_a_causal_lm_and_run_refuses_an_embedding_model(tmp_path):
    r = run_cli("embed", FIXTURES / "bitnet-2b4t-master", "--text", "hi")
    assert r.returncode == 2 and "not an embedding model" in r.stderr and "Traceback" not in r.stderr
    for args in (("run", "--tokens", "1,2"), ("logits", "--tokens", "1,2", "--out", tmp_path / "x.npy")):
        r = run_cli(args[0], MASTERS["gemma3"], *args[1:])
        assert r.returncode == 2, r.stderr
        assert "is an embedding model" in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.npy").exists()


def test_library_refusals():
    from bitconvert.runtime import compute_logits, embed

    with pytest.raises(UsageError, match="is an embedding model"):
        compute_logits(MASTERS["qwen3"], [1, 2])
    with pytest.raises(UsageError, match="not an embedding model"):
        embed(FIXTURES / "bitnet-2b4t-master", ["hi"])
    with pytest.raises(UsageError, match="no prompt named 'nope'"):
        embed(MASTERS["qwen3"], ["hi"], prompt_name="nope")


def test_mean_pooling_leaves_the_prompt_out_where_the_pooling_says(tmp_path):
    """A Pooling with mean tokens and ``include_prompt: false``: the mean over the text's tokens only,
    the prompt's length counted as sentence-transformers 5 counts it (the prompt encoded alone, less a
    final special token), on transformers' backbone as above."""
    import shutil

    from bitconvert.runtime import embed

    copy = tmp_path / "bitnet-embedding-gemma3-mean"
    shutil.copytree(MASTERS["gemma3"], copy)
    pooling = json.loads((copy / "1_Pooling" / "config.json").read_text())
    pooling.update(pooling_mode_lasttoken=False, pooling_mode_mean_tokens=True, include_prompt=False)
    (copy / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    prompt = json.loads((copy / "config_sentence_transformers.json").read_text())["prompts"]["query"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(copy)
    prompt_ids = tokenizer(prompt)["input_ids"]
    skip = len(prompt_ids) - (prompt_ids[-1] in tokenizer.all_special_ids)
    with torch.no_grad():
        hidden = reference_model(copy)(**tokenizer(prompt + TEXTS[1], return_tensors="pt")).last_hidden_state[0]
    expected = torch.nn.functional.normalize(hidden[skip:].mean(0), dim=-1).numpy()
    with_prompt = torch.nn.functional.normalize(hidden.mean(0), dim=-1).numpy()
    got = embed(copy, [TEXTS[1]], prompt_name="query")
    assert cosines(got, expected[None])[0] >= MIN_COSINE
    assert cosines(got, with_prompt[None])[0] < 0.9999  # the prompt's tokens would move it


@pytest.mark.parametrize("change, message", [
    (lambda d: (d / "modules.json").write_text(json.dumps(
        json.loads((d / "modules.json").read_text())[:2]
        + [{"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}])),
     "modules.json: Dense module '2_Dense' has no config.json in its folder"),
    (lambda d: (d / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_lasttoken": False})),
     "1_Pooling/config.json"),
    (lambda d: (d / "modules.json").unlink(), "no modules.json and no GGUF pooling_type"),
])  # fmt: skip
def test_a_pipeline_the_runtime_cannot_compute_is_refused_in_one_line(tmp_path, change, message):
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(MASTERS["qwen3"], copy)
    change(copy)
    r = run_cli("embed", copy, "--text", "hi")
    assert r.returncode == 1 and message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_dense_modules_follow_the_pooling_in_their_order(tmp_path):
    """Two Dense modules (Tanh with bias, then Identity without) between the Pooling and Normalize, as
    sentence-transformers' Dense computes them: ``activation(linear(x))`` (sentence-transformers is not
    installed here: torch's Linear and Tanh stand in for its Dense module, which is built from them)."""
    import shutil

    from safetensors.torch import save_file

    from bitconvert.runtime import embed

    copy = tmp_path / "bitnet-embedding-qwen3-dense"
    shutil.copytree(MASTERS["qwen3"], copy)
    modules = json.loads((copy / "modules.json").read_text())
    dense = [("2_Dense", 256, 128, True, "torch.nn.modules.activation.Tanh"),
             ("3_Dense", 128, 64, False, "torch.nn.modules.linear.Identity")]  # fmt: skip
    g = torch.Generator().manual_seed(5)
    layers = []
    for i, (folder, n_in, n_out, bias, act) in enumerate(dense):
        (copy / folder).mkdir()
        (copy / folder / "config.json").write_text(json.dumps(
            {"in_features": n_in, "out_features": n_out, "bias": bias, "activation_function": act}))
        linear = torch.nn.Linear(n_in, n_out, bias=bias)
        with torch.no_grad():
            linear.weight.copy_(torch.randn(n_out, n_in, generator=g) / n_in**0.5)
            if bias:
                linear.bias.copy_(torch.randn(n_out, generator=g))
        save_file({f"linear.{k}": v.contiguous() for k, v in linear.state_dict().items()},
                  str(copy / folder / "model.safetensors"))
        layers.append((linear, torch.nn.Tanh() if act.endswith("Tanh") else torch.nn.Identity()))
        modules.insert(2 + i, {"idx": 2 + i, "name": str(2 + i), "path": folder,
                               "type": "sentence_transformers.models.Dense"})  # fmt: skip
    (copy / "modules.json").write_text(json.dumps(modules))
    tokenizer = transformers.AutoTokenizer.from_pretrained(copy)
    with torch.no_grad():
        v = reference_model(copy)(**tokenizer(TEXTS[0], return_tensors="pt")).last_hidden_state[0, -1]
        for linear, act in layers:
            v = act(linear(v))
        expected = torch.nn.functional.normalize(v, dim=-1).numpy()
    got = embed(copy, [TEXTS[0]])
    assert got.shape == (1, 64) and cosines(got, expected[None])[0] >= MIN_COSINE
    # a weight of another shape than the config says is refused naming the file
    save_file({"linear.weight": torch.zeros(64, 127)}, str(copy / "3_Dense" / "model.safetensors"))
    r = run_cli("embed", copy, "--text", "hi")
    assert r.returncode == 1 and "3_Dense/model.safetensors" in r.stderr and "[64, 128]" in r.stderr, r.stderr


@pytest.mark.parametrize("family", sorted(MASTERS))
def test_bf16_compute_agrees_with_transformers_in_bf16_to_bf16s_own_noise(family):
    """In bf16 the two differ by rounding order (attention kernels, int8 rounding flips after bf16
    sums): measured 0.9996 to 0.9998, while the reference in bf16 is itself 0.9995 from its fp32 run."""
    from bitconvert.runtime.embed import load_embedder

    master = MASTERS[family]
    tokenizer = transformers.AutoTokenizer.from_pretrained(master)
    ids = [tokenizer(t)["input_ids"] for t in TEXTS]
    model = reference_model(master).to(torch.bfloat16)
    with torch.no_grad():
        expected = np.stack([
            torch.nn.functional.normalize(model(input_ids=torch.tensor([i])).last_hidden_state[0, -1].float(), dim=-1)
            .numpy() for i in ids
        ])  # fmt: skip
    embedder = load_embedder(master, dtype="BF16")
    got = np.stack([embedder.embed_tokens(i) for i in ids])
    assert cosines(got, expected).min() >= 0.999
