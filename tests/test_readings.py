"""Execution readings of the timed reference (``specmd_jax.core.timing.Reading``): today's reading
reproduced bit for bit, hand-checked tiny traces for each dimension, an independent cross-check
(per-expert execution pinning only the running expert, without prefetch, is the demand-only
reference's sequential mode), and the accounting identities under every reading."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import hand_plan, random_trace
from specmd_jax import reference
from specmd_jax.core.miss import MissConfig
from specmd_jax.core.prefetch import PrefetchConfig, make_plan
from specmd_jax.core.counters import TIMED_COUNTERS as COUNTERS
from specmd_jax.reference.timed import simulate_timed
from specmd_jax.core.timing import DEFAULT_READING, INSTANT, READINGS, VISIT_READING, Hardware, Reading, turn_share
from specmd_jax.core.trace import DECODE, PREFILL, ModelShape, make_trace

DATA = Path(__file__).resolve().parent / "data"
EXPERT_RUNNING = [Reading("expert", i, "running") for i in ("after_use", "at_router")]


def _trace(cells, L, E, K=1):
    """``cells[p][l]`` = the token rows (lists of K experts, rank order) of visit (p, l); a pass
    with more than one token is a prefill pass."""
    rows, off, toks = [], [0], []
    for p in cells:
        toks.append(max(len(c) for c in p))
        for c in p:
            rows.extend(c)
            off.append(len(rows))
    phase = [PREFILL if n > 1 else DECODE for n in toks]
    return make_trace(ModelShape("tiny", L, E, K, 10 ** 6), np.zeros(len(cells)), phase, toks, off,
                      np.array(rows).reshape(-1, K), None, source="hand")


# 10 ticks per copy (1 us latency, free bandwidth); layers compute nothing unless a test says so
COPY10 = Hardware(bandwidth_gbps=math.inf, latency_us=1.0, decode_layer_us=0.0, prefill_layer_us=0.0,
                  prefill_token_us=0.0)


# --------------------------------------------------------------------------- today's reading


def test_visit_reading_reproduces_the_recorded_baseline():
    """1,965 configurations (8 policies, 3 plans, 3 links, instant and asynchronous prefetch,
    drop/substitute/cascade at two precisions, cache-aware routing) recorded before the readings
    existed (``tests/data/make_timed_baseline.py``): every counter, per-layer count, resident set,
    pass time and TTFT equal under the whole-visit reading (named, and spelled out)."""
    sys.path.insert(0, str(DATA))
    import make_timed_baseline as mb
    lines = (DATA / "timed_baseline.csv").read_text().splitlines()
    assert "visit/after_use/visit" in lines[0]
    rows = lines[2:]
    n = 0
    for (key, t, kw), line in zip(mb.cases(), rows):
        pol = kw.pop("policy")
        reading = VISIT_READING if n % 2 else Reading("visit", "after_use", "visit")
        d = mb.digest(simulate_timed(t, pol, reading=reading, **kw))
        got = ",".join(str(v) for v in key) + "," + ",".join(str(d[k]) for k in COUNTERS + ("state_sha",))
        assert got == line, f"configuration {key} changed"
        n += 1
    assert n == len(rows) == 1965


# --------------------------------------------------------------------------- the Reading type


def test_reading_validation_and_labels():
    assert Reading().label == DEFAULT_READING.label == "expert/at_router/running"
    assert VISIT_READING.label == "visit/after_use/visit" and READINGS[0] == VISIT_READING
    assert READINGS[-1] == DEFAULT_READING
    assert Reading.parse("expert/at_router/running") == Reading("expert", "at_router", "running")
    for bad, name in ((("experts", "after_use", "visit"), "execution"), (("visit", "router", "visit"), "prefetch_issue"),
                      (("visit", "after_use", "expert"), "pin")):
        with pytest.raises(ValueError, match=name):
            Reading(*bad)
    with pytest.raises(ValueError, match="execution/prefetch_issue/pin"):
        Reading.parse("expert/at_router")
    assert len(READINGS) == 6 and Reading("visit", "at_router", "running") not in READINGS
    assert Reading("visit", "after_use", "running").canonical == VISIT_READING
    t = random_trace(seed=0)
    with pytest.raises(TypeError, match="Reading"):
        simulate_timed(t, "lru", 4, reading="expert")


def test_pin_changes_nothing_under_visit_execution():
    t = random_trace(seed=1)
    plan = make_plan(t, PrefetchConfig("oracle_degraded", "all", recall=0.8, precision=0.6, depth=2, seed=0))
    for issue in ("after_use", "at_router"):
        for pol in ("lru", "ls", "fifo"):
            a = simulate_timed(t, pol, 5, plan=plan, hardware=COPY10, reading=Reading("visit", issue, "visit"))
            b = simulate_timed(t, pol, 5, plan=plan, hardware=COPY10, reading=Reading("visit", issue, "running"))
            assert a == b


# --------------------------------------------------------------------------- execution = expert


def test_turn_shares_split_the_layer_evenly():
    assert [turn_share(31, 3, i) for i in range(3)] == [11, 10, 10]
    assert [turn_share(6, 3, i) for i in range(3)] == [2, 2, 2]
    assert turn_share(7, 0, 0) == 7  # an empty visit: one turn carries the layer
    hw = Hardware(decode_layer_us=2.0, expert_us=0.5)
    assert hw.layer_ticks(False, 1, 3) == 15 and Hardware(decode_layer_us=2.0).layer_ticks(False, 1, 3) == 20
    with pytest.raises(ValueError, match="expert_us"):
        Hardware(expert_us=-1.0)


def test_expert_execution_uses_experts_in_router_order():
    """Pass 0 (two tokens, K = 2) routes [3, 1] then [0, 3]: router order 3, 1, 0. Pass 1 needs
    two slots of a 3-slot LRU cache. Whole visits stamp 0, 1, 3 alike (lowest id evicted first:
    0 and 1 go); per-expert execution stamps 3, 1, 0 in that order (3 and 1 go)."""
    t = _trace([[[[3, 1], [0, 3]]], [[[4, 5]]]], L=1, E=6, K=2)
    assert simulate_timed(t, "lru", 3, reading=VISIT_READING).resident == [3, 4, 5]
    for rd in (Reading("expert", "after_use", "visit"), *EXPERT_RUNNING):
        assert simulate_timed(t, "lru", 3, reading=rd).resident == [0, 4, 5]
    assert simulate_timed(t, "lru", 3).resident == [0, 4, 5]  # the default reading is per expert
    # FIFO: whole visits insert 0, 1, 3 (ascending id); per expert 3, 1, 0
    assert simulate_timed(t, "fifo", 3, reading=VISIT_READING).resident == [3, 4, 5]
    assert simulate_timed(t, "fifo", 3, reading=Reading("expert", "after_use", "visit")).resident == [0, 4, 5]


def test_expert_turns_time_each_copy_and_share_of_compute():
    """Layer 0 of a two-token prefill demands 2 then 0 (both miss, 10 ticks each), layer compute
    31 ticks. Whole visit: both copies first (stall 20), then 31. Per expert: 2's copy (stall
    10), 16 ticks of compute, 0's copy (stall 10), 15 ticks: same total, different stalls."""
    t = _trace([[[[2], [0]]]], L=1, E=4)
    hw = Hardware(bandwidth_gbps=math.inf, latency_us=1.0, prefill_layer_us=3.1, prefill_token_us=0.0)
    v = simulate_timed(t, "lru", 4, hardware=hw, reading=VISIT_READING)
    e = simulate_timed(t, "lru", 4, hardware=hw, reading=Reading("expert", "after_use", "visit"))
    assert v.pass_ticks == e.pass_ticks == [20 + 31]
    assert v.totals["stall_ticks"] == e.totals["stall_ticks"] == 20
    # with expert_us the layer computes n x expert_us in both readings
    hw2 = Hardware(bandwidth_gbps=math.inf, latency_us=1.0, expert_us=0.7)
    assert simulate_timed(t, "lru", 4, hardware=hw2, reading=VISIT_READING).pass_ticks == [20 + 14]
    assert simulate_timed(t, "lru", 4, hardware=hw2, reading=Reading("expert", "after_use", "visit")).pass_ticks == [20 + 14]


