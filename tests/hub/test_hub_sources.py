"""``hf://ORG/NAME[@REV][/PATH]`` sources, with the real huggingface_hub client against a fake Hub: the
address parsed strictly, only the files the format needs downloaded (no pickles, other formats or
subfolders; an index's shards; one named file), then served offline from the cache; every command
that reads a checkpoint takes one; a GGUF made from one is named after the repo and carries its
provenance; missing repos and an unreachable Hub are one-line errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from conftest import FIXTURES, read_all
from fake_hub import (
    FakeHub,
    assert_no_token,
    client_env,
    client_in_process,
    converted_for_upload,
    hub_cli,
    hub_error_line,
    local_files,
    seed_repo,
    serve_fake_hub,
)
from huggingface_hub import ModelCard


@pytest.fixture
def hub(httpserver) -> FakeHub:
    return serve_fake_hub(httpserver)


@pytest.fixture
def env(tmp_path, hub) -> dict[str, str]:
    return client_env(tmp_path, hub)


@pytest.fixture
def inproc(tmp_path, monkeypatch) -> None:
    client_in_process(tmp_path, monkeypatch)


@pytest.fixture
def packed(tmp_path) -> Path:
    return converted_for_upload(tmp_path)


def test_hf_addresses_parse_strictly():
    from bitconvert.errors import UsageError
    from bitconvert.hub.source import HubRef, parse_hf_uri

    assert parse_hf_uri("hf://org/name") == HubRef("org/name")
    assert parse_hf_uri(Path("hf://org/name@dev")) == HubRef("org/name", "dev")  # pathlib folds the //
    assert parse_hf_uri("hf://org/na.me-1@refs%2Fpr%2F3/sub/f.gguf") == HubRef("org/na.me-1", "refs/pr/3", "sub/f.gguf")
    assert str(HubRef("org/name", "refs/pr/3", "x.gguf")) == "hf://org/name@refs%2Fpr%2F3/x.gguf"
    bad_uris = ("hf://org", "hf://org/", "hf://org/name@", "hf://org/name/../x", "hf://datasets/org/n", "hf://o/n--x")
    for bad in bad_uris:
        with pytest.raises(UsageError):
            parse_hf_uri(bad)


def test_layout_selection_skips_pickles_and_other_formats():
    from bitconvert.hub.errors import HubError
    from bitconvert.hub.source import HubRef, _layout_files

    ref = HubRef("org/name")
    repo = ["config.json", "model.safetensors", "pytorch_model.bin", "README.md", "tokenizer.json", "LICENSE",
            "onnx/model.onnx", "ggml-model-i2_s.gguf", "original/consolidated.safetensors", ".gitattributes"]
    assert _layout_files(repo, "", ref) == ("hf", ["LICENSE", "config.json", "model.safetensors", "tokenizer.json"])
    sharded = ["config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors"]
    assert _layout_files(sharded, "", ref) == ("hf-index", ["config.json", "model.safetensors.index.json"])
    assert _layout_files(["a.gguf", "README.md"], "", ref) == ("gguf", ["a.gguf"])
    with pytest.raises(HubError, match="several GGUF files"):
        _layout_files(["a.gguf", "b.gguf"], "", ref)
    with pytest.raises(HubError, match="only pickle weights"):
        _layout_files(["config.json", "pytorch_model.bin"], "", ref)
    with pytest.raises(HubError, match="no checkpoint"):
        _layout_files(["README.md"], "", ref)


def test_hf_input_downloads_only_what_the_format_needs_then_works_offline(tmp_path, hub, env):
    src = FIXTURES / "llama-packed"
    extra = {
        "pytorch_model.bin": b"not a pickle you want",
        "other.gguf": b"GGUF" + b"\0" * 60,
        "README.md": b"---\nlicense: apache-2.0\n---\n# upstream card\n",
        "onnx/model.safetensors": b"\0" * 16,
    }
    sha = seed_repo(hub, "org/src", src, extra)

    online = hub_cli(env, "inspect", "hf://org/src", "--json", "--no-stats")
    assert online.returncode == 0, online.stderr
    fetched = {r["path"].split("/resolve/", 1)[1].split("/", 1)[1] for r in hub.requests if "/resolve/" in r["path"]}
    assert fetched == set(local_files(src))  # no pickle, no gguf, no card, nothing from subfolders

    hub.requests.clear()
    offline = {**env, "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "from-cache"
    p = hub_cli(offline, "convert", "hf://org/src", out, "--to", "hf-bf16", "--json")
    assert p.returncode == 0, p.stderr
    assert hub.requests == []  # served from the cache alone
    assert json.loads(p.stdout)["src"] == "hf://org/src"
    prov = json.loads((out / "bitconvert_provenance.json").read_text())
    assert prov["source"]["commit"] == sha and prov["source"]["repo_id"] == "org/src"
    assert prov["source"]["resolved_from_cache_only"] is True and prov["base_model"] == "org/src"
    assert {f["path"] for f in prov["source_files"]} == set(local_files(src))

    # bit-identical to converting the local copy
    from bitconvert.convert import convert

    ref = tmp_path / "from-local"
    convert(src, ref, "hf-bf16")
    a, b = read_all(out), read_all(ref)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # pinned to the commit sha works offline too; an unknown revision fails in one line, still offline
    pinned = hub_cli(offline, "inspect", f"hf://org/src@{sha}", "--json", "--no-stats")
    assert pinned.returncode == 0, pinned.stderr
    missing = hub_cli(offline, "inspect", "hf://org/src@nope", "--no-stats")
    assert missing.returncode == 1 and "not in the local cache" in hub_error_line(missing)

    # every command that reads a checkpoint takes hf:// as SRC and for --against
    checks = {
        "verify": hub_cli(offline, "verify", "hf://org/src", "--against", src, "--logits", "--json"),
        "verify --against": hub_cli(offline, "verify", src, "--against", "hf://org/src", "--json"),
        "logits": hub_cli(offline, "logits", "hf://org/src", "--tokens", "1,2,3", "--out", tmp_path / "l.npy", "--json"),
    }
    for what, run in checks.items():
        assert run.returncode == 0, (what, run.stderr)
    assert json.loads(checks["verify"].stdout)["passed"] is True
    assert hub.requests == []
    assert_no_token(tmp_path, online, p, pinned, missing, *checks.values())


def test_an_index_pulls_its_shards_and_a_path_picks_one_file(tmp_path, hub, inproc):
    """An index pulls exactly its shards (a stray top-level safetensors stays on the Hub); a path picks one file."""
    from bitconvert.convert import convert
    from bitconvert.formats import open_checkpoint
    from bitconvert.hub.errors import HubError
    from bitconvert.hub.source import resolve_source

    sharded = tmp_path / "sharded"
    convert(FIXTURES / "llama-packed", sharded, "hf-packed", {"max_shard_size": 20_000})
    shards = sorted(p.name for p in sharded.glob("model-*.safetensors"))
    assert len(shards) > 1
    strays = {"consolidated.safetensors": b"\0" * 64, "a.gguf": b"GGUF", "b.gguf": b"GGUF"}
    sha = seed_repo(hub, "org/sharded", sharded, strays)

    got = resolve_source("hf://org/sharded", endpoint=hub.base)
    assert got.commit == sha and got.repo_id == "org/sharded"
    fetched = {r["path"].rsplit(f"/resolve/{sha}/", 1)[1] for r in hub.calls("GET", "/resolve/")}
    assert fetched == set(local_files(sharded))  # index, its shards, side files; not consolidated, no gguf
    assert sorted(got.files) == sorted(local_files(sharded))

    one = resolve_source("hf://org/sharded/b.gguf", endpoint=hub.base)
    assert one.path.name == "b.gguf" and one.path.read_bytes() == b"GGUF" and one.files == ["b.gguf"]
    with pytest.raises(HubError, match="no file or folder 'nope'"):
        resolve_source("hf://org/sharded/nope", endpoint=hub.base)

    # a repository holding one GGUF file resolves to that file, whatever else sits beside it
    gdir = tmp_path / "g"
    gdir.mkdir()
    convert(FIXTURES / "llama-packed", gdir / "m.gguf", "gguf", {"allow_fallback": True})
    seed_repo(hub, "org/g", gdir, {"README.md": b"# card\n", "pytorch_model.bin": b"pickle", "sub/x.gguf": b"GGUF"})
    g = resolve_source("hf://org/g", endpoint=hub.base)
    assert g.path.name == "m.gguf" and g.path.read_bytes() == (gdir / "m.gguf").read_bytes() and g.files == ["m.gguf"]
    assert open_checkpoint(g.path).format == "gguf"

    # Re-hosting an hf:// source uploads its selection, not b.gguf now sitting in the same cached snapshot.
    from bitconvert.publish.upload import plan_upload

    assert (got.path / "b.gguf").is_file()
    plan = plan_upload("hf://org/sharded", "org/copy", endpoint=hub.base)
    assert {f.path_in_repo for f in plan.files} == set(local_files(sharded)) | {"README.md"}
    assert ModelCard(plan.card).data.base_model == "org/sharded"


def test_gguf_from_hub_names_its_origin_and_carries_provenance(tmp_path, hub, env):
    """A GGUF made from hf:// is named after the repo, points at it, and keeps its provenance in the
    header (read here with gguf-py); upload's card is made from that header."""
    import gguf

    src = FIXTURES / "bitnet-2b4t-packed"
    sha = seed_repo(hub, "org/tiny-bitnet", src, {"README.md": b"---\nlicense: mit\n---\n# card\n"})
    out = tmp_path / "tiny.gguf"
    p = hub_cli(env, "convert", "hf://org/tiny-bitnet", out, "--to", "gguf", "--allow-fallback", "--json")
    assert p.returncode == 0, p.stderr
    reader = gguf.GGUFReader(out)

    def text(key):
        field = reader.fields[key]
        return bytes(field.parts[field.data[0]]).decode()

    assert text("general.name") == "tiny-bitnet"
    assert text("general.source.url") == text("general.source.repo_url") == "https://huggingface.co/org/tiny-bitnet"
    assert text("general.license") == "mit"
    prov = json.loads(text("bitconvert.provenance"))
    assert prov["source"]["commit"] == sha and prov["base_model"] == "org/tiny-bitnet"
    assert prov["output"] == {"format": "gguf", "files": ["tiny.gguf"]}
    blobs = {f["path"]: f["sha256"] for f in prov["source_files"]}
    assert blobs["model.safetensors"] == hashlib.sha256((src / "model.safetensors").read_bytes()).hexdigest()

    plan = hub_cli(env, "upload", out, "org/tiny-gguf", "--dry-run", "--json")
    assert plan.returncode == 0, plan.stderr
    card = json.loads(plan.stdout)["card"]
    assert sha in card and "base_model: org/tiny-bitnet" in card and blobs["model.safetensors"] in card

    # a local source: named after its folder, no URL, hashes not recorded rather than guessed
    local = tmp_path / "local.gguf"
    assert hub_cli(env, "convert", src, local, "--to", "gguf", "--allow-fallback").returncode == 0
    lreader = gguf.GGUFReader(local)
    field = lreader.fields["general.name"]
    assert bytes(field.parts[field.data[0]]).decode() == "bitnet-2b4t-packed"
    assert "general.source.url" not in lreader.fields
    field = lreader.fields["bitconvert.provenance"]
    lprov = json.loads(bytes(field.parts[field.data[0]]).decode())
    assert lprov["source"]["path"] == str(src) and all(f["sha256"] is None for f in lprov["source_files"])
    assert_no_token(tmp_path, p, plan)


def test_missing_repo_and_unreachable_hub_are_one_line_errors(tmp_path, hub, env, packed, inproc):
    from bitconvert.hub.errors import HubError
    from bitconvert.hub.source import resolve_source

    with pytest.raises(HubError, match=r"^hf://org/absent: repository not found"):
        resolve_source("hf://org/absent", endpoint=hub.base)
    down = {**env, "HF_ENDPOINT": "http://127.0.0.1:9"}
    q = hub_cli(down, "upload", packed, "org/x")
    assert q.returncode == 1 and "cannot reach the Hub" in hub_error_line(q)
    assert_no_token(tmp_path, q)
