"""Tests for plasticity.data: synthetic tasks, image loading, raw-file validation, preparation."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from plasticity import PlasticityError
from plasticity.data import (
    DATASETS,
    Dataset,
    default_data_root,
    images,
    load_dataset,
    prepare,
    prepare_data_root,
    synthetic,
)
from plasticity.seeding import torch_generator

SYNTHETIC = tuple(synthetic.LABELLERS)  # the registry: a new synthetic task is tested too
RAW_NAMES = tuple(images.RAW_FILES)


def _fields(ds: Dataset) -> tuple[torch.Tensor, ...]:
    return (ds.x_train, ds.y_train, ds.x_test, ds.y_test)


def _same(a: Dataset, b: Dataset) -> bool:
    return all(torch.equal(s, t) for s, t in zip(_fields(a), _fields(b), strict=True))


# ------------------------------------------------------------------------------------ registry


def test_registry_names() -> None:
    assert list(DATASETS) == [*synthetic.LABELLERS, *images.IMAGE_SETS]
    # the paper's six (docs/paper.md 4) stay registered
    assert {"halfspace", "relu1", "relu2", "rnn", "mnist", "fashion_mnist"} <= set(DATASETS)


def test_unknown_dataset_lists_choices() -> None:
    with pytest.raises(PlasticityError, match="unknown dataset 'foo': choose one of halfspace"):
        load_dataset("foo")


def test_unknown_inputs() -> None:
    with pytest.raises(PlasticityError, match="unknown inputs 'cauchy'"):
        load_dataset("halfspace", inputs="cauchy")


# ----------------------------------------------------------------------------------- synthetic


@pytest.mark.parametrize("name", SYNTHETIC)
def test_synthetic_shapes_and_balance(name: str) -> None:
    ds = load_dataset(name, data_seed=0)
    assert ds.name == name and ds.n_classes == 2 and ds.dim == 10
    assert ds.x_train.shape == (10_000, 10) and ds.x_test.shape == (10_000, 10)
    assert ds.y_train.shape == (10_000,) and ds.y_test.shape == (10_000,)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.x_train.device.type == "cpu"
    for y in (ds.y_train, ds.y_test):
        counts = torch.bincount(y, minlength=2)
        assert counts.numel() == 2 and int(counts.min()) >= 0.09 * y.numel()  # test: ~train share
    assert int(torch.bincount(ds.y_train).min()) >= 1_000
    # standard normal inputs
    assert abs(float(ds.x_train.mean())) < 0.05 and abs(float(ds.x_train.std()) - 1) < 0.05


@pytest.mark.parametrize("name", SYNTHETIC)
def test_synthetic_deterministic_and_seeded(name: str) -> None:
    a = load_dataset(name, data_seed=7)
    b = load_dataset(name, data_seed=7)
    assert a is not b and _same(a, b)
    c = load_dataset(name, data_seed=8)
    assert not torch.equal(a.x_train, c.x_train)
    assert not torch.equal(a.x_train, a.x_test)


def test_synthetic_bit_identical_without_cache() -> None:
    for name in SYNTHETIC:
        assert _same(synthetic.make_synthetic(name, 3), load_dataset(name, data_seed=3))


def test_relu1_and_relu2_are_different_tasks() -> None:
    r1, r2 = load_dataset("relu1", data_seed=0), load_dataset("relu2", data_seed=0)
    # same seed, different names: different points and different labelling functions
    assert not torch.equal(r1.x_train, r2.x_train)
    f1 = synthetic.relu_labeller(torch_generator(0, "data", "relu1", "task", 0))
    f2 = synthetic.relu_labeller(torch_generator(0, "data", "relu2", "task", 0))
    x = r1.x_train.double()
    assert (f1(x) != f2(x)).float().mean() > 0.05


def test_labels_are_a_function_of_stored_points() -> None:
    # the labels are recomputable from the returned float32 points (no float64 boundary drift)
    ds = load_dataset("halfspace", data_seed=5)
    w_gen = torch_generator(5, "data", "halfspace", "task", 0)
    label = synthetic.halfspace_labeller(w_gen)
    assert torch.equal(label(ds.x_test.double()), ds.y_test)


def test_uniform_inputs() -> None:
    ds = load_dataset("rnn", data_seed=1, inputs="uniform")
    assert float(ds.x_train.min()) >= -1 and float(ds.x_train.max()) <= 1
    assert float(ds.x_train.abs().max()) > 0.99
    assert not torch.equal(ds.x_train, load_dataset("rnn", data_seed=1).x_train)


def test_returned_tensors_cannot_corrupt_the_cache() -> None:
    a = load_dataset("relu1", data_seed=2)
    before = a.x_train.clone()
    a.x_train.zero_()
    a.y_train.fill_(1)
    b = load_dataset("relu1", data_seed=2)
    assert torch.equal(b.x_train, before) and int(b.y_train.min()) == 0


def test_synthetic_is_quiet_and_fast(capsys: pytest.CaptureFixture[str]) -> None:
    t0 = time.perf_counter()
    for name in SYNTHETIC:
        load_dataset(name, data_seed=12345)
    assert time.perf_counter() - t0 < 8.0  # about 1 s for all four on a loaded CPU
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_dataset_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError):
        Dataset(
            "bad",
            torch.zeros(3, 2),
            torch.zeros(4, dtype=torch.int64),
            torch.zeros(1, 2),
            torch.zeros(1, dtype=torch.int64),
            2,
        )


# ------------------------------------------------------------------------------ default root


def test_default_data_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PLASTICITY_DATA", str(tmp_path / "d"))
    assert default_data_root() == tmp_path / "d"
    monkeypatch.delenv("PLASTICITY_DATA")
    repo = Path(prepare.__file__).resolve().parents[3]
    expected = repo / "data" if (repo / "pyproject.toml").is_file() else None
    if expected is not None:
        assert default_data_root() == expected
    else:
        assert default_data_root() == Path.home() / ".cache" / "plasticity" / "data"


# ------------------------------------------------------------------------------------- images


def _is_prepared(root: Path) -> bool:
    try:
        for name in images.IMAGE_SETS:
            images.validate_raw(root, name)
    except PlasticityError:
        return False
    return True


def _idx_file(fname: str, set_index: int) -> bytes:
    """A valid uncompressed IDX file ``fname`` (full size: the loader checks the counts) with
    known contents: example i has label i % 10, its label's block of 10 pixels at 255, and its
    last pixel i % 256 (+1 in the second set, so the two sets differ)."""
    magic, n = images.RAW_FILES[fname]
    i = np.arange(n)
    if magic == images.LABEL_MAGIC:
        return struct.pack(">II", magic, n) + (i % 10).astype(np.uint8).tobytes()
    pixels = np.zeros((n, images.IMAGE_DIM), np.uint8)
    pixels[i[:, None], (i % 10)[:, None] * 78 + np.arange(10)] = 255
    pixels[:, -1] = (i + set_index) % 256
    side = images.IMAGE_SIDE
    return struct.pack(">IIII", magic, n, side, side) + pixels.tobytes()


@pytest.fixture(scope="session")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An offline source laid out as prepare expects (``<SET>/<name>.gz`` and MD5SUMS of the
    uncompressed files, half of the lines in md5sum's binary-mode ``*name`` form), built in a
    temporary folder so the preparation tests run on every machine (about 2 s)."""
    src = tmp_path_factory.mktemp("source")
    lines = []
    for s, set_name in enumerate(prepare.SETS):
        (src / set_name).mkdir()
        for j, fname in enumerate(prepare.FILES):
            raw = _idx_file(fname, s)
            (src / set_name / f"{fname}.gz").write_bytes(gzip.compress(raw, 1, mtime=0))
            star = "*" if j % 2 else ""
            lines.append(f"{hashlib.md5(raw).hexdigest()}  {star}{set_name}/{fname}.gz")
    (src / prepare.MD5_FILE).write_text("\n".join(lines) + "\n")
    return src