def test_prefetch_copy_of_a_later_turn_is_a_useful_hit():
    """Layer 1 of a two-token prefill demands 5 then 6; 6 was prefetched at layer 0 (copy done at
    20). Whole visit: 6 is late (waited for) at layer 1's start (10). Per expert: 5 misses (its
    copy queues behind 6's until 30), 6's copy arrives in that batch as a prefetch, and 6's turn
    is a hit on a prefetched expert."""
    t = _trace([[[[0], [0]], [[1], [2]]]], L=2, E=4)
    plan = hand_plan(t, [[6], []])
    v = simulate_timed(t, "lru", 8, plan=plan, hardware=COPY10, reading=VISIT_READING)
    e = simulate_timed(t, "lru", 8, plan=plan, hardware=COPY10, reading=Reading("expert", "after_use", "visit"))
    assert (v.totals["hits"], v.totals["late"], v.totals["pf_useful"]) == (0, 1, 1)
    assert (e.totals["hits"], e.totals["late"], e.totals["pf_useful"]) == (1, 0, 1)
    assert v.pass_ticks == e.pass_ticks == [30]
    assert e.totals["pf_arrived"] == 1 and e.totals["pf_wasted"] == 0


# --------------------------------------------------------------------------- pin


def test_pin_running_lets_an_arrival_evict_an_upcoming_expert():
    """Capacity 2. Pass 0 (two tokens) loads 0 then 1. Pass 1 routes 2 then 0. Per expert with
    the running expert pinned: 2's copy evicts the least recent, 0, whose turn then misses (a
    collision) and evicts 1. With the visit pinned (either execution) 1 goes and 0 hits."""
    t = _trace([[[[0], [1]]], [[[2], [0]]]], L=1, E=4)
    for pol in ("lru", "fifo", "ls"):
        run = simulate_timed(t, pol, 2, reading=Reading("expert", "after_use", "running"))
        assert (run.totals["hits"], run.totals["misses"], run.totals["collisions"]) == (0, 4, 1), pol
        assert run.resident == [0, 2] and run.totals["evictions"] == 2
        for rd in (VISIT_READING, Reading("expert", "after_use", "visit")):
            pinned = simulate_timed(t, pol, 2, reading=rd)
            assert (pinned.totals["hits"], pinned.totals["collisions"]) == (1, 0), (pol, rd)
            assert pinned.resident == [0, 2] and pinned.totals["evictions"] == 1


