"""The stack sweep path (``stack.run_stack`` / ``run_auto``) for ``lru``, ``ls`` and ``belady``:
exactly the reference simulator's counters, per-layer counts, resident sets and occupancy on
every capacity where it applies; the scan engine for the rest; and the dispatch rules."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import random_trace
from specmd_jax import reference
from specmd_jax.core import synthetic
from specmd_jax.core.counters import DEMAND_COUNTERS
from specmd_jax.run.mrc import lru_mrc
from specmd_jax.run.demand import run_configs
from specmd_jax.run.stack import exact_mask, run_auto, run_stack
from specmd_jax.core.steps import prepare_steps


def check_vs_reference(trace, policy, caps, mode, partitioned, engine="auto"):
    r = run_auto(trace, policy, caps, mode=mode, partitioned=partitioned, engine=engine)
    for i, c in enumerate(caps):
        ref = reference.simulate(trace, policy, int(c), mode=mode, partitioned=partitioned)
        ctx = f"{trace.source} {policy} {mode} partitioned={partitioned} cap={c}"
        assert dict(zip(DEMAND_COUNTERS, r.totals[i].tolist())) == ref.totals, ctx
        for k, name in enumerate(DEMAND_COUNTERS):
            assert r.per_layer[i, k].tolist() == ref.per_layer[name], f"{ctx} per-layer {name}"
        assert np.flatnonzero(r.resident[i]).tolist() == ref.resident, f"{ctx} resident"
        assert r.max_occupancy[i] == ref.max_occupancy, ctx
    return r


@pytest.mark.parametrize("partitioned", [False, True])
@pytest.mark.parametrize("mode", ["pinned", "sequential"])
@pytest.mark.parametrize("policy", ["lru", "ls", "belady"])
def test_auto_equals_reference_random(policy, mode, partitioned):
    """Every capacity 0..N+2: small ones go to the scan (bypass), the rest to the stack path."""
    for seed in range(5):
        t = random_trace(L=3, E=6, K=2, P=14, max_tokens=3, seed=seed)
        caps = list(range(0, t.shape.num_ids + 3))
        steps = prepare_steps(t, mode)
        ok = exact_mask(steps, caps, 3, partitioned)
        assert ok.any() and not ok.all()  # both engines take part
        check_vs_reference(t, policy, caps, mode, partitioned)


@pytest.mark.parametrize("policy", ["lru", "belady"])
@pytest.mark.parametrize("partitioned", [False, True])
def test_stack_equals_reference_synthetic_prefill(policy, partitioned):
    t = synthetic.generate("olmoe-1b-7b", num_requests=2, prompt_len=12, gen_len=16, seed=5)
    steps = prepare_steps(t, "pinned")
    caps = [c for c in (40, 64, 100, 128, 256, 512, 640, 768, 900, 1024, 2000) if exact_mask(steps, [c], 16, partitioned)[0]]
    assert len(caps) >= 3
    check_vs_reference(t, policy, caps, "pinned", partitioned, engine="stack")


@pytest.mark.parametrize("policy", ["lru", "belady"])
def test_stack_equals_reference_real_qwen_excerpt(qwen_excerpt, policy):
    q = qwen_excerpt
    check_vs_reference(q, policy, [128, 307, 1536, 6144], "pinned", False, engine="stack")
    check_vs_reference(q, policy, [61, 307], "sequential", False, engine="stack")


@pytest.mark.parametrize("policy", ["lru", "belady"])
def test_stack_equals_reference_real_mixtral(mixtral_trace, policy):
    m = mixtral_trace.slice_passes(0, 200)
    check_vs_reference(m, policy, [2, 12, 64, 128, 256], "sequential", False, engine="stack")
    check_vs_reference(m, policy, [16, 64, 128, 256], "pinned", True)


@pytest.mark.parametrize("policy", ["lru", "belady"])
def test_stack_equals_scan_many_capacities(policy):
    """All capacities 8..1024 of an OLMoE decode stream in one call: the stack path equals the
    vmapped scan engine on every counter and the final resident sets (and LRU the MRC)."""
    t = synthetic.decode_stream("olmoe-1b-7b", 48, seed=2)
    caps = np.arange(8, 1025)
    a = run_stack(t, caps, policy=policy)
    b = run_configs(t, policy, caps)
    assert np.array_equal(a.per_layer, b.per_layer)
    assert np.array_equal(a.resident, b.resident)
    assert np.array_equal(a.max_occupancy, b.max_occupancy)
    if policy == "belady":
        assert np.all(np.diff(a.totals[:, 1]) >= 0)  # OPT hits are monotone in capacity
        return
    m = lru_mrc(t).set_index("capacity_slots").loc[caps]
    assert np.array_equal(a.totals[:, 1], m["hits"].to_numpy())
    assert np.array_equal(a.totals[:, 3], m["collisions"].to_numpy())


def test_stack_rejects_inexact_capacities_and_other_policies():
    t = random_trace(L=2, E=4, K=2, P=6, max_tokens=3, seed=1)
    with pytest.raises(ValueError, match="below the largest visit demand"):
        run_stack(t, [1, 8])
    with pytest.raises(ValueError, match="serves"):
        run_auto(t, "fifo", [8], engine="stack")
    with pytest.raises(ValueError, match="serves"):
        run_stack(t, [8], policy="lfu")
    with pytest.raises(ValueError, match="engine must be"):
        run_auto(t, "lru", [8], engine="fast")


def test_auto_scan_for_other_policies_matches_scan():
    t = random_trace(L=2, E=4, K=2, P=6, max_tokens=3, seed=2)
    for pol in ("fifo", "sb"):
        a = run_auto(t, pol, [2, 5, 8])
        b = run_configs(t, pol, [2, 5, 8])
        assert np.array_equal(a.per_layer, b.per_layer)


def test_sweep_engines_give_identical_tables():
    import specmd_jax as sj
    t = synthetic.generate("olmoe-1b-7b", num_requests=1, prompt_len=8, gen_len=12, seed=4)
    a = sj.sweep(t, "ls", fractions=[0.01, 0.05, 0.25, 0.5])       # 1% bypasses: scan; rest: stack
    b = sj.sweep(t, "ls", fractions=[0.01, 0.05, 0.25, 0.5], engine="scan")
    pd.testing.assert_frame_equal(a.drop(columns="engine"), b.drop(columns="engine"))
    assert a["engine"].tolist() == ["jax-scan"] + ["jax-stack"] * 3 and set(b["engine"]) == {"jax-scan"}
    pd.testing.assert_frame_equal(a.attrs["per_layer"], b.attrs["per_layer"])
    assert np.array_equal(a.attrs["resident"], b.attrs["resident"])
