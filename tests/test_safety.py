"""Tests for natbench.safety: safe names, run ids, paths inside --root, checkpoint loading, the
restricted unpickler of data files (CIFAR) and the XML parser without entity expansion (VOC)."""
from __future__ import annotations

import os
import pickle
import pickletools
from pathlib import Path

import numpy as np
import pytest
import torch

from natbench.data import cifar, voc
from natbench.errors import ConfigError, DataError, RunError
from natbench.safety import (ALLOWED_GLOBALS, UnsafeXML, check_name, check_run_id, inside, load_torch, load_weights,
                             parse_xml, restricted_load, run_dir)


# ------------------------------------------------------------------------------------ names
@pytest.mark.parametrize("name", ["digits", "cifar10", "pgd-at+trades", "digits-nat+awp-s0-1a2b3c4d", "a_b.c=d", "x" * 120])
def test_safe_names_pass(name):
    assert check_name("task", name) == name
    assert check_run_id(name) == name


@pytest.mark.parametrize("name", ["", "../../escaped", "/abs/path", "a/b", "..", ".", ".hidden", "-rf", "a..b",
                                  "a b", "tâche", "a\\b", "a\x00b", "x" * 121, None, 3])
def test_unsafe_names_fail(name):
    with pytest.raises(ConfigError, match="not a safe name"):
        check_name("task", name)
    with pytest.raises(RunError, match="not a run id"):
        check_run_id(name)


