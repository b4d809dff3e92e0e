"""S3-FIFO and ARC: the reference's queue machines worked by hand, the JAX queue kernel exact
against the reference (both modes, both pools, random, synthetic and real traces), and the
size rule of the kernel equal to libCacheSim's float truncation. Hit counts against libCacheSim
itself are in tests/test_libcachesim.py."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import random_trace

import specmd_jax as sj
from specmd_jax import reference
from specmd_jax.core.counters import DEMAND_COUNTERS
from specmd_jax.core.trace import ModelShape, make_trace
from specmd_jax.kernels.queues import QUEUE_KERNEL_POLICIES, s3fifo_sizes
from specmd_jax.run.records import run_records


def _stream(seq, E=32):
    """One layer, one access per pass: each access its own visit (pinned = sequential)."""
    n = len(seq)
    return make_trace(ModelShape("hand", 1, E, 1, 1), [0] * n, [1] * n, [1] * n, range(n + 1), [[e] for e in seq])


def _both(t, policy, cap):
    ref = reference.simulate(t, policy, cap)
    k = run_records(t, policy, [cap])
    assert dict(zip(DEMAND_COUNTERS, k.totals[0].tolist())) == ref.totals
    assert np.flatnonzero(k.resident[0]).tolist() == ref.resident
    return ref


def test_arc_by_hand():
    """Capacity 2, accesses 0 1 0 2 0 1. 0, 1 enter T1; 0 hits and moves to T2; 2 misses: |T1| = 1 > p = 0,
    so T1's tail 1 goes to ghost B1 (T1: 2, T2: 0); 0 hits again. 1 is a B1 ghost hit: p rises to 1,
    and with |T1| = p replace takes T2's tail 0 (to B2); 1 enters T2. Residents 1 and 2, where LRU
    evicts 2 and keeps 0 and 1."""
    t = _stream([0, 1, 0, 2, 0, 1])
    r = _both(t, "arc", 2)
    assert r.totals["hits"] == 2 and r.totals["evictions"] == 2 and r.resident == [1, 2]
    assert reference.simulate(t, "lru", 2).resident == [0, 1]


def test_s3fifo_by_hand():
    """Capacity 20: small 2, main 18, ghost 18. 0 1 fill small; before the first eviction 2..19 go to
    main. 20: small's tail 0 (unused) is evicted to the ghost; 20 enters small. 0 again is a ghost
    hit: small's tail 1 goes, 0 enters main (19 > 18). 21: main is over its size, its tail 2 goes."""
    seq = list(range(20)) + [20, 0, 21]
    r = _both(_stream(seq), "s3fifo", 20)
    assert r.totals["hits"] == 0 and r.totals["evictions"] == 3
    assert r.resident == [0] + list(range(3, 22))


def test_s3fifo_promotes_from_small_and_needs_20_slots():
    """0 used twice in small is promoted to main at the next eviction, and 1 goes instead; under 20
    slots the small queue holds under 2 and nothing is admitted (libCacheSim's rule)."""
    seq = list(range(20)) + [0, 0, 20]
    r = _both(_stream(seq), "s3fifo", 20)
    assert r.totals["hits"] == 2 and r.resident == [0] + list(range(2, 21))
    small = _both(_stream(seq), "s3fifo", 19)
    assert small.totals["hits"] == 0 and small.totals["bypass"] == small.totals["misses"] == len(seq)


def test_s3fifo_sizes_equal_float_truncation():
    caps = np.arange(0, 200_000)
    small, ghost = s3fifo_sizes(caps)
    assert (small == [int(c * 0.1) for c in caps.tolist()]).all()
    assert (ghost == [int(c * 0.9) for c in caps.tolist()]).all()


CASES = {"random": [0, 1, 2, 3, 5, 9, 18], "synthetic": [10, 20, 51, 256], "excerpt": [48, 307, 1536]}


@pytest.mark.parametrize("policy", QUEUE_KERNEL_POLICIES)
@pytest.mark.parametrize("name", list(CASES))
def test_queue_kernel_equals_reference(traces, name, policy):
    t = traces[name]
    caps = CASES[name]
    for mode in ("pinned", "sequential"):
        for part in (False, True):
            r = run_records(t, policy, caps, mode=mode, partitioned=part)
            for i, c in enumerate(caps):
                ref = reference.simulate(t, policy, c, mode=mode, partitioned=part)
                ctx = (name, policy, mode, part, c)
                assert dict(zip(DEMAND_COUNTERS, r.totals[i].tolist())) == ref.totals, ctx
                for k, n in enumerate(DEMAND_COUNTERS):
                    assert r.per_layer[i, k].tolist() == ref.per_layer[n], ctx
                assert np.flatnonzero(r.resident[i]).tolist() == ref.resident, ctx
                assert r.max_occupancy[i] == ref.max_occupancy, ctx


@pytest.mark.parametrize("policy", QUEUE_KERNEL_POLICIES)
def test_queue_kernel_random_traces(policy):
    """Many small random traces, tight capacities: pinned visits where every list's entries can be
    demanded at once (the walks must skip them)."""
    caps = [1, 2, 3, 4, 6, 20, 25]
    for seed in range(4):
        t = random_trace(L=2, E=14, K=4, P=30, max_tokens=3, seed=seed)
        for part in (False, True):
            r = run_records(t, policy, caps, mode="pinned", partitioned=part)
            for i, c in enumerate(caps):
                ref = reference.simulate(t, policy, c, mode="pinned", partitioned=part)
                assert dict(zip(DEMAND_COUNTERS, r.totals[i].tolist())) == ref.totals, (seed, part, c)
                assert np.flatnonzero(r.resident[i]).tolist() == ref.resident, (seed, part, c)


def test_sweep_warns_when_s3fifo_caches_nothing(traces):
    t = traces["synthetic"]
    with pytest.warns(UserWarning, match=r"s3fifo: at capacities \[10\] the pool holds under 20"):
        df = sj.sweep(t, "s3fifo", capacities=[10, 64])
    assert df["hits"].iloc[0] == 0 and df["bypass"].iloc[0] == df["misses"].iloc[0] and df["hits"].iloc[1] > 0
    with pytest.warns(UserWarning, match="per-layer pools"):
        sj.sweep(t, "s3fifo", capacities=[64], partitioned=True)


def test_phase_columns_equal_the_reference(traces):
    """hit_rate_decode / hit_rate_prefill in the pinned table: every engine's decode hits equal the
    reference's, and the decode and prefill demands add up."""
    t = traces["excerpt"]
    caps = [48, 307, 1536]
    for pol, engine in [("lru", "auto"), ("lru", "scan"), ("lfu", "auto"), ("fifo", "keyed"), ("clock", "auto"),
                        ("s3fifo", "auto"), ("arc", "auto")]:
        df = sj.sweep(t, pol, capacities=caps, engine=engine)
        want = [reference.simulate(t, pol, c).decode_hits for c in caps]
        assert df["hits_decode"].tolist() == want, (pol, engine)
        pre = df["demands"] - df["demands_decode"]
        assert np.allclose(df["hit_rate_decode"] * df["demands_decode"] + df["hit_rate_prefill"] * pre, df["hits"])
    assert 0 < df["demands_decode"].iloc[0] < df["demands"].iloc[0]
    stack = sj.sweep(t, "lru", capacities=[1536, 3000], engine="stack")     # the stack path's own count
    assert stack["hits_decode"].tolist() == [reference.simulate(t, "lru", c).decode_hits for c in (1536, 3000)]
