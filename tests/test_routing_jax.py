"""Cache-aware routing in the asynchronous JAX engine equals the timed reference exactly: each
configuration re-routes every token against its own cache, with ``lam`` a vmapped number next to
capacities, hardware and miss thresholds; on traces with logits (sets change, dual-logit weights)
and without (candidates only: the order changes, so drop_priority ranks do)."""

from __future__ import annotations

import functools
import numpy as np
import pandas as pd
import pytest

from specmd_jax.api import timed as api_timed
from specmd_jax.core import synthetic
from specmd_jax.core.counters import DEMAND_COUNTERS
from specmd_jax.core.miss import PRECISION_PRESETS, MissConfig
from specmd_jax.core.prefetch import PrefetchConfig, PrefetchPlan, make_plan
from specmd_jax.run.asynchronous import run_async
from specmd_jax.reference.timed import simulate_timed
from specmd_jax.core.routing import RoutingConfig
from specmd_jax.core.timing import VISIT_READING, Hardware

# this module was written for the whole-visit reading; the other readings: tests/test_*readings*.py
simulate_timed = functools.partial(simulate_timed, reading=VISIT_READING)
run_async = functools.partial(run_async, reading=VISIT_READING)
sweep_prefetch = functools.partial(api_timed.sweep_timed, reading=VISIT_READING.label)

HWS = [Hardware(bandwidth_gbps=3.0, latency_us=5.0, decode_layer_us=80.0, prefill_layer_us=60.0, prefill_token_us=4.0),
       Hardware(bandwidth_gbps=0.5, latency_us=20.0, decode_layer_us=100.0)]
KEYS = ("late", "pf_issued", "pf_resident", "pf_pending", "pf_arrived", "pf_dropped", "pf_useful", "pf_wasted",
        "dropped", "pairs_dropped", "units_dropped", "units_full", "exec_pairs", "bits_served", "units_moved",
        "tokens_changed", "pairs_rerouted", "units_rerouted")


def check(t, policy, plan, caps, misses, routs, prec=None, hws=HWS):
    r = run_async(t, policy, caps, plan, hws, misses=misses, routing=routs, precision=prec)
    assert len(r.capacities) == len(caps) * len(hws) * len(misses) * len(routs)
    for b in range(len(r.capacities)):
        c, h = int(r.capacities[b]), r.hardware[b]
        m, rc = misses[r.miss_index[b]], routs[r.routing_index[b]]
        ref = simulate_timed(t, policy, c, plan=plan, hardware=h, miss=m, routing=rc, precision=prec)
        ctx = f"{t.source} {policy} cap={c} {h.bandwidth_gbps} GB/s {m.label()} {rc.label(t)}"
        assert dict(zip(DEMAND_COUNTERS, r.totals[b].tolist())) == {k: ref.totals[k] for k in DEMAND_COUNTERS}, ctx
        for k, name in enumerate(DEMAND_COUNTERS):
            assert r.per_layer[b, k].tolist() == ref.per_layer[name], f"{ctx} per-layer {name}"
        assert {k: int(r.pf_totals[k][b]) for k in KEYS} == {k: ref.totals[k] for k in KEYS}, ctx
        assert np.flatnonzero(r.resident[b]).tolist() == ref.resident, ctx
        assert r.max_occupancy[b] == ref.max_occupancy, ctx
        assert r.pass_ticks[b].tolist() == ref.pass_ticks, ctx
    return r


def _olmoe(seed=7):
    return synthetic.generate("olmoe-1b-7b", num_requests=1, prompt_len=6, gen_len=10, seed=seed, pred_noise=1.0,
                              with_logits=True)


@pytest.mark.parametrize("policy", ["lru", "ls", "fifo"])
def test_cache_aware_routing_matches_the_reference(policy):
    t = _olmoe()
    routs = [RoutingConfig(), RoutingConfig("cache_aware", 0.3), RoutingConfig("cache_aware", 2.0)]
    misses = [MissConfig(), MissConfig("drop_priority", rank_threshold=2)]
    none = PrefetchPlan(ids=np.full((t.num_visits, 1), -1, np.int32), config=PrefetchConfig(), source=t.source)
    for plan in (none, make_plan(t, PrefetchConfig("recorded", "topk"))):
        r = check(t, policy, plan, [0, 20, 128, 300], misses, routs)
        changed = r.pf_totals["tokens_changed"]
        assert changed[r.routing_index == 0].sum() == 0
        assert changed[r.routing_index == 2].sum() > 0  # the strong bias reroutes tokens


