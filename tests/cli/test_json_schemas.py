"""Every ``--json`` output carries ``schema_version`` and validates against its JSON Schema
(``bitconvert/schemas``, draft 2020-12): real outputs of each command on the fixtures, and wrong
outputs that the schemas refuse."""

from __future__ import annotations

import ast
import copy
import importlib.util
import json
import os
import re
import sys

import jsonschema
import pytest
import typer.main
from conftest import FIXTURES, ROOT, run_cli

from bitconvert import SCHEMA_VERSION
from bitconvert.cli import app

SCHEMAS = ROOT / "bitconvert" / "schemas"
#: command -> the schema its --json output follows
SCHEMA_OF = {
    "inspect": "inspect",
    "pack": "conversion",
    "unpack": "conversion",
    "convert": "conversion",
    "verify": "verify",
    "upload": "upload",  # --dry-run: upload-plan
    "run": "run",
    "logits": "logits",
}
COMMANDS = typer.main.get_command(app).commands
if "embed" in COMMANDS:  # the embeddings runtime's command; its schema ships either way
    SCHEMA_OF["embed"] = "embed"


def schema(name: str) -> dict:
    return json.loads((SCHEMAS / f"{name}.schema.json").read_text())


def validate(data: dict, name: str) -> None:
    jsonschema.Draft202012Validator(schema(name)).validate(data)
    assert data["schema_version"] == SCHEMA_VERSION
    assert next(iter(data)) == "schema_version"  # the first key, for a reader that looks at the top only


def json_of(*args, code: int | None = 0) -> dict:
    """The JSON a command prints; ``code``: the exit code it must have (None: 0 or 1, a verdict)."""
    r = run_cli(*args, "--json")
    assert r.returncode == code if code is not None else r.returncode in (0, 1), r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> dict[str, tuple[dict, str]]:
    """Real outputs of every command with --json (name -> (output, schema)), made once."""
    tmp = tmp_path_factory.mktemp("outputs")
    packed, gguf, nt = tmp / "packed", tmp / "m.gguf", tmp / "nt"
    master = FIXTURES / "bitnet-2b4t-master"
    got = {
        "pack": (json_of("pack", master, packed), "conversion"),
        "unpack": (json_of("unpack", packed, tmp / "unpacked"), "conversion"),
        "convert-gguf": (json_of("convert", FIXTURES / "bitnet-2b4t-256-packed", gguf, "--to", "gguf"), "conversion"),
        "convert-nanotron": (json_of("convert", FIXTURES / "llama-master", nt, "--to", "nanotron",
                                     "--nanotron-flavor", "pr178", "--allow-lossy"), "conversion"),  # fmt: skip
        "inspect-master": (json_of("inspect", master), "inspect"),
        "inspect-packed": (json_of("inspect", packed), "inspect"),
        "inspect-gguf": (json_of("inspect", gguf), "inspect"),
        "inspect-nanotron": (json_of("inspect", nt), "inspect"),
        "verify": (json_of("verify", packed, "--against", master), "verify"),
        "verify-target": (json_of("verify", gguf, "--target", "llama.cpp", code=1), "verify"),
        "verify-reproduce": (json_of("verify", gguf, "--reproduce", FIXTURES / "bitnet-2b4t-256-master", code=None),
                             "verify"),
        "verify-roundtrip": (json_of("verify", packed, "--roundtrip", "nanotron", code=None), "verify"),
        "verify-error": (json_of("verify", tmp / "nonexistent", code=2), "verify"),
        "verify-usage-error": (json_of("verify", packed, "--no-such-option", code=2), "verify"),
        "upload-dry-run": (json_of("upload", packed, "org/name", "--dry-run"), "upload-plan"),
        "logits": (json_of("logits", packed, "--tokens", "1,2,3", "--out", tmp / "l.npy"), "logits"),
        "run": (json_of("run", packed, "--tokens", "1,2", "--max-new-tokens", "2"), "run"),
    }
    if "embed" in COMMANDS:
        got["embed"] = (json_of("embed", FIXTURES / "bitnet-embedding-qwen3-master", "--text", "hello"), "embed")
    return got