# --------------------------------------------------------------------------- prefetch_issue


def test_at_router_prefetch_lands_between_expert_turns():
    """Layer 0 (two tokens) misses 0 then 1; the plan prefetches 6 for layer 1. After use: 6 is
    queued behind both demand copies (done at 30) and layer 1 (from 20) waits for it: late.
    At the router, per expert: 6 queues right after 0's copy (done at 20), 1's copy behind it
    (30), and 6 is resident when layer 1 starts: a hit. Under whole visits the router queues
    both demand copies first, so at_router changes nothing there."""
    t = _trace([[[[0], [1]], [[2], [2]]]], L=2, E=4)
    plan = hand_plan(t, [[6], []])

    def run(rd):
        r = simulate_timed(t, "lru", 8, plan=plan, hardware=COPY10, reading=rd)
        return r.totals["hits"], r.totals["late"], r.per_layer["stall_ticks"], r.pass_ticks

    assert run(Reading("expert", "after_use")) == (0, 1, [20, 10], [30])
    assert run(Reading("expert", "at_router")) == (1, 0, [30, 0], [30])
    assert run(Reading("visit", "after_use")) == run(Reading("visit", "at_router")) == (0, 1, [20, 10], [30])


def test_at_router_remark_protects_the_next_layer_under_least_stale_only():
    """Capacity 2, one expert per layer (ids: layer l = 2l, 2l + 1). Pass 0 loads 0, 2, 4 (0 is
    evicted by 4). Pass 1 demands 1, 2, 4; visit (1, 0) proposes 2, which is resident.
    At the router, Least-Stale re-marks 2 current before 1 arrives, so 1 evicts the stale 4:
    one collision (4 at layer 2). LRU ignores the re-mark and evicts 2 (least recent): 2 and
    then 4 collide. After use both evict 2 first and re-fetch it by prefetch: one collision
    each, so the issue point alone decides whether Least-Stale beats LRU here."""
    t = _trace([[[[0]], [[0]], [[0]]], [[[1]], [[0]], [[0]]]], L=3, E=2)
    plan = hand_plan(t, [[], [], [], [2], [], []])
    free = Hardware(bandwidth_gbps=math.inf, latency_us=0.0, decode_layer_us=1.0)

    def coll(pol, issue, inst):
        r = simulate_timed(t, pol, 2, plan=plan, hardware=free, instant_prefetch=inst,
                           reading=Reading("visit", issue))
        return r.totals["collisions"]

    for inst in (False, True):
        assert coll("ls", "at_router", inst) == 1 and coll("lru", "at_router", inst) == 2
        assert coll("ls", "after_use", inst) == coll("lru", "after_use", inst) == 1


# --------------------------------------------------------------------------- cross-checks


