"""MNIST and Fashion-MNIST from a prepared data root, validated before torchvision reads them.

A prepared root holds the four uncompressed IDX files of each set in ``<root>/MNIST/raw/`` and
``<root>/FashionMNIST/raw/`` (see :mod:`plasticity.data.prepare`). Each file's header and size are
checked first, so a missing, truncated or foreign file gives a one-line PlasticityError naming the
file and the fix instead of a torchvision traceback. Pixels are divided by 255 (PAPER 4.1).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import torch

from plasticity import PlasticityError
from plasticity.data.dataset import Dataset

IMAGE_SIDE = 28
IMAGE_DIM = IMAGE_SIDE * IMAGE_SIDE
N_CLASSES = 10
IMAGE_MAGIC = 2051  # IDX: unsigned bytes, 3 dimensions
LABEL_MAGIC = 2049  # IDX: unsigned bytes, 1 dimension

#: dataset name -> torchvision class name, which is also the folder under the data root
IMAGE_SETS: dict[str, str] = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}

#: uncompressed file name -> (IDX magic, number of items); the same for both sets
RAW_FILES: dict[str, tuple[int, int]] = {
    "train-images-idx3-ubyte": (IMAGE_MAGIC, 60_000),
    "train-labels-idx1-ubyte": (LABEL_MAGIC, 60_000),
    "t10k-images-idx3-ubyte": (IMAGE_MAGIC, 10_000),
    "t10k-labels-idx1-ubyte": (LABEL_MAGIC, 10_000),
}

FIX = "run `make data` or `plasticity prepare-data` (or set PLASTICITY_DATA to a prepared root)"


def raw_folder(root: Path, name: str) -> Path:
    """The folder ``<root>/<MNIST|FashionMNIST>/raw`` that holds set ``name``'s IDX files."""
    return Path(root) / IMAGE_SETS[name] / "raw"


def _problem(path: Path, magic: int, count: int) -> str | None:
    """What is wrong with IDX file ``path`` (expected ``magic`` and ``count``), or None if valid."""
    if not path.exists():
        return "is missing"
    if not path.is_file():
        return "is not a regular file"
    header_len = 16 if magic == IMAGE_MAGIC else 8
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            header = f.read(header_len)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if len(header) < header_len:
        return f"is truncated ({size} bytes, shorter than its {header_len}-byte header)"
    fields = struct.unpack(f">{header_len // 4}I", header)
    if fields[0] != magic:
        return f"has IDX magic number {fields[0]}, expected {magic} (not an MNIST-format file)"
    if fields[1] != count:
        return f"holds {fields[1]} items, expected {count}"
    if magic == IMAGE_MAGIC and fields[2:] != (IMAGE_SIDE, IMAGE_SIDE):
        return f"holds {fields[2]}x{fields[3]} images, expected {IMAGE_SIDE}x{IMAGE_SIDE}"
    expected = header_len + count * (IMAGE_DIM if magic == IMAGE_MAGIC else 1)
    if size != expected:
        state = "truncated" if size < expected else "too long"
        return f"is {state} ({size} bytes, expected {expected})"
    return None


def validate_raw(root: Path, name: str) -> None:
    """Check the 4 IDX files of set ``name`` under ``root``; raise a one-line PlasticityError."""
    folder = raw_folder(root, name)
    for fname, (magic, count) in RAW_FILES.items():
        path = folder / fname
        problem = _problem(path, magic, count)
        if problem is not None:
            raise PlasticityError(f"{IMAGE_SETS[name]} raw file {path} {problem}; {FIX}")


def _read_split(name: str, root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [n, 784] float32 in [0, 1] and labels [n] int64 of one split, via torchvision."""
    import torchvision.datasets as tvd  # deferred: importing torchvision costs about a second

    cls = getattr(tvd, IMAGE_SETS[name])
    try:
        ds = cls(str(root), train=train, download=False)
        pixels, labels = ds.data, ds.targets
    except Exception as exc:  # noqa: BLE001 -- files validated above; any failure -> one line
        msg = " ".join(str(exc).split()) or type(exc).__name__
        raise PlasticityError(
            f"torchvision could not read {IMAGE_SETS[name]} in {root}: {msg}; {FIX}"
        )
    labels = labels.to(torch.int64)
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= N_CLASSES):
        split = "train" if train else "t10k"
        path = raw_folder(root, name) / f"{split}-labels-idx1-ubyte"
        raise PlasticityError(f"{IMAGE_SETS[name]} raw file {path} has labels outside 0-9; {FIX}")
    x = pixels.reshape(pixels.shape[0], IMAGE_DIM).to(torch.float32).div_(255.0)
    return x, labels


def load_images(name: str, root: str | os.PathLike[str]) -> Dataset:
    """Load ``mnist`` or ``fashion_mnist``: x [60000|10000, 784] float32 in [0, 1], 10 classes."""
    if name not in IMAGE_SETS:
        raise PlasticityError(f"unknown image set {name!r}: choose one of {', '.join(IMAGE_SETS)}")
    root = Path(root).expanduser()
    validate_raw(root, name)
    x_train, y_train = _read_split(name, root, train=True)
    x_test, y_test = _read_split(name, root, train=False)
    return Dataset(name, x_train, y_train, x_test, y_test, N_CLASSES)
