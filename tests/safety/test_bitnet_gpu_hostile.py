"""A bitnet-gpu folder is never unpickled: what torch.save does not write for a dict of tensors is
refused in one line naming the file, and nothing in the pickle runs."""

from __future__ import annotations

import io
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import pytest

from bitconvert.convert import convert
from bitconvert.io.torch_archive import TorchArchiveWriter
from conftest import FIXTURES, run_cli

torch = pytest.importorskip("torch")
INT2 = "model_state_int2.pt"


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gpu") / "gpu"
    convert(FIXTURES / "bitnet-2b4t-master", out, "bitnet-gpu")
    return out


def _folder(written: Path, tmp_path: Path) -> Path:
    d = tmp_path / "src"
    shutil.copytree(written, d)
    return d


def _refused(src: Path, tmp_path: Path, *needles: str) -> str:
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    r = run_cli("convert", src, tmp_path / "dst", "--to", "hf-packed")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert str(src / INT2) in lines[0] or str(src) in lines[0], lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not (tmp_path / "dst").exists()
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before
    return lines[0]


def _with_pickle(path: Path, pkl: bytes) -> None:
    """``path`` rewritten as a well-formed torch archive whose data.pkl is ``pkl`` (storages kept)."""
    with zipfile.ZipFile(path) as z:
        records = [(i.filename.split("/", 1)[1], z.read(i)) for i in z.infolist()]
    w = TorchArchiveWriter(path, path.stem)
    for name, data in records:
        if name not in ("version", ".data/serialization_id"):
            w.add(name, pkl if name == "data.pkl" else data)
    w.close()


class _Runs:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused_unrun(written, tmp_path):
    src = _folder(written, tmp_path)
    marker = tmp_path / "ran"
    _with_pickle(src / INT2, pickle.dumps({"layers.0.attention.wqkv.weight": _Runs(marker)}, protocol=2))
    line = _refused(src, tmp_path, "data.pkl", "the pickle names posix.system")
    assert not marker.exists(), line


@pytest.mark.parametrize(
    "value, needle",
    [
        ({"a": 3}, "a dict entry that is not a name and a tensor"),
        ({"a": {"b": 1}}, "a dict other than the saved one"),
        ({"a": torch.ones(4, 2).t()}, "not contiguous"),
        ([torch.ones(2)], "opcode b']'"),
    ],
)
def test_what_torch_save_writes_but_not_for_a_dict_of_tensors(written, tmp_path, value, needle):
    src = _folder(written, tmp_path)
    torch.save(value, src / INT2)
    _refused(src, tmp_path, needle)


def test_other_pickle_protocols_and_zip_forms(written, tmp_path):
    src = _folder(written, tmp_path)
    data = torch.load(written / INT2, weights_only=True)
    torch.save(data, src / INT2, pickle_protocol=4)
    _refused(src, tmp_path, "not a protocol 2 pickle")
    with zipfile.ZipFile(written / INT2) as z, zipfile.ZipFile(src / INT2, "w", zipfile.ZIP_DEFLATED) as out:
        for i in z.infolist():
            out.writestr(i.filename, z.read(i))
    _refused(src, tmp_path, "compressed or encrypted")
    (src / INT2).write_bytes((written / INT2).read_bytes()[:-30])
    _refused(src, tmp_path, "no end of central directory record")
    (src / INT2).write_bytes(b"PK\x03\x04" + bytes(100))
    _refused(src, tmp_path, "not a torch.save archive")


def test_damaged_tensor_data_fails_its_crc(written, tmp_path):
    src = _folder(written, tmp_path)
    raw = bytearray((written / INT2).read_bytes())
    with zipfile.ZipFile(io.BytesIO(bytes(raw))) as z:
        info = z.getinfo("model_state_int2/data/0")
    local_extra = int.from_bytes(raw[info.header_offset + 28 : info.header_offset + 30], "little")
    start = info.header_offset + 30 + len(info.filename.encode()) + local_extra
    raw[start + 5] ^= 0x40
    (src / INT2).write_bytes(bytes(raw))
    _refused(src, tmp_path, "does not match its CRC-32")


def test_a_field_no_packer_writes_is_named(written, tmp_path):
    """Field value 0 (code -2) in the int2 bytes: refused naming the HF weight, row and column."""
    src = _folder(written, tmp_path)
    data = torch.load(written / INT2, weights_only=True)
    packed = data["layers.0.feed_forward.w2.weight"]
    packed[0, 0] = 0
    torch.save(data, src / INT2)
    _refused(src, tmp_path, "model.layers.0.mlp.down_proj.weight", "int2 field 0 (not a code) at row 0, column 0")
