"""The JAX instant-prefetch engine equals the timed reference (``instant_prefetch=True``) exactly:
counters, per-layer counts, prefetch counters, final resident sets, occupancy and every pass
time, for lru / ls / fifo, many capacities at once, on random, synthetic and real traces."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest

from conftest import random_trace
from specmd_jax.core import synthetic
from specmd_jax.core.counters import DEMAND_COUNTERS
from specmd_jax.kernels.instant import PF_POLICIES
from specmd_jax.core.prefetch import PrefetchConfig, PrefetchPlan, make_plan
from specmd_jax.core.clock import pass_times as timing
from specmd_jax.run.instant import run_instant
from specmd_jax.reference.timed import simulate_timed
from specmd_jax.run.demand import run_configs
from specmd_jax.core.timing import VISIT_READING, Hardware

# this module was written for the whole-visit reading; the other readings: tests/test_*readings*.py
simulate_timed = functools.partial(simulate_timed, reading=VISIT_READING)
run_instant = functools.partial(run_instant, reading=VISIT_READING)

HW = Hardware(bandwidth_gbps=3.0, latency_us=5.0, decode_layer_us=80.0, prefill_layer_us=60.0, prefill_token_us=4.0)
PF_COUNTERS = ("pf_issued", "pf_resident", "pf_dropped", "pf_useful", "pf_wasted")


def check(trace, policy, plan, caps, hw=HW):
    r = run_instant(trace, policy, caps, plan)
    tm = timing(trace, r.pass_misses, hw)
    for i, c in enumerate(caps):
        ref = simulate_timed(trace, policy, int(c), plan=plan, hardware=hw, instant_prefetch=True)
        ctx = f"{trace.source} {policy} {plan.config.predictor}/{plan.config.selector} cap={c}"
        assert dict(zip(DEMAND_COUNTERS, r.totals[i].tolist())) == {k: ref.totals[k] for k in DEMAND_COUNTERS}, ctx
        for k, name in enumerate(DEMAND_COUNTERS):
            assert r.per_layer[i, k].tolist() == ref.per_layer[name], f"{ctx} per-layer {name}"
        assert {k: int(r.pf_totals[k][i]) for k in PF_COUNTERS} == {k: ref.totals[k] for k in PF_COUNTERS}, ctx
        assert np.flatnonzero(r.resident[i]).tolist() == ref.resident, ctx
        assert r.max_occupancy[i] == ref.max_occupancy, ctx
        assert tm["pass_ticks"][i].tolist() == ref.pass_ticks, ctx
        assert tm["stall_ticks"][i] == ref.totals["stall_ticks"], ctx
        ttft = np.mean(list(ref.ttft_ticks.values())) if ref.ttft_ticks else float("nan")
        np.testing.assert_allclose([tm["ttft_ticks"][i], tm["tpot_ticks"][i]], [ttft, ref.tpot_ticks], rtol=1e-12)
    return r


@pytest.mark.parametrize("policy", PF_POLICIES)
def test_random_traces(policy):
    caps = [0, 1, 2, 3, 5, 8, 12, 18]
    for seed in range(3):
        t = random_trace(L=3, E=6, K=2, P=12, max_tokens=3, seed=seed)
        for cfg in (PrefetchConfig("oracle", "all"), PrefetchConfig("reuse", "all"),
                    PrefetchConfig("oracle_degraded", "all", recall=0.6, precision=0.5, seed=seed)):
            check(t, policy, make_plan(t, cfg), caps)


@pytest.mark.parametrize("depth", [2, 3])
def test_least_stale_deeper_lookahead(depth):
    """Prefetches for several layers ahead sit in the current tier by layer: the per-layer
    counts place every entry exactly (random traces with prefill, and synthetic OLMoE)."""
    for seed in range(3):
        t = random_trace(L=4, E=5, K=2, P=12, max_tokens=3, seed=seed)
        for cfg in (PrefetchConfig("oracle", "all", depth=depth),
                    PrefetchConfig("oracle_degraded", "all", recall=0.7, precision=0.6, seed=seed, depth=depth)):
            check(t, "ls", make_plan(t, cfg), [0, 1, 2, 4, 7, 11, 20])
    s = synthetic.generate("olmoe-1b-7b", num_requests=2, prompt_len=6, gen_len=10, seed=3)
    check(s, "ls", make_plan(s, PrefetchConfig("oracle_degraded", "all", recall=0.8, precision=0.8, depth=depth)),
          [10, 51, 256, 1024])


@pytest.mark.parametrize("policy", PF_POLICIES)
def test_synthetic_olmoe_with_prefill_and_recorded_predictions(policy):
    t = synthetic.generate("olmoe-1b-7b", num_requests=2, prompt_len=6, gen_len=12, seed=3, pred_noise=1.0)
    for cfg in (PrefetchConfig("recorded", "topk"), PrefetchConfig("recorded", "percentile"),
                PrefetchConfig("oracle_degraded", "all", recall=0.7, precision=0.5, seed=1)):
        check(t, policy, make_plan(t, cfg), [4, 10, 51, 128, 256, 1024])


def test_real_qwen_excerpt(qwen_excerpt):
    q = qwen_excerpt.slice_passes(0, 12)
    check(q, "ls", make_plan(q, PrefetchConfig("reuse", "all")), [61, 307, 1536])


def test_real_mixtral(mixtral_trace):
    m = mixtral_trace.slice_passes(0, 60)
    for pol in ("lru", "ls"):
        check(m, pol, make_plan(m, PrefetchConfig("oracle", "topk")), [2, 12, 64, 128])


@pytest.mark.parametrize("policy", PF_POLICIES)
def test_empty_plan_is_the_demand_only_engine(policy):
    t = synthetic.generate("olmoe-1b-7b", num_requests=1, prompt_len=6, gen_len=12, seed=5)
    empty = PrefetchPlan(ids=np.full((t.num_visits, 1), -1, np.int32), config=PrefetchConfig(), source="")
    caps = [3, 10, 51, 256]
    a = run_instant(t, policy, caps, empty)
    b = run_configs(t, policy, caps)
    assert np.array_equal(a.per_layer, b.per_layer) and np.array_equal(a.resident, b.resident)
    assert all(int(a.pf_totals[k].sum()) == 0 for k in PF_COUNTERS)
    # demand-only times: stall = misses x transfer, for any hardware, from the same run
    for hw in (HW, Hardware(bandwidth_gbps=math.inf, latency_us=0.0)):
        tm = timing(t, a.pass_misses, hw)
        assert np.array_equal(tm["stall_ticks"], b.totals[:, 2] * hw.transfer_ticks(t.shape.expert_bytes))


def test_errors():
    t = synthetic.generate("olmoe-1b-7b", num_requests=1, prompt_len=0, gen_len=4, seed=5)
    plan = make_plan(t, PrefetchConfig("oracle", "all"))
    with pytest.raises(ValueError, match="reference"):
        run_instant(t, "belady", [10], plan)
    with pytest.raises(ValueError, match="visits"):
        run_instant(t.slice_passes(0, 2), "lru", [10], plan)
    dup = PrefetchPlan(ids=np.where(plan.ids >= 0, plan.ids, -1)[:, :1].repeat(2, axis=1), config=plan.config,
                       source="hand")
    with pytest.raises(ValueError, match="twice at visit"):  # the kernels would queue a repeat twice
        run_instant(t, "lru", [10], dup)


@pytest.mark.parametrize("policy", PF_POLICIES)
def test_drop_priority_thresholds_as_a_vmapped_axis(policy):
    """drop_priority in the instant kernel: thresholds are one more configuration axis, and
    every (capacity, threshold) equals the reference (counts, dropped mass, pass times)."""
    from specmd_jax.core.miss import MissConfig
    from specmd_jax.core.miss import NO_DROP
    t = synthetic.generate("olmoe-1b-7b", num_requests=1, prompt_len=5, gen_len=8, seed=4, pred_noise=1.0)
    plan = make_plan(t, PrefetchConfig("recorded", "topk"))
    drops, caps = [NO_DROP, 0, 2], [3, 40, 300]
    r = run_instant(t, policy, caps, plan, drop_ranks=drops)
    tm = timing(t, r.pass_misses, HW)
    assert len(r.drop_rank) == len(caps) * len(drops)
    for b, (c, d) in enumerate(zip(np.repeat(caps, len(drops)), r.drop_rank)):
        miss = MissConfig() if d == NO_DROP else MissConfig("drop_priority", rank_threshold=int(d))
        ref = simulate_timed(t, policy, int(c), plan=plan, hardware=HW, instant_prefetch=True, miss=miss)
        ctx = f"{policy} cap={c} drop>={d}"
        assert dict(zip(DEMAND_COUNTERS, r.totals[b].tolist())) == {k: ref.totals[k] for k in DEMAND_COUNTERS}, ctx
        got = {k: int(r.pf_totals[k][b]) for k in PF_COUNTERS + ("dropped", "pairs_dropped", "units_dropped")}
        assert got == {k: ref.totals[k] for k in got}, ctx
        assert np.flatnonzero(r.resident[b]).tolist() == ref.resident, ctx
        assert tm["pass_ticks"][b].tolist() == ref.pass_ticks, ctx
    assert int(r.pf_totals["dropped"].sum()) > 0
