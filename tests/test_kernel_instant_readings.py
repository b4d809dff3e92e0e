"""The JAX instant-prefetch engine under every execution reading (``specmd_jax.core.timing.READINGS``)
equals the timed reference (``simulate_timed(..., instant_prefetch=True, reading=...)``) exactly:
totals, per-layer counters, prefetch counters, final resident sets, largest occupancy and the
pass times derived from the per-pass misses, for lru / ls / fifo at many capacities, on random
traces, a synthetic OLMoE trace (recorded and degraded plans of depth 1 and 2, drop_priority
thresholds), hand plans proposing any layer, and a slice of the real Qwen3 trace."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import random_trace
from specmd_jax.core import synthetic
from specmd_jax.core.counters import DEMAND_COUNTERS
from specmd_jax.kernels.instant import PF_POLICIES
from specmd_jax.core.miss import MissConfig
from specmd_jax.core.prefetch import PrefetchConfig, PrefetchPlan, make_plan
from specmd_jax.core.clock import pass_times as timing
from specmd_jax.core.miss import NO_DROP
from specmd_jax.run.instant import run_instant
from specmd_jax.reference.timed import simulate_timed
from specmd_jax.core.timing import READINGS, Hardware, Reading

HW = Hardware(bandwidth_gbps=3.0, latency_us=5.0, decode_layer_us=80.0, prefill_layer_us=60.0, prefill_token_us=4.0)
HW_EXPERT = Hardware(bandwidth_gbps=7.0, latency_us=3.0, decode_layer_us=80.0, prefill_layer_us=60.0,
                     prefill_token_us=4.0, expert_us=13.7)  # a layer computes n x expert_us
PF_COUNTERS = ("pf_issued", "pf_resident", "pf_dropped", "pf_useful", "pf_wasted")
DROP_COUNTERS = ("dropped", "pairs_dropped", "units_dropped")
ALL = [(rd, pol) for rd in READINGS for pol in PF_POLICIES]
IDS = [f"{rd.label}-{pol}" for rd, pol in ALL]
CHUNK = 32  # one scan length for every small trace: a program compiled once serves all their seeds


def miss_of(d):
    return MissConfig() if d == NO_DROP else MissConfig("drop_priority", rank_threshold=int(d))


def padded(plan, Q):
    """``plan`` with its proposal rows padded to ``Q`` (so plans of several seeds share a program)."""
    ids = np.full((plan.ids.shape[0], Q), -1, np.int32)
    ids[:, : plan.ids.shape[1]] = plan.ids
    return PrefetchPlan(ids=ids, config=plan.config, source=plan.source)


def check(trace, policy, plans, caps, reading, drops=None, hws=(HW,), chunk=8192):
    """Run every (plan, capacity, threshold) in one compiled program and compare each with the
    reference (timed on every profile of ``hws``). Returns the result and the references of the
    first profile (configuration order)."""
    plans = list(plans)
    r = run_instant(trace, policy, caps, plans if len(plans) > 1 else plans[0], drop_ranks=drops, reading=reading,
                    chunk_steps=chunk)
    assert r.reading == reading.canonical and r.num_turns >= trace.num_visits
    tms = [timing(trace, r.pass_misses, hw, r.visit_demands) for hw in hws]
    D = len(drops) if drops is not None else 1
    refs = []
    pf_names = PF_COUNTERS + (("pf_pending",) if reading.prefetch_issue == "at_router" else ())
    for b in range(len(r.plan_index)):
        plan, c = plans[int(r.plan_index[b])], int(caps[(b // D) % len(caps)])
        d = int(r.drop_rank[b])
        ctx = f"{trace.source} {reading.label} {policy} plan={int(r.plan_index[b])} cap={c} drop>={d}"
        for hw, tm in zip(hws, tms):
            ref = simulate_timed(trace, policy, c, plan=plan, hardware=hw, instant_prefetch=True, reading=reading,
                                 miss=miss_of(d))
            if hw is hws[0]:
                refs.append(ref)
                assert dict(zip(DEMAND_COUNTERS, r.totals[b].tolist())) == {k: ref.totals[k] for k in DEMAND_COUNTERS}, ctx
                for k, name in enumerate(DEMAND_COUNTERS):
                    assert r.per_layer[b, k].tolist() == ref.per_layer[name], f"{ctx} per-layer {name}"
                got = {k: int(r.pf_totals[k][b]) for k in pf_names + DROP_COUNTERS}
                assert got == {k: ref.totals[k] for k in got}, ctx
                assert np.flatnonzero(r.resident[b]).tolist() == ref.resident, ctx
                assert r.max_occupancy[b] == ref.max_occupancy, ctx
            assert tm["pass_ticks"][b].tolist() == ref.pass_ticks, f"{ctx} {hw}"
            assert tm["stall_ticks"][b] == ref.totals["stall_ticks"], ctx
            ttft = np.mean(list(ref.ttft_ticks.values())) if ref.ttft_ticks else float("nan")
            np.testing.assert_allclose([tm["ttft_ticks"][b], tm["tpot_ticks"][b]], [ttft, ref.tpot_ticks], rtol=1e-12)
    return r, refs


def digest(r):
    return np.concatenate([r.totals.ravel(), r.per_layer.ravel(), r.pass_misses.ravel(), r.resident.ravel(),
                           r.max_occupancy, *(r.pf_totals[k] for k in PF_COUNTERS)])


@pytest.mark.parametrize("reading,policy", ALL, ids=IDS)
def test_random_traces(reading, policy):
    """Random traces with prefill and empty visits, capacities 0..18, two plans of depth 1 (the
    plan as a vmapped axis) and one of depth 2 (its own program under Least-Stale, whose program
    depth selects); times on a per-layer and a per-expert compute profile. Under
    ``execution=visit``, ``pin=running`` is the same program and numbers."""
    caps = [0, 1, 2, 3, 5, 8, 12, 18]
    for seed in range(3):
        t = random_trace(L=3, E=6, K=2, P=12, max_tokens=3, seed=seed)
        one = [padded(make_plan(t, PrefetchConfig("oracle", "all")), 12),
               padded(make_plan(t, PrefetchConfig("oracle_degraded", "all", recall=0.6, precision=0.5, seed=seed)), 12)]
        two = make_plan(t, PrefetchConfig("oracle_degraded", "all", recall=0.7, precision=0.6, seed=seed, depth=2))
        if policy == "ls":
            check(t, policy, one, caps, reading, hws=(HW, HW_EXPERT), chunk=CHUNK)
            check(t, policy, [padded(two, 12)], caps, reading, hws=(HW, HW_EXPERT), chunk=CHUNK)
        else:
            check(t, policy, one + [padded(two, 12)], caps, reading, hws=(HW, HW_EXPERT), chunk=CHUNK)
        if reading.execution == "visit" and seed == 0:
            moot = run_instant(t, policy, caps, one, reading=Reading("visit", reading.prefetch_issue, "running"),
                               chunk_steps=CHUNK)
            assert moot.reading == reading
            assert np.array_equal(digest(moot), digest(run_instant(t, policy, caps, one, reading=reading,
                                                                   chunk_steps=CHUNK)))


def test_the_readings_are_different_replays():
    """The reference's six readings give six different outcomes on the synthetic trace used below
    at a small cache (so the comparisons discriminate between the readings)."""
    t = synthetic.generate("olmoe-1b-7b", num_requests=1, prompt_len=6, gen_len=10, seed=3, pred_noise=1.0)
    plan = make_plan(t, PrefetchConfig("recorded", "topk"))
    for pol in PF_POLICIES:
        outs = set()
        for rd in READINGS:
            ref = simulate_timed(t, pol, 10, plan=plan, hardware=HW, instant_prefetch=True, reading=rd)
            outs.add((tuple(ref.totals[k] for k in DEMAND_COUNTERS + PF_COUNTERS), tuple(ref.resident)))
        assert len(outs) == len(READINGS), pol


@pytest.mark.parametrize("reading,policy", ALL, ids=IDS)
def test_synthetic_olmoe_with_drop_thresholds(reading, policy):
    """Synthetic OLMoE (prefill and decode), the recorded top-k plan and a degraded oracle of
    depth 2 (plans, capacities and drop_priority thresholds as vmapped axes; Least-Stale runs the
    depth-1 plan alone too, as depth selects its program)."""
    t = synthetic.generate("olmoe-1b-7b", num_requests=1, prompt_len=6, gen_len=10, seed=3, pred_noise=1.0)
    plans = [make_plan(t, PrefetchConfig("recorded", "topk")),
             make_plan(t, PrefetchConfig("oracle_degraded", "all", recall=0.8, precision=0.6, seed=2, depth=2))]
    caps, drops = [4, 51, 256], [NO_DROP, 1, 4]
    _, refs = check(t, policy, plans, caps, reading, drops, chunk=64)
    assert sum(ref.totals["dropped"] for ref in refs) > 0 and sum(ref.totals["pf_useful"] for ref in refs) > 0
    if policy == "ls":
        check(t, policy, plans[:1], caps, reading, drops, chunk=64)


@pytest.mark.parametrize("reading", READINGS, ids=[rd.label for rd in READINGS])
def test_hand_plans_proposing_any_layer(reading):
    """Proposals of the visit's own layer (at the router, one whose copy the turn just queued is
    ``pf_pending``; a dropped expert can be prefetched) and of any layer (Least-Stale places them
    in their layer's block even when the plan says depth 1), with drop_priority."""
    caps, drops = [0, 1, 2, 3, 5, 8, 12], [NO_DROP, 1]
    pending = 0
    for seed in (0, 2):  # demand width 5: one program per policy
        t = random_trace(L=3, E=5, K=2, P=8, max_tokens=3, seed=seed)
        rng = np.random.default_rng(100 + seed)
        E, L = t.shape.num_experts, t.shape.num_layers
        same = np.full((t.num_visits, 3), -1, np.int32)
        anyl = np.full((t.num_visits, 3), -1, np.int32)
        for s in range(t.num_visits):
            k = int(rng.integers(0, 4))
            same[s, :k] = rng.choice(np.arange((s % L) * E, (s % L + 1) * E), k, replace=False)
            anyl[s, :k] = rng.choice(L * E, k, replace=False)
        plans = [PrefetchPlan(ids=ids, config=PrefetchConfig("oracle", "all"), source="hand") for ids in (same, anyl)]
        for pol in PF_POLICIES:
            _, refs = check(t, pol, plans, caps, reading, drops, chunk=CHUNK)
            pending += sum(ref.totals["pf_pending"] for ref in refs)
    assert (pending > 0) == (reading.prefetch_issue == "at_router")


def test_real_qwen_slice(qwen_excerpt):
    """The first 12 passes of the real Qwen3 trace (a 28-token prefill, then decode; 48 layers,
    128 experts; the excerpt in tests/data) under every reading."""
    q = qwen_excerpt.slice_passes(0, 12)
    plan = make_plan(q, PrefetchConfig("reuse", "all"))
    for i, rd in enumerate(READINGS):
        check(q, PF_POLICIES[i % 3], [plan], [61, 192], rd)


def test_expert_us_timing_equals_the_reference():
    """With ``Hardware.expert_us`` a layer computes ``n x expert_us`` for its ``n`` demanded
    experts: the pass times from the per-pass misses equal the reference's (the counts default to
    the trace's recorded demand) and differ from the per-layer compute times."""
    t = synthetic.generate("olmoe-1b-7b", num_requests=2, prompt_len=5, gen_len=6, seed=4, pred_noise=1.0)
    plan = make_plan(t, PrefetchConfig("recorded", "topk"))
    rd = Reading("expert", "at_router", "running")
    r, refs = check(t, "lru", [plan], [4, 51, 256], rd, hws=(HW_EXPERT,))
    tm = timing(t, r.pass_misses, HW_EXPERT)
    assert np.array_equal(tm["pass_ticks"], np.array([ref.pass_ticks for ref in refs]))
    assert not np.array_equal(tm["pass_ticks"], timing(t, r.pass_misses, HW)["pass_ticks"])
    with pytest.raises(ValueError, match="one count per visit"):
        timing(t, r.pass_misses, HW_EXPERT, r.visit_demands[:-1])
