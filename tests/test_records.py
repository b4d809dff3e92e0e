"""The record kernel (dense per-expert records, victims by the key): exact against the reference for
every policy it runs, in both modes and pools, on random, synthetic and real traces, decay periods
and CLOCK's walk included; CLOCK worked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from specmd_jax import reference
from specmd_jax.core.counters import DEMAND_COUNTERS
from specmd_jax.core.trace import ModelShape, make_trace
from specmd_jax.kernels.records import RECORD_KERNEL_POLICIES
from specmd_jax.run.records import run_records

CASES = {"random": ([0, 2, 5, 9, 18], [0, 2, 3, 7, 1]), "synthetic": ([0, 10, 51, 256], [0, 3, 16, 2]),
         "excerpt": ([48, 307, 1536], [0, 5, 48])}


@pytest.mark.parametrize("policy", RECORD_KERNEL_POLICIES)
@pytest.mark.parametrize("name", list(CASES))
def test_record_kernel_equals_reference(traces, name, policy):
    t = traces[name]
    caps, decays = CASES[name]
    for mode in ("pinned", "sequential"):
        for part in (False, True):
            r = run_records(t, policy, caps, decays, mode=mode, partitioned=part)
            for i, (c, d) in enumerate(zip(caps, decays)):
                ref = reference.simulate(t, policy, c, mode=mode, partitioned=part, decay_period=d)
                ctx = (name, policy, mode, part, c, d)
                assert dict(zip(DEMAND_COUNTERS, r.totals[i].tolist())) == ref.totals, ctx
                for k, n in enumerate(DEMAND_COUNTERS):
                    assert r.per_layer[i, k].tolist() == ref.per_layer[n], ctx
                assert np.flatnonzero(r.resident[i]).tolist() == ref.resident, ctx
                assert r.max_occupancy[i] == ref.max_occupancy, ctx


def test_clock_by_hand():
    """One layer, 4 experts, capacity 2, accesses 0 1 1 0 2 1 (one per pass, so each a visit).
    0, 1 enter (queue tail..head: 0 1); 1 and 0 hit (both bits set); 2 misses: the walk clears 0 and
    moves it to the head (1 0), clears 1 and moves it (0 1), then evicts 0; 2 enters (1 2); 1 hits.
    Hits 3, one eviction. LRU evicts 1 at the 2 (0 was used later) and misses the last access."""
    seq = [0, 1, 1, 0, 2, 1]
    t = make_trace(ModelShape("hand", 1, 4, 1, 1), [0] * 6, [1] * 6, [1] * 6, range(7), [[e] for e in seq])
    r = reference.simulate(t, "clock", 2)
    assert r.totals["hits"] == 3 and r.totals["evictions"] == 1 and r.resident == [1, 2]
    lru = reference.simulate(t, "lru", 2)
    assert lru.totals["hits"] == 2 and lru.totals["evictions"] == 2
    k = run_records(t, "clock", [2])
    assert k.totals[0, 1] == 3 and np.flatnonzero(k.resident[0]).tolist() == [1, 2]


def test_lfu_decay_by_hand():
    """One layer, capacity 2, accesses 0 0 0 1 2 1 3: without decay 0 (3 uses) outlives 1 and 2; halving
    every 4 steps leaves 0 at 1 use, so at step 6 the least recent of the equal counts goes instead."""
    seq = [0, 0, 0, 1, 2, 1, 3]
    t = make_trace(ModelShape("hand", 1, 4, 1, 1), [0] * 7, [1] * 7, [1] * 7, range(8), [[e] for e in seq])
    never = reference.simulate(t, "lfu_decay", 2, decay_period=0)
    aged = reference.simulate(t, "lfu_decay", 2, decay_period=4)
    assert 0 in never.resident and 0 not in aged.resident
    k = run_records(t, "lfu_decay", [2, 2], [0, 4])
    assert [np.flatnonzero(x).tolist() for x in k.resident] == [never.resident, aged.resident]
