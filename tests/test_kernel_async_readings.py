"""The asynchronous JAX engine under every execution reading equals the timed reference exactly:
counters (per layer too), prefetch counters, miss-policy and precision counters, resident sets,
occupancy, every pass time and the per-layer stall, for every (capacity, hardware, miss) of one
vmapped run; on random, synthetic and real traces, with lookahead 1 and 2, precision levels,
``Hardware.expert_us``, and the miss policies the kernel runs."""

from __future__ import annotations

import math

import pytest

from conftest import assert_async_row_equals_reference, random_trace
from specmd_jax.core import synthetic
from specmd_jax.kernels.asynchronous import ASYNC_POLICIES
from specmd_jax.core.miss import MissConfig, Precision
from specmd_jax.core.prefetch import PrefetchConfig, make_plan
from specmd_jax.run.asynchronous import run_async
from specmd_jax.reference.timed import simulate_timed
from specmd_jax.core.routing import RoutingConfig
from specmd_jax.core.timing import READINGS, Hardware, Reading

HWS = [Hardware(bandwidth_gbps=3.0, latency_us=5.0, decode_layer_us=80.0, prefill_layer_us=60.0, prefill_token_us=4.0),
       Hardware(bandwidth_gbps=0.5, latency_us=20.0, decode_layer_us=100.0),
       Hardware(bandwidth_gbps=math.inf, latency_us=0.0),
       Hardware(bandwidth_gbps=2.0, latency_us=5.0, expert_us=33.0)]
EXTRA = ("late", "pf_issued", "pf_resident", "pf_pending", "pf_arrived", "pf_dropped", "pf_useful", "pf_wasted",
         "dropped", "units_moved", "units_full", "exec_pairs", "bits_served")
NEW = [r for r in READINGS if r != Reading()]
THREE = Precision(levels=(("fp16", 16), ("int8", 8), ("int4", 4)))


def check(trace, policy, plan, caps, reading, hws=HWS, misses=None, precision=None):
    """One vmapped run (every plan x capacity x link x miss configuration) against the reference."""
    plans = plan if isinstance(plan, list) else [plan]
    r = run_async(trace, policy, caps, plans, hws, misses=misses, precision=precision, reading=reading)
    ms = misses or [MissConfig()]
    assert len(r.capacities) == len(plans) * len(caps) * len(hws) * len(ms)
    for b in range(len(r.capacities)):
        c, h, m = int(r.capacities[b]), r.hardware[b], ms[int(r.miss_index[b])]
        pl = plans[int(r.plan_index[b])]
        ref = simulate_timed(trace, policy, c, plan=pl, hardware=h, miss=m, precision=precision, reading=reading)
        ctx = (f"{trace.source} {policy} {reading.label} {pl.config.predictor} d{pl.config.depth} cap={c} "
               f"{h.bandwidth_gbps} GB/s {m.label()}")
        assert_async_row_equals_reference(r, b, ref, ctx, EXTRA)


def _random_case(policy, reading, seed):
    t = random_trace(L=3, E=6, K=2, P=12, max_tokens=3, seed=seed)
    plans = [make_plan(t, PrefetchConfig("oracle", "all")),
             make_plan(t, PrefetchConfig("oracle_degraded", "all", recall=0.6, precision=0.5, seed=seed, depth=2))]
    check(t, policy, plans, [0, 1, 2, 4, 7, 18], reading)


@pytest.mark.parametrize("reading", NEW, ids=lambda r: r.label)
@pytest.mark.parametrize("policy", ASYNC_POLICIES)
def test_random_traces(policy, reading):
    _random_case(policy, reading, 0)


@pytest.mark.slow
@pytest.mark.parametrize("reading", NEW, ids=lambda r: r.label)
@pytest.mark.parametrize("policy", ASYNC_POLICIES)
def test_random_traces_more_seeds(policy, reading):
    for seed in (1, 2, 3):
        _random_case(policy, reading, seed)


def _olmoe():
    return synthetic.generate("olmoe-1b-7b", num_requests=1, prompt_len=6, gen_len=8, seed=3, pred_noise=1.0)


@pytest.mark.parametrize("reading", [Reading("expert", "at_router", "running"), Reading("expert", "after_use", "visit")],
                         ids=lambda r: r.label)
def test_synthetic_olmoe_miss_policies_and_levels(reading):
    t = _olmoe()
    plan = make_plan(t, PrefetchConfig("recorded", "percentile"))
    drops = [MissConfig("drop_priority", rank_threshold=k) for k in (1, 3)]
    check(t, "ls", plan, [10, 51, 200], reading, hws=HWS[:2], misses=[MissConfig()] + drops)
    check(t, "lhu", plan, [40, 200], reading, hws=HWS[:1], precision=THREE,
          misses=[MissConfig("cascade", thresholds=(0.3, 0.1))])
    check(t, "lru", plan, [40, 200], reading, hws=HWS[:1], precision=THREE,
          misses=[MissConfig("fetch_priority", percentile=q) for q in (30, 70)])


@pytest.mark.slow
@pytest.mark.parametrize("reading", NEW, ids=lambda r: r.label)
def test_synthetic_olmoe_every_reading(reading):
    t = _olmoe()
    plan = make_plan(t, PrefetchConfig("recorded", "percentile"))
    for pol in ASYNC_POLICIES:
        check(t, pol, plan, [10, 51, 200], reading, hws=HWS[:2])
    for pol in ("ls", "lhu"):
        check(t, pol, plan, [40, 200], reading, hws=HWS[:1], precision=THREE,
              misses=[MissConfig("cascade", thresholds=(0.3, 0.1))])


@pytest.mark.parametrize("reading", [Reading("expert", "at_router", "running"), Reading("expert", "after_use", "visit")],
                         ids=lambda r: r.label)
def test_real_qwen3_slice(reading, qwen_excerpt):
    t = qwen_excerpt.slice_passes(0, 10)
    plan = make_plan(t, PrefetchConfig("oracle_degraded", "all", recall=0.8, precision=0.6, seed=0))
    for pol in ("lru", "ls"):
        check(t, pol, plan, [61, 307], reading, hws=HWS[:2])


def test_one_program_per_reading_and_what_the_kernel_refuses():
    t = random_trace(seed=0)
    plan = make_plan(t, PrefetchConfig("oracle", "all"))
    with pytest.raises(ValueError, match="substitute"):
        run_async(t, "lru", [4], plan, HWS[:1], misses=[MissConfig("substitute")], reading=Reading("expert"))
    with pytest.raises(ValueError, match="cache-aware routing"):
        run_async(t, "lru", [4], plan, HWS[:1], routing=[RoutingConfig("cache_aware", lam=1.0)],
                  reading=Reading("expert"))
    # a second sweep with other numbers (capacities, links) under the same reading reuses the program
    a = run_async(t, "ls", [3, 5], plan, HWS[:2], reading=Reading("expert", "at_router", "running"))
    b = run_async(t, "ls", [4, 9], plan, HWS[1:3], reading=Reading("expert", "at_router", "running"))
    assert a.compile_s > 0 and b.compile_s < 0.05
