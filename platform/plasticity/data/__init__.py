"""Data sets: the four synthetic tasks and MNIST / Fashion-MNIST (docs/paper.md section 4).

Public API::

    ds = load_dataset("relu1", data_seed=3)          # ds.x_train [10000, 10] float32, ...
    ds = load_dataset("mnist")                        # needs a prepared data root (see prepare.py)
    DATASETS                                          # name -> builder, each builder takes
                                                      # (*, data_seed, root, inputs) -> Dataset
    default_data_root(), prepare_data_root(root, source)

Synthetic sets are generated in process from ``data_seed`` (nothing on disk); image sets are read
from ``<root>/MNIST/raw`` and ``<root>/FashionMNIST/raw`` and validated before torchvision sees them.
Every call returns fresh tensors, so a caller may modify them in place without affecting others.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from plasticity import PlasticityError
from plasticity.data import images, synthetic
from plasticity.data.dataset import Dataset


# prepare.py is imported lazily, so that `python -m plasticity.data.prepare` does not find it
# already imported (runpy warns about that).
def default_data_root() -> Path:
    """$PLASTICITY_DATA, else ``<repo>/data`` in a checkout, else ``~/.cache/plasticity/data``."""
    from plasticity.data import prepare

    return prepare.default_data_root()


def prepare_data_root(root: Path | None = None, source: Path | None = None) -> Path:
    """Fill ``root`` with MNIST and Fashion-MNIST (see :mod:`plasticity.data.prepare`)."""
    from plasticity.data import prepare

    return prepare.prepare_data_root(root, source)


@functools.lru_cache(maxsize=32)
def _cached_synthetic(name: str, data_seed: int, inputs: str) -> Dataset:
    """The cached master copy of a synthetic set; never handed out (see :func:`_fresh`)."""
    return synthetic.make_synthetic(name, data_seed, inputs)


def _fresh(ds: Dataset) -> Dataset:
    """A copy of ``ds`` with cloned tensors."""
    return Dataset(
        ds.name,
        ds.x_train.clone(),
        ds.y_train.clone(),
        ds.x_test.clone(),
        ds.y_test.clone(),
        ds.n_classes,
    )


def _synthetic_builder(name: str) -> Callable[..., Dataset]:
    """Registry entry for synthetic task ``name`` (``root`` is accepted and ignored)."""

    def build(
        *, data_seed: int = 0, root: str | Path | None = None, inputs: str = "normal"
    ) -> Dataset:
        synthetic.check_inputs(inputs)
        return _fresh(_cached_synthetic(name, int(data_seed), inputs))

    build.__name__ = build.__qualname__ = f"build_{name}"
    build.__doc__ = f"Synthetic task {name!r}: x [10000, 10] float32, 2 classes (PAPER 4.1)."
    return build


def _image_builder(name: str) -> Callable[..., Dataset]:
    """Registry entry for image set ``name`` (``data_seed`` is ignored: the split is fixed)."""

    def build(
        *, data_seed: int = 0, root: str | Path | None = None, inputs: str = "normal"
    ) -> Dataset:
        synthetic.check_inputs(inputs)  # validated for uniformity; images ignore it
        return images.load_images(name, default_data_root() if root is None else Path(root))

    build.__name__ = build.__qualname__ = f"build_{name}"
    build.__doc__ = f"Image set {name!r}: x [n, 784] float32 in [0, 1], 10 classes."
    return build


DATASETS: dict[str, Callable[..., Dataset]] = {
    **{name: _synthetic_builder(name) for name in synthetic.LABELLERS},
    **{name: _image_builder(name) for name in images.IMAGE_SETS},
}


def load_dataset(
    name: str, *, data_seed: int = 0, root: str | Path | None = None, inputs: str = "normal"
) -> Dataset:
    """Load data set ``name`` (a key of DATASETS); raise PlasticityError if unknown or missing.

    ``data_seed`` picks the synthetic task and its points; ``root`` is the image data root
    (default :func:`default_data_root`); ``inputs`` is ``"normal"`` or ``"uniform"`` (synthetic only).
    """
    builder = DATASETS.get(name)
    if builder is None:
        raise PlasticityError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    return builder(data_seed=data_seed, root=root, inputs=inputs)


__all__ = [
    "DATASETS",
    "Dataset",
    "default_data_root",
    "load_dataset",
    "prepare_data_root",
]
