"""The JAX asynchronous-prefetch engine (lru, ls, fifo) equals the timed reference exactly: every
counter, the prefetch counters, resident sets, occupancy, every pass time and the per-layer
stall, for all (capacity, hardware) pairs of one vmapped run, on random, synthetic and real
traces, with lookahead 1 and 2, slow, fast and free links."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest

from conftest import REAL, assert_async_row_equals_reference, random_trace, trace_named
from specmd_jax.core import synthetic
from specmd_jax.core.counters import DEMAND_COUNTERS
from specmd_jax.kernels.asynchronous import ASYNC_POLICIES
from specmd_jax.core.prefetch import PrefetchConfig, make_plan
from specmd_jax.run.asynchronous import run_async
from specmd_jax.reference.timed import simulate_timed
from specmd_jax.core.timing import VISIT_READING, Hardware

# this module was written for the whole-visit reading; the other readings: tests/test_*readings*.py
simulate_timed = functools.partial(simulate_timed, reading=VISIT_READING)
run_async = functools.partial(run_async, reading=VISIT_READING)

HWS = [Hardware(bandwidth_gbps=3.0, latency_us=5.0, decode_layer_us=80.0, prefill_layer_us=60.0, prefill_token_us=4.0),
       Hardware(bandwidth_gbps=0.5, latency_us=20.0, decode_layer_us=100.0),
       Hardware(bandwidth_gbps=math.inf, latency_us=0.0)]
PF = ("late", "pf_issued", "pf_resident", "pf_pending", "pf_arrived", "pf_dropped", "pf_useful", "pf_wasted")


def check(trace, policy, plan, caps, hws=HWS):
    r = run_async(trace, policy, caps, plan, hws)
    assert len(r.capacities) == len(caps) * len(hws)
    for b in range(len(r.capacities)):
        c, h = int(r.capacities[b]), r.hardware[b]
        ref = simulate_timed(trace, policy, c, plan=plan, hardware=h)
        ctx = f"{trace.source} {policy} {plan.config.predictor} d{plan.config.depth} cap={c} {h.bandwidth_gbps} GB/s"
        assert_async_row_equals_reference(r, b, ref, ctx, PF)
        ttft = np.mean(list(ref.ttft_ticks.values())) if ref.ttft_ticks else float("nan")
        np.testing.assert_allclose([r.ttft_ticks[b], r.tpot_ticks[b]], [ttft, ref.tpot_ticks], rtol=1e-12)


@pytest.mark.parametrize("policy", ASYNC_POLICIES)
def test_random_traces(policy):
    for seed in range(3):
        t = random_trace(L=3, E=6, K=2, P=12, max_tokens=3, seed=seed)
        for cfg in (PrefetchConfig("oracle", "all"), PrefetchConfig("reuse", "all"),
                    PrefetchConfig("oracle_degraded", "all", recall=0.6, precision=0.5, seed=seed, depth=2)):
            check(t, policy, make_plan(t, cfg), [0, 1, 2, 3, 5, 8, 18])


@pytest.mark.parametrize("policy", ASYNC_POLICIES)
def test_synthetic_olmoe_with_prefill(policy):
    t = synthetic.generate("olmoe-1b-7b", num_requests=2, prompt_len=6, gen_len=10, seed=3, pred_noise=1.0)
    for cfg in (PrefetchConfig("recorded", "percentile"),
                PrefetchConfig("oracle_degraded", "all", recall=0.7, precision=0.5, seed=1, depth=2)):
        check(t, policy, make_plan(t, cfg), [1, 10, 51, 256, 1024])


def test_real_qwen_excerpt(qwen_excerpt):
    q = qwen_excerpt.slice_passes(0, 10)
    check(q, "lru", make_plan(q, PrefetchConfig("reuse", "all")), [61, 307, 1536], HWS[:1])
    check(q, "ls", make_plan(q, PrefetchConfig("transition", "topk", overfetch=2.0), train=qwen_excerpt.slice_passes(10, 17)),
          [61, 307, 1536], HWS[:2])


def test_real_mixtral(mixtral_trace):
    m = mixtral_trace.slice_passes(0, 50)
    check(m, "fifo", make_plan(m, PrefetchConfig("oracle", "topk")), [2, 12, 64], HWS[::2])
    check(m, "ls", make_plan(m, PrefetchConfig("oracle_degraded", "all", recall=0.7, precision=0.5, depth=2)),
          [2, 12, 64], HWS[::2])


def test_least_stale_late_arrivals_of_several_layers():
    """Deep lookahead on a slow link: arrival batches hold prefetches for several layers, some
    already executed (late), which Least-Stale must file inside the current tier by layer."""
    slow = [Hardware(bandwidth_gbps=0.3, latency_us=50.0, decode_layer_us=10.0), HWS[0]]
    late = 0
    for seed in range(4):
        t = random_trace(L=4, E=5, K=2, P=20, max_tokens=3, seed=100 + seed)
        plan = make_plan(t, PrefetchConfig("oracle_degraded", "all", recall=0.5, precision=0.4, seed=seed, depth=3))
        check(t, "ls", plan, [1, 2, 4, 6, 9, 20], slow)
        late += simulate_timed(t, "ls", 6, plan=plan, hardware=slow[0]).totals["late"]
    assert late > 0  # the scenario is exercised


def test_overflow_is_an_error_and_other_policies_are_refused():
    t = synthetic.generate("olmoe-1b-7b", num_requests=1, prompt_len=16, gen_len=2, seed=0, pred_noise=1.0)
    plan = make_plan(t, PrefetchConfig("recorded", "topk"))
    with pytest.raises(ValueError, match="214 s"):     # ~300 copies of 12 MiB at 0.01 GB/s in one pass
        run_async(t, "lru", [16], plan, [Hardware(bandwidth_gbps=0.01)])
    with pytest.raises(ValueError, match="reference"):
        run_async(t, "lfu", [16], plan, [Hardware()])


@pytest.mark.parametrize("policy", ASYNC_POLICIES)
def test_drop_priority_thresholds_as_a_vmapped_axis(policy):
    """The drop_priority miss policy in the kernel: thresholds are data (one more config axis),
    and every (capacity, hardware, threshold) equals the reference exactly, dropped mass too."""
    from specmd_jax.core.miss import MissConfig
    cases = [(random_trace(L=3, E=6, K=3, P=12, max_tokens=3, seed=11), PrefetchConfig("reuse", "all")),
             (synthetic.generate("olmoe-1b-7b", num_requests=1, prompt_len=5, gen_len=8, seed=4, pred_noise=1.0),
              PrefetchConfig("recorded", "topk"))]
    for t, cfg in cases:
        plan = make_plan(t, cfg)
        misses = [MissConfig()] + [MissConfig("drop_priority", rank_threshold=d) for d in (0, 1, 2)]
        caps = [1, 3, 8, 40]
        r = run_async(t, policy, caps, plan, HWS[:2], misses=misses)
        assert len(r.capacities) == len(caps) * 2 * len(misses)
        for b in range(len(r.capacities)):
            c, h, miss = int(r.capacities[b]), r.hardware[b], misses[r.miss_index[b]]
            d = miss.rank_threshold if miss.policy == "drop_priority" else "-"
            ref = simulate_timed(t, policy, c, plan=plan, hardware=h, miss=miss)
            ctx = f"{t.source} {policy} cap={c} {h.bandwidth_gbps} GB/s drop>={d}"
            assert dict(zip(DEMAND_COUNTERS, r.totals[b].tolist())) == {k: ref.totals[k] for k in DEMAND_COUNTERS}, ctx
            got = {k: int(r.pf_totals[k][b]) for k in PF + ("dropped", "pairs_dropped", "units_dropped")}
            assert got == {k: ref.totals[k] for k in got}, ctx
            assert np.flatnonzero(r.resident[b]).tolist() == ref.resident, ctx
            assert r.pass_ticks[b].tolist() == ref.pass_ticks, ctx
        assert int(r.pf_totals["dropped"].sum()) > 0  # the thresholds bite


@pytest.mark.parametrize("policy", ASYNC_POLICIES)
def test_substitute_matches_the_reference(policy):
    """The substitute miss policy in the kernel (closest running gate score among the layer's
    residents, pinned and used) equals the reference, with prefetch warming the cache."""
    from specmd_jax.core.miss import MissConfig
    cases = [(random_trace(L=3, E=6, K=2, P=14, max_tokens=3, seed=12), PrefetchConfig("reuse", "all")),
             (random_trace(L=4, E=5, K=3, P=10, max_tokens=2, seed=13),
              PrefetchConfig("oracle_degraded", "all", recall=0.7, precision=0.5, seed=2, depth=2)),
             (synthetic.generate("olmoe-1b-7b", num_requests=1, prompt_len=5, gen_len=8, seed=4, pred_noise=1.0),
              PrefetchConfig("recorded", "percentile"))]
    for t, cfg in cases:
        plan = make_plan(t, cfg)
        caps = [1, 3, 8, 40]
        r = run_async(t, policy, caps, plan, HWS, misses=[MissConfig("substitute")])
        for b in range(len(r.capacities)):
            c, h = int(r.capacities[b]), r.hardware[b]
            ref = simulate_timed(t, policy, c, plan=plan, hardware=h, miss=MissConfig("substitute"))
            ctx = f"{t.source} {policy} cap={c} {h.bandwidth_gbps} GB/s"
            assert dict(zip(DEMAND_COUNTERS, r.totals[b].tolist())) == {k: ref.totals[k] for k in DEMAND_COUNTERS}, ctx
            keys = PF + ("dropped", "pairs_dropped", "units_dropped", "substituted", "pairs_substituted",
                         "units_substituted")
            assert {k: int(r.pf_totals[k][b]) for k in keys} == {k: ref.totals[k] for k in keys}, ctx
            assert np.flatnonzero(r.resident[b]).tolist() == ref.resident, ctx
            assert r.pass_ticks[b].tolist() == ref.pass_ticks, ctx
        assert int(r.pf_totals["substituted"].sum()) > 0


@pytest.mark.parametrize("policy", ["lru", "ls", "fifo"])
def test_precision_levels_and_level_choosing_miss_policies(policy):
    """Byte capacity at mixed precision (weighted ranks) with fetch_lowest, fetch_priority
    (percentiles vmapped), cascade (thresholds vmapped), drop_priority and substitute: every
    configuration equals the reference exactly, occupancy in units and quality proxies included."""
    from specmd_jax.core.miss import PRECISION_PRESETS, MissConfig
    prec = PRECISION_PRESETS["fp16-int8-int4-int2"]
    cases = [(random_trace(L=3, E=6, K=3, P=12, max_tokens=3, seed=21), PrefetchConfig("reuse", "all")),
             (synthetic.generate("olmoe-1b-7b", num_requests=1, prompt_len=5, gen_len=8, seed=6, pred_noise=1.0),
              PrefetchConfig("recorded", "topk"))]
    groups = [[MissConfig("fetch_lowest")],
              [MissConfig("fetch_priority", percentile=p, degrade_level=d) for p, d in ((60, 1), (30, 3), (100, 2))],
              [MissConfig("cascade", thresholds=th) for th in ((0.2, 0.1, 0.05), (0.5, 0.3, 0.01))],
              [MissConfig(), MissConfig("drop_priority", rank_threshold=1)],
              [MissConfig("substitute")]]
    keys = ("late", "pf_issued", "pf_resident", "pf_pending", "pf_arrived", "pf_dropped", "pf_useful", "pf_wasted",
            "dropped", "substituted", "units_full", "exec_pairs", "bits_served")
    for t, cfg in cases:
        plan = make_plan(t, cfg)
        caps = [0, 7, 64, 300]
        for misses in groups:
            r = run_async(t, policy, caps, plan, HWS, misses=misses, precision=prec)
            for b in range(len(r.capacities)):
                c, h, m = int(r.capacities[b]), r.hardware[b], misses[r.miss_index[b]]
                ref = simulate_timed(t, policy, c, plan=plan, hardware=h, miss=m, precision=prec)
                ctx = f"{t.source} {policy} cap={c} units {h.bandwidth_gbps} GB/s {m.label()}"
                assert dict(zip(DEMAND_COUNTERS, r.totals[b].tolist())) == {k: ref.totals[k] for k in DEMAND_COUNTERS}, ctx
                assert {k: int(r.pf_totals[k][b]) for k in keys} == {k: ref.totals[k] for k in keys}, ctx
                assert np.flatnonzero(r.resident[b]).tolist() == ref.resident, ctx
                assert r.max_occupancy[b] == ref.max_occupancy <= c, ctx
                assert r.pass_ticks[b].tolist() == ref.pass_ticks, ctx


def test_least_stale_at_mixed_precision_with_deep_lookahead():
    """Least-Stale's per-layer blocks in units: deep lookahead on a slow link (late arrivals of
    several layers), resident proposals re-marked, fetch_priority levels."""
    from specmd_jax.core.miss import PRECISION_PRESETS, MissConfig
    prec = PRECISION_PRESETS["int8-int4-int2"]
    slow = [Hardware(bandwidth_gbps=0.3, latency_us=50.0, decode_layer_us=10.0), HWS[0]]
    misses = [MissConfig("fetch_priority", percentile=p) for p in (0, 50)]
    for seed in range(2):
        t = random_trace(L=4, E=5, K=2, P=16, max_tokens=3, seed=200 + seed)
        plan = make_plan(t, PrefetchConfig("oracle_degraded", "all", recall=0.6, precision=0.5, seed=seed, depth=3))
        r = run_async(t, "ls", [1, 4, 9, 30], plan, slow, misses=misses, precision=prec)
        for b in range(len(r.capacities)):
            c, h, m = int(r.capacities[b]), r.hardware[b], misses[r.miss_index[b]]
            ref = simulate_timed(t, "ls", c, plan=plan, hardware=h, miss=m, precision=prec)
            ctx = f"seed {seed} cap={c} {h.bandwidth_gbps} GB/s {m.label()}"
            assert dict(zip(DEMAND_COUNTERS, r.totals[b].tolist())) == {k: ref.totals[k] for k in DEMAND_COUNTERS}, ctx
            assert np.flatnonzero(r.resident[b]).tolist() == ref.resident, ctx
            assert r.pass_ticks[b].tolist() == ref.pass_ticks, ctx
            assert int(r.pf_totals["bits_served"][b]) == ref.totals["bits_served"], ctx


def test_lhu_matches_the_reference():
    """HOBBIT's least-high-precision-used eviction in the kernel (weighted ranks even at one
    level; key: top-level uses since insertion, last use, id): arrivals enter under the residents
    with uses, a use re-files the executed experts by their new count; equal to the reference
    at one level (where it is LFU-like) and at four, with the level-choosing miss policies."""
    from specmd_jax.core.miss import PRECISION_PRESETS, MissConfig
    cases = [(random_trace(L=3, E=6, K=3, P=12, max_tokens=3, seed=31), PrefetchConfig("reuse", "all")),
             (synthetic.generate("olmoe-1b-7b", num_requests=1, prompt_len=5, gen_len=8, seed=6, pred_noise=1.0),
              PrefetchConfig("recorded", "topk"))]
    keys = ("late", "pf_issued", "pf_resident", "pf_pending", "pf_arrived", "pf_dropped", "pf_useful", "pf_wasted",
            "dropped", "substituted", "units_full", "exec_pairs", "bits_served")
    differs = False
    for t, cfg in cases:
        plan = make_plan(t, cfg)
        caps = [0, 7, 64, 300]
        for prec, misses in ((None, [MissConfig(), MissConfig("drop_priority", rank_threshold=1)]),
                             (None, [MissConfig("substitute")]),
                             (PRECISION_PRESETS["fp16-int8-int4-int2"], [MissConfig("cascade", thresholds=th)
                                                                       for th in ((0.2, 0.1, 0.05), (0.5, 0.3, 0.01))]),
                             (PRECISION_PRESETS["fp16-int8-int4-int2"], [MissConfig("fetch_lowest")])):
            r = run_async(t, "lhu", caps, plan, HWS[:2], misses=misses, precision=prec)
            if not differs:
                lru = run_async(t, "lru", caps, plan, HWS[:2], misses=misses, precision=prec)
                differs = not np.array_equal(r.totals, lru.totals)
            for b in range(len(r.capacities)):
                c, h, m = int(r.capacities[b]), r.hardware[b], misses[r.miss_index[b]]
                ref = simulate_timed(t, "lhu", c, plan=plan, hardware=h, miss=m, precision=prec)
                ctx = f"{t.source} lhu cap={c} {h.bandwidth_gbps} GB/s {m.label()} {prec}"
                assert dict(zip(DEMAND_COUNTERS, r.totals[b].tolist())) == {k: ref.totals[k] for k in DEMAND_COUNTERS}, ctx
                assert {k: int(r.pf_totals[k][b]) for k in keys} == {k: ref.totals[k] for k in keys}, ctx
                assert np.flatnonzero(r.resident[b]).tolist() == ref.resident, ctx
                assert r.max_occupancy[b] == ref.max_occupancy <= c, ctx
                assert r.pass_ticks[b].tolist() == ref.pass_ticks, ctx
    assert differs  # LHU is not LRU on these traces


def _mixed_precision_cases(name):
    from specmd_jax.core.miss import MissConfig
    if name == "qwen_excerpt":
        return (("lhu", [500, 4000], [MissConfig("cascade", thresholds=(0.3, 0.1, 0.05))]),
                ("fifo", [500, 4000], [MissConfig("fetch_lowest")]))
    return (("lhu", [16, 96], [MissConfig("fetch_priority", percentile=p) for p in (30, 80)]),
            ("ls", [16, 96], [MissConfig("cascade", thresholds=(0.4, 0.2, 0.1))]),
            ("lru", [16, 96], [MissConfig("substitute")]))


@pytest.mark.parametrize("name", ["qwen_excerpt", pytest.param("mixtral", marks=REAL)])
def test_real_traces_at_mixed_precision_with_lhu(request, name):
    """The miss/precision dimensions on real routing: byte capacity at four levels, fetch_priority
    percentiles and cascade thresholds vmapped, LHU and Least-Stale, equal to the reference."""
    from specmd_jax.core.miss import PRECISION_PRESETS
    prec = PRECISION_PRESETS["fp16-int8-int4-int2"]
    t = trace_named(request, name).slice_passes(0, 6 if name == "qwen_excerpt" else 30)
    for pol, caps, misses in _mixed_precision_cases(name):
        plan = make_plan(t, PrefetchConfig("reuse", "all"))
        r = run_async(t, pol, caps, plan, HWS[1:2], misses=misses, precision=prec)
        for b in range(len(r.capacities)):
            c, mc = int(r.capacities[b]), misses[r.miss_index[b]]
            ref = simulate_timed(t, pol, c, plan=plan, hardware=HWS[1], miss=mc, precision=prec)
            ctx = f"{t.source} {pol} cap={c} {mc.label()}"
            assert dict(zip(DEMAND_COUNTERS, r.totals[b].tolist())) == {k: ref.totals[k] for k in DEMAND_COUNTERS}, ctx
            for k in ("late", "pf_wasted", "units_full", "bits_served", "units_moved"):
                assert int(r.pf_totals[k][b]) == ref.totals[k], f"{ctx} {k}"
            assert np.flatnonzero(r.resident[b]).tolist() == ref.resident, ctx
            assert r.pass_ticks[b].tolist() == ref.pass_ticks, ctx


def test_drop_at_or_above_k_is_fetch_in_the_kernel():
    """drop_priority with a threshold >= K never drops (every router rank is < K): the kernel's
    rows equal its fetch rows, at one level and at four."""
    from specmd_jax.core.miss import PRECISION_PRESETS, MissConfig
    t = synthetic.generate("olmoe-1b-7b", num_requests=1, prompt_len=5, gen_len=8, seed=12, pred_noise=1.0)
    K = t.shape.top_k
    plan = make_plan(t, PrefetchConfig("recorded", "topk"))
    for prec in (None, PRECISION_PRESETS["fp16-int8-int4-int2"]):
        misses = [MissConfig(), MissConfig("drop_priority", rank_threshold=K), MissConfig("drop_priority", rank_threshold=1)]
        r = run_async(t, "lru", [10, 100] if prec is None else [40, 400], plan, HWS[:2], misses=misses, precision=prec)
        f, k, one = (r.miss_index == i for i in range(3))
        assert np.array_equal(r.totals[f], r.totals[k]) and np.array_equal(r.pass_ticks[f], r.pass_ticks[k])
        assert (r.pf_totals["dropped"][k] == 0).all() and (r.pf_totals["dropped"][one] > 0).any()
