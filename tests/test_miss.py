"""Mixed precision and miss policies (specmd_jax.core.miss) in the timed reference: configuration
errors, hand-checked decisions, the reductions the issue names (drop-priority with r >= K is
fetch; one level makes fetch-lowest fetch and LHU LFU) and invariants (byte occupancy, pair
accounting, served bits) on random and synthetic traces, with and without prefetch."""

from __future__ import annotations

import functools
import math

import pandas as pd
import pytest

from conftest import random_trace
from specmd_jax.api import timed as api_timed
from specmd_jax.core import synthetic
from specmd_jax.core.miss import PRECISION_PRESETS, MissConfig, Precision, decide, proxy_rates
from specmd_jax.core.prefetch import PrefetchConfig, make_plan
from specmd_jax.reference.timed import simulate_timed
from specmd_jax.core.timing import VISIT_READING, Hardware

# this module was written for the whole-visit reading; the other readings: tests/test_*readings*.py
simulate_timed = functools.partial(simulate_timed, reading=VISIT_READING)
sweep_prefetch = functools.partial(api_timed.sweep_timed, reading=VISIT_READING.label)

HW = Hardware(bandwidth_gbps=0.5, latency_us=5.0, decode_layer_us=80.0, prefill_layer_us=60.0, prefill_token_us=4.0)
MIXED = PRECISION_PRESETS["int8-int4-int2"]
SCHEDULE = ("demands", "hits", "late", "misses", "collisions", "evictions", "bypass", "stall_ticks")


def same(a, b):
    return a.totals == b.totals and a.pass_ticks == b.pass_ticks and a.resident == b.resident


def test_precision_units_and_errors():
    p = PRECISION_PRESETS["fp16-int8-int4-int2"]
    assert p.units == (8, 4, 2, 1) and p.names[0] == "fp16"
    assert p.level_bytes(1600, 2) == 400 and p.unit_bytes(1600) == 200
    assert p.capacity_units(1000, 1600) == 5
    assert Precision().units == (1,)
    with pytest.raises(ValueError, match="strictly decreasing"):
        Precision((("a", 4), ("b", 8)))
    with pytest.raises(ValueError, match="unknown miss policy"):
        MissConfig("skip")
    with pytest.raises(ValueError, match="percentile"):
        MissConfig("fetch_priority", percentile=120)
    with pytest.raises(ValueError, match="descending"):
        MissConfig("cascade", thresholds=(0.1, 0.3))
    with pytest.raises(ValueError, match="equal-size"):
        simulate_timed(random_trace(seed=0), "random", 4, precision=MIXED)


def test_decisions_by_hand():
    demand = [10, 11, 12, 13, 14]
    score = {10: 900, 11: 50, 12: 300, 13: 120, 14: 40}
    rank = {10: 0, 11: 4, 12: 1, 13: 2, 14: 3}
    miss = [10, 11, 13, 14]

    def run(cfg, running=None, others=(), nlev=3):
        return decide(cfg, nlev, miss, demand, score, rank, running or {}, list(others), 1024)

    assert run(MissConfig("fetch")) == {g: ("fetch", 0) for g in miss}
    assert run(MissConfig("fetch_lowest")) == {g: ("fetch", 2) for g in miss}
    # 60 % of 5 demanded = 3 lowest by score: 14 (40), 11 (50), 13 (120)
    assert run(MissConfig("fetch_priority", percentile=60)) == {10: ("fetch", 0), 11: ("fetch", 1),
                                                                 13: ("fetch", 1), 14: ("fetch", 1)}
    # thresholds 0.2 (205 units) and 0.1 (102): 900 -> 0, 120 -> 1, 50 and 40 -> 2
    assert run(MissConfig("cascade", thresholds=(0.2, 0.1))) == {10: ("fetch", 0), 13: ("fetch", 1),
                                                                  11: ("fetch", 2), 14: ("fetch", 2)}
    assert run(MissConfig("cascade", thresholds=(0.2, 0.1, 0.05)), nlev=2)[11] == ("fetch", 1)  # clipped
    assert run(MissConfig("drop_priority", rank_threshold=3)) == {10: ("fetch", 0), 11: ("drop",),
                                                                   13: ("fetch", 0), 14: ("drop",)}
    running = {10: 100, 11: 7, 13: 30, 14: 0, 20: 25, 21: 5, 22: 95}
    assert run(MissConfig("substitute"), running, others=[20, 21, 22]) == {10: ("sub", 22), 11: ("sub", 21),
                                                                           13: ("sub", 20), 14: ("sub", 21)}
    assert run(MissConfig("substitute")) == {g: ("drop",) for g in miss}


