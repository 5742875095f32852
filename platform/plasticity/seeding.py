"""Derived, explicit randomness: one root seed per run, one generator per consumer.

Seeds are keyed on *what* consumes them (``derive_seed(root, "evolution", gen, member)``), never on
which process or actor happens to run the work, so scheduling cannot change a result.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def derive_seed(root: int, *path: object) -> int:
    """A 63-bit seed from a root seed and a path of keys (stable across processes and runs)."""
    text = "/".join([str(int(root)), *(str(p) for p in path)])
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def torch_generator(root: int, *path: object, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch.Generator on ``device`` seeded by ``derive_seed(root, *path)``."""
    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(root, *path))
    return gen


def numpy_rng(root: int, *path: object) -> np.random.Generator:
    """A numpy Generator seeded by ``derive_seed(root, *path)``."""
    return np.random.default_rng(derive_seed(root, *path))
