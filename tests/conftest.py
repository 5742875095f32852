"""Shared test setup: one intra-op thread (the test machines are small and shared)."""

import torch

torch.set_num_threads(1)