def _traces():
    yield random_trace(L=3, E=6, K=2, P=14, max_tokens=3, seed=1)
    yield random_trace(L=4, E=5, K=3, P=10, max_tokens=2, seed=2)
    yield synthetic.generate("olmoe-1b-7b", num_requests=1, prompt_len=4, gen_len=6, seed=3, pred_noise=1.0)


@pytest.mark.parametrize("instant", [False, True])
def test_reductions(instant):
    for t in _traces():
        K = t.shape.top_k
        plan = make_plan(t, PrefetchConfig("oracle", "all"))
        for cap in (0, 2, 5, 9, 40):
            kw = dict(plan=plan, hardware=HW, instant_prefetch=instant)
            base = simulate_timed(t, "lru", cap, **kw)
            assert same(simulate_timed(t, "lru", cap, miss=MissConfig("drop_priority", rank_threshold=K), **kw), base)
            assert same(simulate_timed(t, "lru", cap, miss=MissConfig("fetch_lowest"), **kw), base)
            assert same(simulate_timed(t, "lru", cap, miss=MissConfig("cascade", thresholds=()), **kw), base)
            assert same(simulate_timed(t, "lru", cap, miss=MissConfig("fetch_priority", percentile=0),
                                       precision=MIXED, **kw),
                        simulate_timed(t, "lru", cap, precision=MIXED, **kw))
            assert same(simulate_timed(t, "lhu", cap, **kw), simulate_timed(t, "lfu", cap, **kw))


@pytest.mark.parametrize("policy", ["lru", "ls", "fifo", "lhu", "sb"])
def test_invariants_mixed_precision(policy):
    for t in _traces():
        plans = [None, make_plan(t, PrefetchConfig("oracle_degraded", "all", recall=0.7, precision=0.5, seed=1))]
        for plan in plans:
            for cfg in (MissConfig("fetch_lowest"), MissConfig("fetch_priority"), MissConfig("cascade"),
                        MissConfig("drop_priority", rank_threshold=1), MissConfig("substitute")):
                for cap in (1, 3, 8, 30):
                    r = simulate_timed(t, policy, cap, plan=plan, hardware=HW, precision=MIXED, miss=cfg)
                    tot = r.totals  # occupancy <= capacity is asserted inside every arrival batch
                    assert r.max_occupancy <= cap
                    assert tot["hits"] + tot["late"] + tot["misses"] == tot["demands"]
                    assert tot["pairs_served"] + tot["pairs_dropped"] + tot["pairs_substituted"] == tot["pairs"]
                    assert tot["pairs"] == t.experts.shape[0] * t.shape.top_k
                    assert tot["dropped"] + tot["substituted"] <= tot["misses"] + tot["late"]
                    rates = proxy_rates(tot)
                    for k, v in rates.items():
                        assert math.isnan(v) or (0 <= v <= (8 if k == "proxy_mean_bits" else 1)), (k, v)
                    if cfg.policy in ("fetch_lowest", "fetch_priority", "cascade"):
                        assert tot["dropped"] == tot["substituted"] == 0
                    if cfg.policy == "drop_priority":
                        assert tot["substituted"] == 0
                    if plan is None and cfg.policy == "fetch_lowest":
                        assert rates["proxy_mean_bits"] == 2 and tot["units_full"] == 0


