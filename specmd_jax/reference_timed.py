"""Pure-Python reference of replay with prefetching and the timing model (no jax, no numpy math).

The executable definition of :mod:`specmd_jax.timing`'s semantics (read its docstring first):
pinned visits, one FIFO copy engine, arrival batches with the visit's demand pinned, integer
ticks. With no plan (or an empty one) its counts equal :func:`reference.simulate`'s exactly
(tested), and it adds the times. Slow and explicit on purpose.
"""

from __future__ import annotations

import bisect
import dataclasses

import numpy as np

from .miss import PROXY_COUNTERS, MissConfig, Precision, check_levels, decide, row_details
from .routing import RoutingConfig, gap_means, route_rows
from .reference import floyd_pick, policy_key, steps_of
from .semantics import INF_STEP, POLICIES, SB_SCALE, layer_capacity
from .timing import INSTANT, Hardware
from .trace import PREFILL

COUNTERS = ("demands", "hits", "late", "misses", "collisions", "evictions", "bypass",
            "pf_issued", "pf_resident", "pf_pending", "pf_arrived", "pf_dropped", "pf_useful",
            "pf_wasted", "stall_ticks", "dropped", "substituted", "units_moved") + PROXY_COUNTERS
REFERENCE_POLICIES = POLICIES + ("lhu",)  # lhu: mixed precision (specmd_jax.miss), reference only
# random-policy hash seeds of the three arrival batches of a visit (demand batch = the seed itself,
# so a replay without prefetch draws exactly what the demand-only reference draws)
_SEED_INSTANT, _SEED_COMPUTE = 0xA5A5A5A5, 0x5A5A5A5A


@dataclasses.dataclass
class TimedResult:
    """Counts and times of one timed replay (per-layer lists are indexed by the visit's layer).

    ``pass_ticks[p]`` is the duration of pass ``p``; ``ttft_ticks[r]`` the summed prefill pass
    durations of request ``r`` (requests with a prefill pass only).
    """

    totals: dict
    per_layer: dict
    resident: list
    max_occupancy: int
    pass_ticks: list
    ttft_ticks: dict
    transfer_ticks: int
    decode_pass_ticks: list = dataclasses.field(default_factory=list)

    @property
    def tpot_ticks(self) -> float:
        """Mean decode pass duration (NaN without decode passes)."""
        d = self.decode_pass_ticks
        return sum(d) / len(d) if d else float("nan")


