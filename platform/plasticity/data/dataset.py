"""The data set record every loader returns (train/test split, tensors on the CPU)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, eq=False)
class Dataset:
    """A classification data set with a fixed train/test split, all tensors on the CPU.

    ``eq=False``: equality is identity (comparing tensors field by field is ambiguous).
    """

    name: str
    x_train: torch.Tensor  # [n_train, d] float32
    y_train: torch.Tensor  # [n_train] int64, values in [0, n_classes)
    x_test: torch.Tensor  # [n_test, d] float32
    y_test: torch.Tensor  # [n_test] int64
    n_classes: int

    def __post_init__(self) -> None:
        for x, y, split in (
            (self.x_train, self.y_train, "train"),
            (self.x_test, self.y_test, "test"),
        ):
            if x.dim() != 2 or y.dim() != 1 or x.shape[0] != y.shape[0]:
                raise ValueError(
                    f"Dataset {self.name!r} {split}: need x [n, d] and y [n], "
                    f"got {tuple(x.shape)} and {tuple(y.shape)}"
                )
        if self.x_train.shape[1] != self.x_test.shape[1]:
            raise ValueError(f"Dataset {self.name!r}: train and test dimensions differ")

    @property
    def dim(self) -> int:
        """Input dimension d."""
        return int(self.x_train.shape[1])

    @property
    def n_train(self) -> int:
        """Number of training points."""
        return int(self.x_train.shape[0])

    @property
    def n_test(self) -> int:
        """Number of test points."""
        return int(self.x_test.shape[0])