def test_inside_refuses_a_symlink_out_of_root(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    assert inside(root, root / "ok") == (root / "ok").resolve()
    with pytest.raises(RunError, match="outside the results root"):
        inside(root, root / "link" / "x")
    with pytest.raises(RunError, match="outside the results root"):
        run_dir(root, "link")
    with pytest.raises(RunError, match="not a run id"):
        run_dir(root, "../outside")


# ------------------------------------------------------------------------------------ checkpoints
@pytest.fixture
def ckpt(tmp_path) -> Path:
    model = torch.nn.Linear(3, 2)
    path = tmp_path / "best.pt"
    torch.save(model.state_dict(), path)
    return path


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


@pytest.mark.parametrize("damage", ["random", "truncated", "empty", "deleted", "payload", "not-a-dict", "other-keys"])
def test_load_weights_damaged_is_one_line(damage, ckpt, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = torch.nn.Linear(3, 2)
    if damage == "random":
        ckpt.write_bytes(np.random.default_rng(0).bytes(4096))
    elif damage == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[:200])
    elif damage == "empty":
        ckpt.write_bytes(b"")
    elif damage == "deleted":
        ckpt.unlink()
    elif damage == "payload":
        torch.save({"weight": _Payload()}, ckpt)
    elif damage == "not-a-dict":
        torch.save([torch.zeros(1)], ckpt)
    elif damage == "other-keys":
        torch.save({"conv.weight": torch.zeros(1)}, ckpt)
    with pytest.raises(RunError) as e:
        load_weights(model, ckpt, "run x:", "train it again with --force")
    msg = str(e.value)
    assert "\n" not in msg and str(ckpt) in msg and "--force" in msg
    assert not (tmp_path / "PWNED").exists()


def test_load_torch_reads_a_good_file(ckpt):
    assert set(load_torch(ckpt, "x", "y")) == {"weight", "bias"}


# ------------------------------------------------------------------------------------ CIFAR pickles
def test_cifar_payload_does_not_run(tmp_path, monkeypatch):
    root = cifar.write_cifar10_fixture(tmp_path / "data")
    marker = tmp_path / "PWNED"
    batch = root / "cifar-10-batches-py" / "data_batch_1"
    with open(batch, "wb") as f:
        pickle.dump({"data": _Marker(str(marker)), "labels": [0]}, f, protocol=2)
    with pytest.raises(DataError, match="not allowed in a data file"):
        cifar.read_cifar10(root)
    assert not marker.exists(), "the pickle payload ran"


class _Marker:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


@pytest.mark.parametrize("glob", ["builtins\neval", "os\nsystem", "subprocess\nPopen", "numpy\nload", "posix\nsystem"])
def test_restricted_unpickler_refuses_globals(glob, tmp_path):
    data = b"\x80\x02c" + glob.encode() + b"\nq\x00X\x04\x00\x00\x001+1q\x01\x85q\x02Rq\x03."
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        restricted_load(__import__("io").BytesIO(data))


def test_real_format_pickles_use_only_allowed_globals(tmp_path):
    """The fixture is written in the real files' format (protocol 2, numpy arrays); every global it
    names is allowed and it reads back unchanged."""
    root = cifar.write_cifar10_fixture(tmp_path / "data")
    raw = (root / "cifar-10-batches-py" / "data_batch_1").read_bytes()
    globals_used = set()
    for op, arg, _ in pickletools.genops(raw):
        if op.name == "GLOBAL":
            module, name = arg.split(" ")
            globals_used.add((module, name))
    assert globals_used and globals_used <= ALLOWED_GLOBALS
    with open(root / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        ours = restricted_load(f, encoding="latin1")
    with open(root / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        plain = pickle.load(f, encoding="latin1")
    assert ours.keys() == plain.keys()
    np.testing.assert_array_equal(ours["data"], plain["data"])
    assert ours["labels"] == plain["labels"]


def test_python2_style_cifar_pickle_loads():
    """A protocol-2 pickle as Python 2's cPickle writes a CIFAR batch: byte strings (BINSTRING) and
    ``numpy.core.multiarray._reconstruct`` with a str state."""
    arr = np.arange(6, dtype=np.uint8).reshape(1, 6)
    body = (b"\x80\x02}q\x00(U\x04dataq\x01cnumpy.core.multiarray\n_reconstruct\nq\x02cnumpy\nndarray\nq\x03K\x00\x85"
            b"U\x01b\x87Rq\x04(K\x01K\x01K\x06\x86cnumpy\ndtype\nq\x05U\x02u1K\x00K\x01\x87Rq\x06(K\x03U\x01|NNNJ"
            b"\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89U\x06" + arr.tobytes() + b"tbU\x06labelsq\x07]q\x08K\x03au.")
    d = restricted_load(__import__("io").BytesIO(body), encoding="latin1")
    np.testing.assert_array_equal(d["data"], arr)
    assert d["labels"] == [3]


# ------------------------------------------------------------------------------------ XML
GOOD = b"<annotation><size><width>4</width><height>3</height><depth>3</depth></size></annotation>"
LAUGHS = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>'
          b"<annotation><filename>&lol2;</filename></annotation>")
EXTERNAL = (b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
            b"<annotation><filename>&x;</filename></annotation>")


def test_parse_xml_reads_plain_annotations():
    assert parse_xml(GOOD).find("size/width").text == "4"
    assert parse_xml(GOOD.decode().encode("utf-16")).tag == "annotation"


@pytest.mark.parametrize("data", [LAUGHS, EXTERNAL, b"<!DOCTYPE annotation><annotation/>",
                                  LAUGHS.decode().replace('"1.0"?', '"1.0" encoding="utf-16"?').encode("utf-16")],
                         ids=["billion-laughs", "external-entity", "doctype", "utf16-entity"])
def test_parse_xml_refuses_doctype_and_entities(data):
    with pytest.raises(UnsafeXML):
        parse_xml(data)


def test_voc_reader_refuses_entities(tmp_path):
    path = tmp_path / "000001.xml"
    path.write_bytes(LAUGHS)
    with pytest.raises(DataError, match="unsafe XML"):
        voc.parse_annotation(path)
    path.write_bytes(b"<annotation><object>")
    with pytest.raises(DataError, match="malformed XML"):
        voc.parse_annotation(path)


def test_atomic_write_unique_temporary_names(tmp_path, monkeypatch):
    from natbench import safety

    names = {safety.tmp_path(tmp_path / "state.pt") for _ in range(100)}
    assert len(names) == 100 and all(n.parent == tmp_path for n in names)
    seen = []
    safety.atomic_write(tmp_path / "a.txt", lambda tmp: (seen.append(tmp), tmp.write_text("x")))
    assert (tmp_path / "a.txt").read_text() == "x" and not seen[0].exists()
    assert oct((tmp_path / "a.txt").stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    with pytest.raises(ZeroDivisionError):  # a failed write leaves no temporary file behind
        safety.atomic_write(tmp_path / "b.txt", lambda tmp: (tmp.write_text("x"), 1 / 0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


# ------------------------------------------------------------------------------------ images
def _bomb(path: Path) -> Path:
    """A tiny PNG whose header claims 30000 x 30000 pixels (PIL refuses to decode it)."""
    import struct
    import zlib

    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))
    return path


def test_image_loaders_refuse_decompression_bombs(tmp_path):
    from natbench.tasks.classification import ImageFileLoader
    from natbench.tasks.reid import ReIDLoader

    bomb = _bomb(tmp_path / "x.jpg")
    with pytest.raises(DataError, match="not a readable image.*decompression bomb"):
        ImageFileLoader([bomb], torch.zeros(1, dtype=torch.long), 1, None).load(0)
    with pytest.raises(DataError, match="not a readable image.*decompression bomb"):
        ReIDLoader([(bomb, 1, 1)], 1, None, "query").load(0)