@pytest.fixture(scope="session")
def prepared_root(tmp_path_factory: pytest.TempPathFactory, source: Path) -> Path:
    """A data root with both image sets, prepared from the temporary source."""
    return prepare_data_root(tmp_path_factory.mktemp("data"), source)


def test_prepare_writes_the_sources_files(prepared_root: Path, source: Path) -> None:
    # Catches: a prepared file that is not the gunzipped source file (MD5 of every one)
    sums = prepare.read_md5sums(source)
    assert len(sums) == len(prepare.SETS) * len(prepare.FILES)
    for key, md5 in sums.items():
        set_name, fname = key.split("/")
        assert hashlib.md5((prepared_root / set_name / "raw" / fname).read_bytes()).hexdigest() == md5


def test_prepare_is_idempotent(prepared_root: Path, source: Path) -> None:
    raw = prepared_root / "MNIST" / "raw"
    stamps = {p.name: p.stat().st_mtime_ns for p in raw.iterdir()}
    assert sorted(stamps) == sorted(RAW_NAMES)  # no temp files left behind
    assert prepare_data_root(prepared_root, source) == prepared_root
    # Catches: a second preparation that rewrites files already correct
    assert {p.name: p.stat().st_mtime_ns for p in raw.iterdir()} == stamps


@pytest.mark.parametrize(("name", "set_index"), [("mnist", 0), ("fashion_mnist", 1)])
def test_prepared_images_load_as_written(prepared_root: Path, name: str, set_index: int) -> None:
    ds = load_dataset(name, root=prepared_root)
    assert ds.n_classes == 10 and ds.dim == 784
    assert ds.x_train.shape == (60_000, 784) and ds.x_test.shape == (10_000, 784)
    assert ds.x_train.dtype == torch.float32 and ds.y_test.dtype == torch.int64
    # Catches: pixels not scaled to [0, 1], examples or labels reordered, the two sets swapped
    for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        i = torch.arange(y.numel())
        assert torch.equal(y, i % 10)
        assert torch.equal(x[:, -1], ((i + set_index) % 256).float() / 255)
        assert torch.equal(x[i, (i % 10) * 78], torch.ones(y.numel()))
        assert float(x.min()) == 0.0 and float(x.max()) == 1.0