def simulate_timed(trace, policy: str, capacity: int, *, plan=None, hardware: Hardware = INSTANT,
                   instant_prefetch: bool = False, partitioned: bool = False, seed: int = 0,
                   precision: Precision = None, miss: MissConfig = None,
                   routing: RoutingConfig = None, weights=None) -> TimedResult:
    """Replay ``trace`` with prefetch ``plan`` (a :class:`prefetch.PrefetchPlan` or ``None``) on
    ``hardware`` through one cache configuration (pinned mode).

    ``capacity`` is in units of ``precision`` (:mod:`specmd_jax.miss`; slots with the default
    single level); ``miss`` is the miss policy (default ``fetch``); ``routing`` the routing
    policy (:mod:`specmd_jax.routing`; default ``standard``). ``policy="score"`` is the
    parametric keep score of :mod:`specmd_jax.score` with integer ``weights`` (all nine features,
    ``pf`` and ``level`` included; :func:`specmd_jax.score.timed_features`), lowest id on ties."""
    if policy == "score":
        from .score import NF, timed_features
        if weights is None or len(weights) != NF:
            raise ValueError(f"policy 'score' needs weights= ({NF} integers, specmd_jax.score.FEATURES order)")
        score_w = [int(x) for x in weights]
    elif policy not in REFERENCE_POLICIES:
        raise ValueError(f"unknown policy {policy!r}; known: {REFERENCE_POLICIES + ('score',)}")
    prec = precision if precision is not None else Precision()
    mcfg = miss if miss is not None else MissConfig()
    check_levels(policy, prec)
    rcfg = routing if routing is not None else RoutingConfig()
    if rcfg.active and policy == "belady":
        raise ValueError("belady's next uses come from the recorded routing: it cannot run with cache-aware routing")
    deltas = gap_means(trace) if rcfg.active else None
    off = trace.cell_offsets.tolist()
    lv_units, lv_bits = prec.units, prec.bits
    if policy == "sb" and trace.weights is None:
        raise ValueError(f"policy 'sb' needs router weights; trace {trace.source} has none")
    L, E = trace.shape.num_layers, trace.shape.num_experts
    steps = list(steps_of(trace, "pinned"))
    if plan is not None and plan.ids.shape[0] != len(steps):
        raise ValueError(f"plan has {plan.ids.shape[0]} visits, trace has {len(steps)}")
    proposals = [[int(g) for g in row if g >= 0] for row in plan.ids.tolist()] if plan is not None else None
    xfer_lv = [hardware.transfer_ticks(prec.level_bytes(trace.shape.expert_bytes, i)) for i in range(len(lv_bits))]
    xfer = xfer_lv[0]
    phase = trace.pass_phase.tolist()
    tokens = trace.pass_tokens.tolist()
    request = trace.pass_request.tolist()
    demand_at: dict = {}  # id -> sorted visit indices demanding it (Belady's next use)
    for s, (_, _, _, ids, _) in enumerate(steps):
        for g in ids:
            demand_at.setdefault(g, []).append(s)

    def next_demand(g, after):
        v = demand_at.get(g, [])
        i = bisect.bisect_right(v, after)
        return v[i] if i < len(v) else INF_STEP

    tot = dict.fromkeys(COUNTERS, 0)
    per = {k: [0] * L for k in COUNTERS}
    resident: dict = {}                      # id -> record
    pending: dict = {}                       # id -> (completion tick, issue number, level) of its queued copy
    issued = 0
    occ = [0] * (L if partitioned else 1)
    score: dict = {}
    nextuse: dict = {}
    evicted_in_pass: set = set()
    seq = 0
    t = 0
    engine_free = 0
    max_occ = 0
    pass_ticks, pass_start = [], 0

    def add(name, l, v=1):
        tot[name] += v
        per[name][l] += v

    def pool_of(g):
        return g // E if partitioned else 0

    def cap_of(q):
        return layer_capacity(capacity, L, q) if partitioned else capacity

    def key(x, l):
        if policy == "score":
            f = timed_features(seq, p, l, x, E, L, resident[x], score.get(x, 0))
            return (sum(a * b for a, b in zip(score_w, f)), x)
        return policy_key(policy, resident[x], x, l, E, score, nextuse)

    def arrive(batch, D, l, s, rseed):
        """Admit one arrival batch (list of ``(id, level)`` in completion order) with ``D`` pinned."""
        nonlocal seq, max_occ
        level = dict(batch)
        batch = [g for g, _ in batch]
        inb = set(batch)
        dem = sorted(g for g in batch if g in D)
        order = dem + [g for g in batch if g not in D]
        vpool = pool_of(l * E)
        for q in sorted({pool_of(g) for g in order}):
            A = [g for g in order if pool_of(g) == q]
            free = max(cap_of(q) - occ[q], 0)
            evictable = [x for x in resident if pool_of(x) == q and x not in D and x not in inb]
            room = free + sum(lv_units[resident[x]["lvl"]] for x in evictable)
            n_adm, need = 0, 0
            for g in A:  # the longest prefix that fits (miss.py: byte-capacity eviction)
                if need + lv_units[level[g]] > room:
                    break
                need += lv_units[level[g]]
                n_adm += 1
            need = max(0, need - free)
            if need:
                if policy == "random":  # equal sizes (miss.check_levels): a known victim count
                    evictable.sort(key=lambda x: key(x, l))
                    victims = floyd_pick(evictable, -(-need // lv_units[0]), rseed, s,
                                         0 if q == vpool else 4096 * (1 + q))
                else:
                    evictable.sort(key=lambda x: key(x, l))
                    victims, freed = [], 0
                    for x in evictable:
                        if freed >= need:
                            break
                        victims.append(x)
                        freed += lv_units[resident[x]["lvl"]]
                for x in victims:
                    if resident[x]["pf"]:
                        add("pf_wasted", l)
                    occ[q] -= lv_units[resident[x]["lvl"]]
                    del resident[x]
                    evicted_in_pass.add(x)
                add("evictions", l, len(victims))
            for i, g in enumerate(A):
                demand = g in D
                if not demand:
                    add("pf_arrived", l)
                if i >= n_adm:
                    add("bypass" if demand else "pf_dropped", l)
                    continue
                seq += 1
                # a prefetch enters the current tier at arrival; a demanded copy is marked by its use
                resident[g] = {"ins": seq, "last": seq, "freq": 0, "mark": -1 if demand else p, "entry": seq,
                               "pf": not demand, "lvl": level[g], "hp": 0}
                if policy == "belady" and not demand:
                    nextuse[g] = next_demand(g, s)
                occ[q] += lv_units[level[g]]
            max_occ = max(max_occ, occ[q])
            assert occ[q] <= max(cap_of(q), 0), "occupancy exceeded capacity"

    def arrivals_until(limit):
        # completion order = issue order (one FIFO engine; equal times only when copies are free)
        due = sorted((d, k, g, lv) for g, (d, k, lv) in pending.items() if d <= limit)
        for _, _, g, _ in due:
            del pending[g]
        return [(g, lv) for _, _, g, lv in due]

    for s, (p, l, new_pass, ids, units) in enumerate(steps):
        if new_pass:
            evicted_in_pass.clear()
            if s:
                pass_ticks.append(t - pass_start)
            pass_start = t
        # routing (specmd_jax.routing): the visit's tokens re-ranked against the cache at its start
        a, b = off[s], off[s + 1]
        rec_rows = trace.experts[a:b].tolist()
        rec_w = trace.weights[a:b].tolist() if trace.weights is not None else [[0.0] * len(r) for r in rec_rows]
        if rcfg.active:
            cached = {x - l * E for x in resident if x // E == l}
            new_rows, new_w = route_rows(trace, a, b, cached, np.float32(rcfg.lam) * deltas[s])
        else:
            new_rows, new_w = rec_rows, rec_w
        vscore, vrank, vunits = row_details(new_rows, new_w, l, E, SB_SCALE)
        ids = sorted(vscore)
        units = [vunits[g] for g in ids]
        hits = [g for g in ids if g in resident]
        late = [g for g in ids if g not in resident and g in pending]
        miss = [g for g in ids if g not in resident and g not in pending]
        add("demands", l, len(ids))
        add("hits", l, len(hits))
        add("late", l, len(late))
        add("misses", l, len(miss))
        add("collisions", l, sum(1 for g in miss if g in evicted_in_pass))
        for g in hits:
            if resident[g]["pf"]:
                add("pf_useful", l)
        add("pf_useful", l, len(late))
        for g, u in zip(ids, units):
            score[g] = score.get(g, 0) + u
            if policy == "belady":
                nextuse[g] = next_demand(g, s)
        # miss policy (specmd_jax.miss) on everything not resident; X = the executed set
        dset = set(ids)
        others = sorted(x for x in resident if x // E == l and x not in dset) if mcfg.policy == "substitute" else []
        dec = decide(mcfg, len(lv_bits), sorted(late + miss), ids, vscore, vrank, score, others, SB_SCALE)
        fetched = [g for g in miss if dec[g][0] == "fetch"]
        waited = [g for g in late if dec[g][0] == "fetch"]
        subs = {g: dec[g][1] for g in late + miss if dec[g][0] == "sub"}
        add("dropped", l, sum(1 for g in late + miss if dec[g][0] == "drop"))
        add("substituted", l, len(subs))
        served_lvl = {g: resident[g]["lvl"] for g in hits}
        served_lvl.update({g: pending[g][2] for g in waited})
        served_lvl.update({g: dec[g][1] for g in fetched})
        # quality proxies: the recorded (token, expert) pairs, and the bits of what ran
        for i, row in enumerate(rec_rows):
            new = set(new_rows[i])
            add("tokens", l)
            add("tokens_changed", l, int(new != set(row)))
            for e, w in zip(row, rec_w[i]):
                g, u = l * E + e, round(w * SB_SCALE)
                add("pairs", l)
                add("units_total", l, u)
                if e not in new:
                    add("pairs_rerouted", l)
                    add("units_rerouted", l, u)
                elif g in served_lvl:
                    add("pairs_served", l)
                    if served_lvl[g] == 0:
                        add("units_full", l, u)
                elif g in subs:
                    add("pairs_substituted", l)
                    add("units_substituted", l, u)
                else:
                    add("pairs_dropped", l)
                    add("units_dropped", l, u)
            for e in new_rows[i]:
                g = l * E + e
                ran = served_lvl.get(g, resident[subs[g]]["lvl"] if g in subs else None)
                if ran is not None:
                    add("exec_pairs", l)
                    add("bits_served", l, lv_bits[ran])
        D = set(hits) | set(fetched) | set(waited) | set(subs.values())
        # 3-5. demand copies behind the queue; wait; arrivals up to t_ready
        for g in fetched:  # ids ascending
            engine_free = max(t, engine_free) + xfer_lv[dec[g][1]]
            add("units_moved", l, lv_units[dec[g][1]])
            issued += 1
            pending[g] = (engine_free, issued, dec[g][1])
        t_ready = max([t] + [pending[g][0] for g in waited + fetched])
        add("stall_ticks", l, t_ready - t)
        arrive(arrivals_until(t_ready), D, l, s, seed)
        # 6. use
        seq += 1
        for g in sorted(D):
            r = resident.get(g)
            if r is None:  # bypassed
                continue
            r["freq"] += 1
            r["hp"] += r["lvl"] == 0
            r["last"] = seq
            if g in dset:  # a substitute is used, but was not demanded
                r["pf"] = False
            if r["mark"] != p:  # enters the current tier (a prefetch this pass already put it there)
                r["mark"], r["entry"] = p, seq
        # 7. prefetch issue
        instant = []
        for g in (proposals[s] if proposals is not None else ()):
            if g in resident:
                add("pf_resident", l)
                r = resident[g]
                if policy == "ls" and r["mark"] != p:  # Least-Stale: a prefetch re-marks current
                    seq += 1
                    r["mark"], r["entry"] = p, seq
            elif g in pending or g in instant:
                add("pf_pending", l)
            else:
                add("pf_issued", l)
                add("units_moved", l, lv_units[0])
                if instant_prefetch:
                    instant.append(g)
                else:
                    engine_free = max(t_ready, engine_free) + xfer
                    issued += 1
                    pending[g] = (engine_free, issued, 0)
        if instant:
            arrive([(g, 0) for g in instant], D, l, s, seed ^ _SEED_INSTANT)
        # 8-9. compute; arrivals during it
        t_end = t_ready + hardware.compute_ticks(phase[p] == PREFILL, tokens[p])
        arrive(arrivals_until(t_end), D, l, s, seed ^ _SEED_COMPUTE)
        t = t_end
    if steps:
        pass_ticks.append(t - pass_start)
    ttft: dict = {}
    for p, d in enumerate(pass_ticks):
        if phase[p] == PREFILL:
            ttft[request[p]] = ttft.get(request[p], 0) + d
    dec = [d for p, d in enumerate(pass_ticks) if phase[p] != PREFILL]
    return TimedResult(totals=tot, per_layer=per, resident=sorted(resident), max_occupancy=max_occ,
                       pass_ticks=pass_ticks, ttft_ticks=ttft, transfer_ticks=xfer, decode_pass_ticks=dec)