def test_lower_precision_moves_fewer_bytes():
    """Without prefetch every fetched miss stalls its own transfer: fetching int2 instead of int8
    (same capacity in bytes, so 4x the experts fit) cannot stall longer on this trace, and the
    stall is exactly misses x the int2 transfer when the link is otherwise idle."""
    t = synthetic.generate("olmoe-1b-7b", num_requests=1, prompt_len=0, gen_len=12, seed=4)
    hw = Hardware(bandwidth_gbps=2.0, latency_us=0.0, decode_layer_us=1e4)
    for cap_int8 in (16, 64, 256):
        cap = cap_int8 * MIXED.units[0]
        hi = simulate_timed(t, "lru", cap, hardware=hw, precision=MIXED)
        lo = simulate_timed(t, "lru", cap, hardware=hw, precision=MIXED, miss=MissConfig("fetch_lowest"))
        x_lo = hw.transfer_ticks(MIXED.level_bytes(t.shape.expert_bytes, 2))
        assert lo.totals["stall_ticks"] == lo.totals["misses"] * x_lo
        assert lo.totals["misses"] <= hi.totals["misses"] and lo.totals["stall_ticks"] < hi.totals["stall_ticks"]


def test_substitute_serves_residents_only_and_pins_them():
    """Substitution never fetches: with no prefetch nothing is ever admitted, so an empty cache
    drops everything; with a warm cache (oracle prefetch, instant) substitutes appear."""
    t = random_trace(L=3, E=6, K=2, P=14, max_tokens=3, seed=5)
    cold = simulate_timed(t, "lru", 6, hardware=HW, miss=MissConfig("substitute"))
    assert cold.totals["substituted"] == 0 and cold.totals["dropped"] == cold.totals["misses"]
    assert cold.resident == [] and cold.totals["stall_ticks"] == 0
    plan = make_plan(t, PrefetchConfig("reuse", "all"))
    warm = simulate_timed(t, "lru", 6, plan=plan, instant_prefetch=True, hardware=HW, miss=MissConfig("substitute"))
    assert warm.totals["substituted"] > 0


def test_sweep_prefetch_surface():
    """sweep_prefetch takes the miss and precision dimensions: non-default ones run on the
    reference and report proxies; the default rows from the JAX engines report the exact
    trivial proxies (everything served as routed at full precision)."""
    t = synthetic.generate("olmoe-1b-7b", num_requests=1, prompt_len=4, gen_len=6, seed=2, pred_noise=1.0)
    pf = PrefetchConfig("recorded", "topk")
    hw = [Hardware()]
    base = sweep_prefetch(t, "lru", fractions=[0.05, 0.25], prefetch=pf, hardware=hw, engine="jax")
    assert set(base["engine"]) == {"jax-async"} and (base["proxy_mass_full_precision"] == 1).all()
    assert (base["proxy_mean_bits"] == 16).all() and (base["miss"] == "fetch").all()
    drop = sweep_prefetch(t, "lru", fractions=[0.05, 0.25], prefetch=pf, hardware=hw,
                             miss=MissConfig("drop_priority", rank_threshold=2))
    assert set(drop["engine"]) == {"reference-async"} and (drop["proxy_mass_dropped"] > 0).all()
    assert (drop["ttft_ms"] <= base["ttft_ms"]).all()
    mixed = sweep_prefetch(t, "lhu", fractions=[0.05], prefetch=pf, hardware=hw, precision=MIXED,
                              miss=MissConfig("fetch_lowest"))
    # 5 % of all expert bytes in int2 units (int8/int4/int2 of fp16-sized experts: 1/8 each)
    assert int(mixed["capacity_slots"].iloc[0]) == int(0.05 * t.shape.num_ids * 8)
    assert mixed["precision"].iloc[0] == "int8/int4/int2" and mixed["proxy_mean_bits"].iloc[0] < 8
    ref = simulate_timed(t, "lhu", int(mixed["capacity_slots"].iloc[0]), plan=make_plan(t, pf), hardware=hw[0],
                         precision=MIXED, miss=MissConfig("fetch_lowest"))
    assert int(mixed["misses"].iloc[0]) == ref.totals["misses"]
    assert mixed["bytes_moved"].iloc[0] == ref.totals["units_moved"] * MIXED.unit_bytes(t.shape.expert_bytes)