@pytest.mark.parametrize(("name", "counts"), [("mnist", None), ("fashion_mnist", [6000] * 10)])
def test_images_load(name: str, counts: list[int] | None) -> None:
    """The real data sets in the default data root (`make data` prepares it before the tests)."""
    if not _is_prepared(default_data_root()):
        pytest.skip(f"the default data root {default_data_root()} is not prepared (make data)")
    ds = load_dataset(name)
    assert ds.n_classes == 10 and ds.dim == 784
    assert ds.x_train.shape == (60_000, 784) and ds.x_test.shape == (10_000, 784)
    assert ds.y_train.shape == (60_000,) and ds.y_test.shape == (10_000,)
    assert ds.x_train.dtype == torch.float32 and ds.y_test.dtype == torch.int64
    assert float(ds.x_train.min()) == 0.0 and float(ds.x_train.max()) == 1.0
    assert float(ds.x_test.min()) >= 0.0 and float(ds.x_test.max()) <= 1.0
    assert torch.bincount(ds.y_train).numel() == 10
    if counts is not None:
        assert torch.bincount(ds.y_train).tolist() == counts


def _mnist_copy(prepared_root: Path, tmp_path: Path) -> Path:
    """A root whose MNIST raw files are symlinks to the prepared ones (cheap to corrupt one)."""
    raw = tmp_path / "root" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for fname in RAW_NAMES:
        os.symlink(prepared_root / "MNIST" / "raw" / fname, raw / fname)
    return tmp_path / "root"


