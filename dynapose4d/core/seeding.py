"""Random streams derived from a seed, in one place: every random generator the package seeds comes from here.

`rng(*words)` is numpy's Generator on a SeedSequence of the words (a seed, then stream and item numbers, mixed
by the SeedSequence rather than added). `torch_generator(seed)` is a CPU torch.Generator for the seed itself, and
`torch_generator(seed, stream, index)` the one of item `index` (a step, a DDP rank) of a numbered stream.

The streams below keep the arithmetic they were first written with: changing a rule changes that stream's random
draws, and with them the numbers in experiments/RESULTS.md. A new stream uses `rng(seed, <its own number>, ...)`.
"""

from __future__ import annotations

import numpy as np
import torch

STATIC_NOVEL_VIEWS = 1_000_003  # the static stage's novel-view cameras of step s: seed * 1_000_003 + s
DYNAMIC_FRAMES = 1009  # the dynamic stage's frame batches on DDP rank r: seed * 1009 + r
CAPE_POSES = 7919  # the cape stage's choice of posed query views: numpy seed + 7919
CAPE_TRAIN_OBJECTS, CAPE_EVAL_OBJECTS = 7, 11  # the CAPE render sets' objects: rng(seed, 7 | 11)
MP100_MIX = 99  # which pairs of a mixed CAPE training set come from MP-100: rng(seed, item, 99)


def rng(*words: int) -> np.random.Generator:
    """numpy's default Generator on the seed words (one word: that seed)."""
    return np.random.default_rng(words[0] if len(words) == 1 else list(words))


def torch_generator(seed: int, stream: int = 0, index: int = 0) -> torch.Generator:
    """A CPU torch.Generator seeded with `seed` (stream 0), or with seed * stream + index: item `index` of `stream`."""
    return torch.Generator().manual_seed(seed * stream + index if stream else seed)