def test_drop_thresholds_vmapped_through_sweep_prefetch():
    """A list of drop_priority thresholds is one axis of one JAX program; rows equal the
    reference's, bytes moved included."""
    t = synthetic.generate("olmoe-1b-7b", num_requests=1, prompt_len=4, gen_len=6, seed=2, pred_noise=1.0)
    pf = PrefetchConfig("recorded", "topk")
    misses = [MissConfig()] + [MissConfig("drop_priority", rank_threshold=r) for r in (1, 2, 4)]
    kw = dict(fractions=[0.05, 0.25], prefetch=pf, hardware=[HW], miss=misses)
    j = sweep_prefetch(t, "ls", engine="jax", **kw)
    r = sweep_prefetch(t, "ls", engine="reference", **kw)
    assert set(j["engine"]) == {"jax-async"} and set(r["engine"]) == {"reference-async"} and len(j) == 8
    assert j["miss"].tolist() == r["miss"].tolist()
    cols = ["capacity_slots", "hits", "late", "misses", "collisions", "dropped", "ttft_ms", "tpot_ms", "bytes_moved",
            "proxy_served_as_routed", "proxy_mass_full_precision", "proxy_mass_dropped", "proxy_mean_bits"]
    pd.testing.assert_frame_equal(j[cols], r[cols], check_dtype=False)
    assert (j.loc[j["miss"] != "fetch", "proxy_mass_dropped"] > 0).all()
    ji = sweep_prefetch(t, "lru", timing="instant", engine="jax", **kw)
    ri = sweep_prefetch(t, "lru", timing="instant", engine="reference", **kw)
    assert set(ji["engine"]) == {"jax-instant"} and ji["miss"].tolist() == ri["miss"].tolist()
    pd.testing.assert_frame_equal(ji[cols], ri[cols], check_dtype=False)


def test_substitute_runs_on_the_async_kernel():
    t = synthetic.generate("olmoe-1b-7b", num_requests=1, prompt_len=4, gen_len=8, seed=5, pred_noise=1.0)
    kw = dict(fractions=[0.25, 0.5], prefetch=PrefetchConfig("recorded", "percentile"), hardware=[Hardware()],
              miss=MissConfig("substitute"))
    j = sweep_prefetch(t, "lru", engine="jax", **kw)
    r = sweep_prefetch(t, "lru", engine="reference", **kw)
    assert set(j["engine"]) == {"jax-async"} and set(r["engine"]) == {"reference-async"}
    cols = ["hits", "misses", "dropped", "substituted", "ttft_ms", "tpot_ms", "bytes_moved", "proxy_served_as_routed",
            "proxy_mass_full_precision", "proxy_mass_dropped", "proxy_mass_substituted", "proxy_mean_bits"]
    pd.testing.assert_frame_equal(j[cols], r[cols], check_dtype=False)
    assert (j["proxy_mass_substituted"] > 0).all()


def test_precision_and_percentiles_vmapped_through_sweep_prefetch():
    """Mixed precision with a list of fetch_priority percentiles runs as one JAX program (weighted
    ranks) and equals the reference row by row, bytes and proxies included."""
    t = synthetic.generate("olmoe-1b-7b", num_requests=1, prompt_len=4, gen_len=8, seed=8, pred_noise=1.0)
    misses = [MissConfig("fetch_priority", percentile=p) for p in (0, 40, 60, 100)]
    kw = dict(fractions=[0.05, 0.25], prefetch=PrefetchConfig("recorded", "topk"), hardware=[HW], miss=misses,
              precision=PRECISION_PRESETS["fp16-int8-int4-int2"])
    j = sweep_prefetch(t, "fifo", engine="jax", **kw)
    r = sweep_prefetch(t, "fifo", engine="reference", **kw)
    assert set(j["engine"]) == {"jax-async"} and set(r["engine"]) == {"reference-async"} and len(j) == 8
    cols = ["capacity_slots", "miss", "hits", "late", "misses", "evictions", "ttft_ms", "tpot_ms", "bytes_moved",
            "proxy_served_as_routed", "proxy_mass_full_precision", "proxy_mean_bits"]
    pd.testing.assert_frame_equal(j[cols], r[cols], check_dtype=False)
    bits = j.groupby("miss")["proxy_mean_bits"].mean()
    assert bits["fetch_priority(p0->L1)"] > bits["fetch_priority(p100->L1)"]