@pytest.mark.parametrize("policy", ["lru", "fifo", "lfu", "ls", "fld"])
def test_expert_running_without_prefetch_is_sequential_demand_only_replay(policy):
    """Per-expert execution with only the running expert pinned and no plan is exactly what a
    general cache simulator does (the demand-only reference's ``sequential`` mode, itself equal
    to libCacheSim): an independent implementation of the same replay."""
    for seed in range(5):
        t = random_trace(L=3, E=6, K=2, P=10, max_tokens=3, seed=seed)
        for c in (0, 1, 2, 4, 7, 12, 18):
            a = reference.simulate(t, policy, c, mode="sequential")
            for rd in EXPERT_RUNNING:
                b = simulate_timed(t, policy, c, reading=rd)
                assert {k: b.totals[k] for k in a.totals} == a.totals, (seed, c, rd.label)
                assert {k: b.per_layer[k] for k in a.per_layer} == a.per_layer
                assert b.resident == a.resident and b.max_occupancy == a.max_occupancy


@pytest.mark.parametrize("reading", READINGS, ids=lambda r: r.label)
def test_accounting_identities_under_every_reading(reading):
    slow = Hardware(bandwidth_gbps=0.5, latency_us=20.0, decode_layer_us=100.0)
    for seed in range(2):
        t = random_trace(L=3, E=6, K=2, P=10, max_tokens=3, seed=seed)
        plan = make_plan(t, PrefetchConfig("oracle_degraded", "all", recall=0.8, precision=0.8, depth=2, seed=1))
        for pol in ("lru", "ls", "fifo", "lfu", "belady", "sb", "fld", "random"):
            for c in (1, 3, 7, 12):
                for hw, inst in ((slow, False), (slow, True), (INSTANT, False)):
                    r = simulate_timed(t, pol, c, plan=plan, hardware=hw, instant_prefetch=inst, reading=reading)
                    T = r.totals
                    assert T["demands"] == T["hits"] + T["late"] + T["misses"]
                    assert T["pf_issued"] + T["pf_resident"] + T["pf_pending"] == plan.num_proposals
                    assert T["pf_arrived"] <= T["pf_issued"] and T["pf_dropped"] <= T["pf_arrived"]
                    assert T["pf_useful"] + T["pf_wasted"] <= T["pf_issued"]
                    assert T["collisions"] <= T["misses"] and r.max_occupancy <= c
                    compute = sum(t.shape.num_layers * hw.compute_ticks(ph == PREFILL, n)
                                  for ph, n in zip(t.pass_phase, t.pass_tokens))
                    assert sum(r.pass_ticks) == compute + T["stall_ticks"]


def test_belady_keeps_an_upcoming_expert_of_the_running_visit():
    """Per expert, running pinned: an expert whose turn has not come is needed *now* (next use =
    this visit), so Belady never prefers it as a victim over one needed later."""
    t = _trace([[[[0], [1]]], [[[2], [0]]], [[[1], [1]]]], L=1, E=4)
    r = simulate_timed(t, "belady", 2, reading=Reading("expert", "after_use", "running"))
    # pass 1: 2's copy evicts 1 (next use pass 2), not 0 (its turn is next), so 0 hits; pass 2's
    # miss on 1 then evicts 0 (never used again; ties with 2 go to the lower id)
    assert r.totals["collisions"] == 0 and r.per_layer["hits"] == [1] and r.resident == [1, 2]


# --------------------------------------------------------------------------- turns (the engines' steps)


def test_turns_follow_the_reference_router_order():
    """``prepare_turns``: one turn per visit, or one per expert in the reference's router order
    (empty visits keep one empty turn); the slot points at the expert in the visit's row."""
    from specmd_jax.core.turns import prepare_turns
    from specmd_jax.core.steps import prepare_steps
    for seed in range(4):
        t = random_trace(seed=seed)
        L, E = t.shape.num_layers, t.shape.num_experts
        st = prepare_steps(t)
        assert (prepare_turns(t, st, "visit").ids == st.ids).all()
        tu = prepare_turns(t, st, "expert")
        off, ex = t.cell_offsets.tolist(), t.experts.tolist()
        want = []
        for v in range(t.num_visits):
            order = list(dict.fromkeys((v % L) * E + e for r in range(off[v], off[v + 1]) for e in ex[r]))
            want += [(v, g, i, max(len(order), 1)) for i, g in enumerate(order)] or [(v, -1, 0, 1)]
        got = list(zip(tu.visit.tolist(), tu.ids[:, 0].tolist(), tu.index.tolist(), tu.count.tolist()))
        assert got == want
        ok = tu.slot >= 0
        assert (st.ids[tu.visit[ok], tu.slot[ok]] == tu.ids[ok, 0]).all() and (tu.ids[~ok, 0] == -1).all()
        assert tu.new_pass.sum() == t.num_passes and (tu.per_turn(st.ids, -1) == tu.ids).all()
        stack = np.arange(2 * st.num_steps * 3, dtype=np.int32).reshape(2, st.num_steps, 3)
        for issue, on in (("at_router", tu.first), ("after_use", tu.last)):
            pr = tu.proposals(stack, issue)
            assert (pr[:, on] == stack[:, tu.visit[on]]).all() and (pr[:, ~on] == -1).all()


