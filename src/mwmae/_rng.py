"""Seed streams shared by the data pipeline, pretraining and fine-tuning.

Every random choice (clip order, crops, masks, subsets) draws from a generator seeded by
`derive_seed(run_seed, TAG, counters...)`, so a resumed run, or one on more ranks, makes the
same choices as an uninterrupted one.
"""

from __future__ import annotations

import numpy as np
import torch


def derive_seed(*values: int) -> int:
    """A 63-bit seed from a tuple of non-negative ints (NumPy SeedSequence hashing)."""
    state = np.random.SeedSequence([int(v) for v in values]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def torch_generator(*values: int) -> torch.Generator:
    """A CPU `torch.Generator` seeded by `derive_seed(*values)`."""
    return torch.Generator().manual_seed(derive_seed(*values))
