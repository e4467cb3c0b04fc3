"""spkdiff.allocator: freed activation-sized blocks are reused instead of being faulted in afresh.

40 MB blocks: above 32 MB glibc always serves a block by its own mmap (its dynamic threshold stops there); a
CIFAR-10 stage-1 batch has activations of that size (64 images x T_s 8 x 32 channels x 16 x 16 x 4 bytes = 16 MB,
and the saved tensors of the backward pass are larger)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

CHILD = """
import json, resource, numpy as np
from spkdiff.allocator import keep_freed_memory
applied = keep_freed_memory()
np.ones(10 << 20, dtype=np.float32)  # one 40 MB block first, so both arms start from a grown heap
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    np.ones(10 << 20, dtype=np.float32)  # allocate, touch and free 40 MB, as a training step does per activation
print(json.dumps({"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _child(setting: str) -> dict:
    env = dict(os.environ, SPKDIFF_MALLOC=setting)
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    default, kept = _child("default"), _child("")
    assert (default["applied"], kept["applied"]) == (False, True)
    # glibc's default: every block is a fresh mmap, faulted in again (by 4 KiB or transparent huge pages)
    assert default["faults"] >= 20 * 40 // 2
    assert kept["faults"] < default["faults"] / 20  # kept in the heap: the same pages serve again