# --------------------------------------------------------------------------- the API


def test_sweep_prefetch_runs_every_reading_and_labels_it():
    """Lists of readings are crossed; every engine gives the reference's numbers; the reading and
    the LRU cliff (capacity below one token cycle, L x K slots) label each row."""
    from specmd_jax.core import synthetic
    from specmd_jax.api import sweep_prefetch
    t = synthetic.generate("olmoe-1b-7b", num_requests=1, prompt_len=4, gen_len=6, seed=1, pred_noise=1.0)
    kw = dict(fractions=[0.01, 0.05, 0.25], prefetch=PrefetchConfig("recorded", "topk"), hardware=[COPY10],
              execution=["visit", "expert"], prefetch_issue=["after_use", "at_router"], pin="running")
    cols = ["hits", "late", "misses", "collisions", "evictions", "pf_useful", "ttft_ms", "tpot_ms"]
    for timing in ("async", "instant"):
        ref = sweep_prefetch(t, "ls", timing=timing, engine="reference", **kw)
        jx = sweep_prefetch(t, "ls", timing=timing, engine="jax", **kw)
        assert list(ref["reading"].unique()) == ["visit/after_use/running", "visit/at_router/running",
                                                 "expert/after_use/running", "expert/at_router/running"]
        assert (ref[["execution", "prefetch_issue", "pin"]].agg("/".join, axis=1) == ref["reading"]).all()
        assert ref[cols].equals(jx[cols]) and set(ref["engine"]) == {f"reference-{timing}"}
        assert set(jx["engine"]) <= {"jax-async", "jax-instant", f"reference-{timing}"}
        assert (ref["token_cycle_slots"] == 16 * 8).all()
        assert ref["below_token_cycle"].tolist() == [True, True, False] * 4   # 10, 51, 256 slots vs 128
    with pytest.raises(ValueError, match="execution must be one of"):
        sweep_prefetch(t, "ls", capacities=[8], execution="layer")
    sub = sweep_prefetch(t, "ls", capacities=[8], execution="expert", miss=MissConfig("substitute"), engine="jax",
                         prefetch=PrefetchConfig("recorded", "topk"))
    assert set(sub["engine"]) == {"reference-async"} and sub["substituted"].sum() > 0


def test_token_cycle_and_the_demand_only_table():
    import specmd_jax as sj
    t = random_trace(L=3, E=6, K=2, seed=0)
    assert sj.token_cycle(t) == {"slots": 6, "bytes": 600, "fraction": 6 / 18}
    df = sj.sweep(t, "lru", capacities=[4, 5, 6, 7])
    assert df["below_token_cycle"].tolist() == [True, True, False, False]


def test_substitute_per_expert_picks_a_stand_in_at_the_turn():
    """Substitute never fetches: layer 0's misses are dropped, layer 1 (ids 4..7) is filled by an
    instant prefetch of 4 and 5 from layer 0 of pass 0. Pass 1 routes 6 then 4 at layer 1: 6 is
    missing and its stand-in is the resident expert of layer 1 outside the visit's demand, 5,
    which runs in its place; 4 hits. Every reading agrees here."""
    t = _trace([[[[0], [0]], [[0], [1]]], [[[0], [0]], [[2], [0]]]], L=2, E=4)
    plan = hand_plan(t, [[4, 5], [], [], []])
    free = Hardware(bandwidth_gbps=math.inf, latency_us=0.0)
    for rd in (VISIT_READING, Reading("expert", "after_use", "visit"), Reading("expert", "after_use", "running")):
        r = simulate_timed(t, "lru", 3, plan=plan, hardware=free, miss=MissConfig("substitute"), reading=rd)
        assert (r.totals["substituted"], r.totals["hits"], r.totals["misses"], r.totals["dropped"]) == (1, 3, 3, 2)
        assert r.totals["pairs_substituted"] == 1 and r.resident == [4, 5], rd.label