def _corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.unlink()  # drop the symlink; write a real file in its place
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "magic":
        path.write_bytes(b"\x00\x00\x08\x01" + data[4:])  # 2049 (labels) in an images file
    elif how == "short_header":
        path.write_bytes(data[:5])
    elif how == "extra":
        path.write_bytes(data + b"\x00")


@pytest.mark.parametrize(
    ("fname", "how", "needle"),
    [
        ("train-images-idx3-ubyte", "missing", "is missing"),
        ("t10k-labels-idx1-ubyte", "missing", "is missing"),
        ("train-images-idx3-ubyte", "truncate", "is truncated"),
        ("t10k-labels-idx1-ubyte", "truncate", "is truncated"),
        ("t10k-images-idx3-ubyte", "magic", "magic number 2049, expected 2051"),
        ("train-labels-idx1-ubyte", "short_header", "shorter than its 8-byte header"),
        ("t10k-images-idx3-ubyte", "extra", "too long"),
    ],
)
def test_bad_raw_file_is_one_line_error(
    prepared_root: Path, tmp_path: Path, fname: str, how: str, needle: str
) -> None:
    root = _mnist_copy(prepared_root, tmp_path)
    path = root / "MNIST" / "raw" / fname
    if how == "missing":
        path.unlink()
    else:
        _corrupt(path, how)
    with pytest.raises(PlasticityError) as info:
        load_dataset("mnist", root=root)
    msg = str(info.value)
    assert str(path) in msg and needle in msg and "make data" in msg
    assert "\n" not in msg


def test_missing_root_error_names_file(tmp_path: Path) -> None:
    with pytest.raises(
        PlasticityError, match="FashionMNIST/raw/train-images-idx3-ubyte is missing"
    ):
        load_dataset("fashion_mnist", root=tmp_path)


# ----------------------------------------------------------------------------------- prepare


def _fake_source(source: Path, tmp_path: Path, bad: str, payload: bytes) -> Path:
    """A copy of the source (symlinks) whose file ``bad`` (e.g. "MNIST/x.gz") is ``payload``."""
    fake = tmp_path / "source"
    for set_name in prepare.SETS:
        (fake / set_name).mkdir(parents=True)
        for fname in prepare.FILES:
            os.symlink(source / set_name / f"{fname}.gz", fake / set_name / f"{fname}.gz")
    shutil.copy(source / prepare.MD5_FILE, fake / prepare.MD5_FILE)
    (fake / bad).unlink()
    (fake / bad).write_bytes(payload)
    return fake


@pytest.mark.parametrize(
    ("payload", "needle"),
    [(b"\x1f\x8b\x08\x00garbage", "is corrupt or unreadable"), (gzip.compress(b"x"), "MD5")],
)
def test_prepare_rejects_corrupt_source(
    source: Path, tmp_path: Path, payload: bytes, needle: str
) -> None:
    bad = "MNIST/train-labels-idx1-ubyte.gz"  # the 2nd file processed: the test stays fast
    fake = _fake_source(source, tmp_path, bad, payload)
    with pytest.raises(PlasticityError) as info:
        prepare_data_root(tmp_path / "root", fake)
    assert str(fake / bad) in str(info.value) and needle in str(info.value)
    assert "\n" not in str(info.value)
    raw = tmp_path / "root" / "MNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == ["train-images-idx3-ubyte"]  # no temp file


def test_prepare_missing_explicit_source(tmp_path: Path) -> None:
    with pytest.raises(PlasticityError, match="is not a folder"):
        prepare_data_root(tmp_path / "root", tmp_path / "nope")


def test_prepare_main(
    source: Path, prepared_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert prepare.main(["--root", str(prepared_root), "--source", str(source)]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and str(prepared_root) in out