def test_routing_at_mixed_precision_with_level_choosing_misses():
    t = _olmoe(seed=8)
    prec = PRECISION_PRESETS["fp16-int8-int4-int2"]
    plan = make_plan(t, PrefetchConfig("recorded", "topk"))
    routs = [RoutingConfig("cache_aware", 0.5), RoutingConfig("cache_aware", 3.0)]
    for misses in ([MissConfig("fetch_priority", percentile=p, degrade_level=2) for p in (40, 90)],
                   [MissConfig("cascade", thresholds=(0.2, 0.1, 0.05))], [MissConfig("fetch_lowest")]):
        check(t, "lru", plan, [7, 64, 300], misses, routs, prec=prec, hws=HWS[:1])


def test_candidates_only_real_trace(qwen_excerpt):
    """Qwen3 has no logits: only the recorded candidates compete, so no set changes, but the
    re-ranked order moves drop_priority's decisions."""
    q = qwen_excerpt.slice_passes(0, 6)
    routs = [RoutingConfig(), RoutingConfig("cache_aware", 1.0), RoutingConfig("cache_aware", 20.0)]
    r = check(q, "ls", make_plan(q, PrefetchConfig("reuse", "all")), [40, 400],
              [MissConfig("drop_priority", rank_threshold=2)], routs, hws=HWS[1:])
    assert r.pf_totals["tokens_changed"].sum() == 0
    dropped = r.pf_totals["dropped"].reshape(-1, len(routs))
    assert (dropped[:, 2] != dropped[:, 0]).any()  # the re-ranked order moves the drops


def test_lam_zero_is_the_standard_run_and_refusals():
    t = _olmoe(seed=9)
    plan = make_plan(t, PrefetchConfig("recorded", "topk"))
    a = run_async(t, "ls", [30, 200], plan, HWS)
    b = run_async(t, "ls", [30, 200], plan, HWS, routing=[RoutingConfig("cache_aware", 0.0)])
    assert np.array_equal(a.totals, b.totals) and np.array_equal(a.pass_ticks, b.pass_ticks)
    assert all(np.array_equal(a.pf_totals[k], b.pf_totals[k]) for k in a.pf_totals)
    with pytest.raises(ValueError, match="substitute"):
        run_async(t, "lru", [30], plan, HWS, misses=[MissConfig("substitute")],
                  routing=[RoutingConfig("cache_aware", 1.0)])
    with pytest.raises(TypeError, match="RoutingConfig"):
        run_async(t, "lru", [30], plan, HWS, routing=[0.5])


def test_sweep_prefetch_routing_list_one_program_equals_reference():
    """``sweep_prefetch(routing=[...])``: lam is one more vmapped axis on the asynchronous JAX
    engine, and the whole table (counters, times, proxies) equals the reference engine's."""
    t = _olmoe(seed=10)
    routs = [RoutingConfig(), RoutingConfig("cache_aware", 0.5), RoutingConfig("cache_aware", 2.0)]
    kw = dict(capacities=[40, 200], prefetch=PrefetchConfig("recorded", "topk"), hardware=HWS[:1],
              miss=[MissConfig(), MissConfig("drop_priority", rank_threshold=1)], routing=routs)
    a = sweep_prefetch(t, "lru", engine="jax", **kw)
    b = sweep_prefetch(t, "lru", engine="reference", **kw)
    assert set(a["engine"]) == {"jax-async"} and set(b["engine"]) == {"reference-async"} and len(a) == 12
    assert a["routing"].tolist() == b["routing"].tolist()
    assert a["routing"].iloc[:3].tolist() == ["standard", "cache_aware(lam=0.5)", "cache_aware(lam=2)"]
    cols = [c for c in b.columns if c != "engine"]
    pd.testing.assert_frame_equal(a[cols], b[cols], check_dtype=False)
    assert (a["proxy_tokens_rerouted"][a["routing"] != "standard"] > 0).any()