def test_every_schema_is_a_valid_draft_2020_12_schema():
    files = sorted(SCHEMAS.glob("*.schema.json"))
    assert {f.name.removesuffix(".schema.json") for f in files} == {*SCHEMA_OF.values(), "upload-plan", "embed"}
    for f in files:
        s = json.loads(f.read_text())
        assert s["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        jsonschema.Draft202012Validator.check_schema(s)
        # every output names its version; each schema holds it to the one constant
        found = re.findall(r'"schema_version": \{\s*"const": (\d+)', f.read_text())
        assert found and set(found) == {str(SCHEMA_VERSION)}, f.name


def test_every_command_with_json_has_a_schema():
    with_json = {name for name, c in COMMANDS.items() if any("--json" in p.opts for p in c.params)}
    assert with_json == set(SCHEMA_OF)


def test_real_outputs_validate(outputs):
    for name, (data, schema_name) in outputs.items():
        try:
            validate(data, schema_name)
        except jsonschema.ValidationError as exc:
            pytest.fail(f"{name}: {exc.message} at {list(exc.absolute_path)}")
    # what each output is about, as the schema's optional parts say
    assert outputs["inspect-gguf"][0]["gguf_architecture"] == "bitnet"
    assert "gguf_architecture" not in outputs["inspect-packed"][0]
    assert outputs["inspect-nanotron"][0]["nanotron_flavor"] == "pr178"
    assert outputs["verify-error"][0]["exit_code"] == 2 and "checks" not in outputs["verify-error"][0]
    assert "--no-such-option" in outputs["verify-usage-error"][0]["error"]
    assert outputs["verify-target"][0]["checks_failed"] > 0


@pytest.mark.parametrize(
    ("output", "spoil"),
    [
        ("pack", lambda d: d.pop("schema_version")),
        ("pack", lambda d: d.update(schema_version=2)),
        ("pack", lambda d: d.update(tensors="38")),
        ("convert-gguf", lambda d: d.update(warnings="one warning")),
        ("inspect-gguf", lambda d: d.pop("family")),
        ("inspect-packed", lambda d: d["tensors"][0].update(role="ternary")),
        ("inspect-packed", lambda d: d["tensors"][-1].pop("shape")),
        ("inspect-nanotron", lambda d: d.update(nanotron_flavor="pr179")),
        ("verify", lambda d: d["checks"][0].pop("passed")),
        ("verify", lambda d: d["checks"][0].update(figure="big")),
        ("verify", lambda d: d.pop("checks_failed")),
        ("verify-error", lambda d: d.update(exit_code=0)),
        ("upload-dry-run", lambda d: d["operations"][0].update(sha256="not a digest")),
        ("logits", lambda d: d.update(shape=[3])),
        ("run", lambda d: d.update(tokens=[-1])),
    ],
)
def test_a_wrong_output_fails_its_schema(outputs, output, spoil):
    data, schema_name = outputs[output]
    wrong = copy.deepcopy(data)
    spoil(wrong)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema(schema_name)).validate(wrong)


def _fake_hub_module():
    """The test module that holds the fake Hub server (wherever the tests tree keeps it)."""
    for path in sorted((ROOT / "tests").rglob("*.py")):
        if re.search(r"^class FakeHub\b", path.read_text(encoding="utf-8"), re.M):
            spec = importlib.util.spec_from_file_location(f"fake_hub_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module  # its dataclasses look their module up
            spec.loader.exec_module(module)
            return module
    pytest.fail("no test module defines the fake Hub (class FakeHub)")


def test_upload_and_push_outputs_validate(tmp_path, httpserver):
    """``upload --json`` and ``convert --push-to --json``, against the fake Hub the Hub tests use."""
    fake = _fake_hub_module()
    hub = fake.FakeHub(httpserver.url_for("").rstrip("/"))
    httpserver.expect_request(re.compile(".*")).respond_with_handler(hub)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_HOME=str(tmp_path / "hf-home"), HF_ENDPOINT=hub.base, HF_TOKEN=fake.TOKEN, HF_HUB_DISABLE_XET="1",
               HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_UPDATE_CHECK="1")  # as the Hub tests' env fixture
    packed = tmp_path / "packed"
    pushed = run_cli("convert", FIXTURES / "bitnet-2b4t-master", packed, "--to", "hf-packed",
                     "--push-to", "org/pushed", "--json", env=env)  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr
    data = json.loads(pushed.stdout)
    validate(data, "conversion")
    assert data["upload"]["repo_id"] == "org/pushed"
    uploaded = run_cli("upload", packed, "org/again", "--json", env=env)
    assert uploaded.returncode == 0, uploaded.stderr
    data = json.loads(uploaded.stdout)
    validate(data, "upload")
    spoiled = {**data, "commit": None}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema("upload")).validate(spoiled)


def test_the_version_is_one_constant_in_one_place():
    """``SCHEMA_VERSION`` is assigned once, in the package root; no module spells a version of its own."""
    assigned, literal = [], []
    for path in (ROOT / "bitconvert").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "SCHEMA_VERSION" for t in node.targets):
                assigned.append(path.relative_to(ROOT).as_posix())
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values):
                    named = isinstance(key, ast.Constant) and key.value == "schema_version"
                    if named and isinstance(value, ast.Constant):
                        literal.append(path.relative_to(ROOT).as_posix())
    assert assigned == ["bitconvert/__init__.py"] and literal == []


def test_the_schemas_are_package_data():
    """An installed bitconvert has them: pyproject's package-data names every schema file."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["bitconvert"]
    shipped = {p for pattern in patterns for p in (ROOT / "bitconvert").glob(pattern)}
    assert set(SCHEMAS.glob("*.schema.json")) <= shipped
    test_extra = " ".join(config["project"]["optional-dependencies"]["test"])
    assert "jsonschema" in test_extra


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.iterdir() if (p / "config.json").is_file()))
def test_inspect_of_every_shipped_fixture_validates(name):
    """Every family and layout the fixtures hold (embedding models, 1bitLLM, Llama, onebitllms, ...)."""
    validate(json_of("inspect", FIXTURES / name), "inspect")
