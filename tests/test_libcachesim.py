"""Cross-checks against libCacheSim (C), the peer for classic policies.

Tie-breaks that make the policies comparable: libCacheSim processes accesses one at a time,
which is our ``sequential`` mode (one step per distinct expert of a visit, first-appearance
order). LRU and FIFO are then identical by construction. libCacheSim's LFU counts uses only
while cached (reset to 1 on insert) and breaks ties by least recent use: our ``lfu`` key
(uses since insert, last use, id). Belady evicts the farthest next access; ties only occur
among never-reused experts, where the choice cannot change the hit count. CLOCK is libCacheSim's
``Clock`` (1-bit): insert at the head with the bit clear, a hit sets it, eviction walks from the tail
clearing set bits and moving those entries to the head. S3FIFO and ARC are libCacheSim's own
(``reference/queues.py`` follows their C code, ARC's target size a double as there).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import REAL, trace_named

from specmd_jax.core import synthetic
from specmd_jax.study.peers import libcachesim_hits
from specmd_jax.run.demand import run_configs
from specmd_jax.run.records import run_records
from specmd_jax.core.trace import ModelShape, make_trace
from specmd_jax.core.steps import prepare_steps

import libcachesim  # noqa: F401  (a test dependency: a missing install fails loudly)


def single_stream_trace(n=3000, E=64, alpha=1.1, seed=0):
    """L=1, K=1: one access per step (a plain cache trace), Zipf popularity."""
    rng = np.random.default_rng(seed)
    w = 1.0 / np.arange(1, E + 1) ** alpha
    ids = rng.choice(E, n, p=w / w.sum())
    return make_trace(ModelShape("single", 1, E, 1, 1), np.zeros(n), np.ones(n), np.ones(n),
                      np.arange(n + 1), ids[:, None], source=f"zipf-stream(seed={seed})")


def _hits(t, policy, caps, mode):
    """Our hit counts: clock, s3fifo and arc on the record runner (the engine the registry gives them),
    the others on the scan."""
    if policy in ("clock", "s3fifo", "arc"):
        return run_records(t, policy, caps, mode=mode).totals[:, 1].tolist()
    return run_configs(t, policy, caps, mode=mode).totals[:, 1].tolist()


@pytest.mark.parametrize("policy", ["lru", "fifo", "lfu", "belady", "clock", "s3fifo", "arc"])
def test_single_access_stream(policy):
    t = single_stream_trace()
    # libCacheSim's S3FIFO aborts under 10 slots (an empty small queue); 10-19 admit nothing, as ours
    caps = [10, 16, 19, 20, 21, 32, 48] if policy == "s3fifo" else [1, 2, 4, 8, 16, 32, 48]
    for mode in ("pinned", "sequential"):  # identical when each visit has one access
        ours = _hits(t, policy, caps, mode)
        theirs = libcachesim_hits(prepare_steps(t, "sequential"), policy, caps)
        assert ours == theirs, (mode, ours, theirs)


FULL_STREAMS = {"olmoe": [16, 64, 128, 200, 512], "qwen_excerpt": [48, 307, 1536, 3000],
                "qwen": [48, 307, 1536, 3000]}


@pytest.mark.parametrize("name", ["olmoe", "qwen_excerpt", pytest.param("qwen", marks=REAL)])
@pytest.mark.parametrize("policy", ["lru", "fifo", "lfu", "belady", "clock", "s3fifo", "arc"])
def test_full_moe_streams_sequential(policy, request, name):
    t = synthetic.decode_stream("olmoe-1b-7b", 160, seed=2) if name == "olmoe" else trace_named(request, name)
    caps = FULL_STREAMS[name]
    ours = _hits(t, policy, caps, "sequential")
    theirs = libcachesim_hits(prepare_steps(t, "sequential"), policy, caps)
    assert ours == theirs, (t.source, ours, theirs)
