"""Pure-Python reference simulator: the executable definition of the replay semantics.

No jax here (a test imports this module with jax blocked). Slow but obviously correct: explicit
dicts of resident experts and ``heapq.nsmallest`` over policy keys. Every JAX kernel must equal it
exactly. The semantics are written in :mod:`specmd_jax.core.semantics`.
"""

from __future__ import annotations

import dataclasses
import heapq
from typing import Optional

from specmd_jax.core.score import features
from specmd_jax.core.counters import DEMAND_COUNTERS
from specmd_jax.core import checks
from specmd_jax.core.semantics import INF_STEP, MODES, SB_SCALE, layer_capacity, rand_u32
from specmd_jax.core.trace_fields import DECODE
from specmd_jax.policies import REGISTRY
from specmd_jax.reference.queues import QUEUE_POLICIES, queue_step

DECAYED = {n for n, p in REGISTRY.items() if p.decayed}



@dataclasses.dataclass
class RefResult:
    """Counts of one replay. Per-layer lists are indexed by the layer of the visit."""

    totals: dict
    per_layer: dict
    resident: list  # sorted global ids resident at the end
    max_occupancy: int
    bytes_moved: int
    decode_hits: int = 0   # hits in decode passes (the prefill's are the rest)


def steps_of(trace, mode: str = "pinned"):
    """Yield ``(pass, layer, new_pass, ids, weight_units)`` per step, pure Python.

    ``ids`` are global ids (``layer * E + expert``); ``weight_units[i]`` is the visit's summed
    ``round(weight * SB_SCALE)`` of ``ids[i]`` (0 when the trace has no weights).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    L, E = trace.shape.num_layers, trace.shape.num_experts
    experts = trace.experts.tolist()
    weights = trace.weights.tolist() if trace.weights is not None else None
    off = trace.cell_offsets.tolist()
    for p in range(trace.num_passes):
        first = True
        for l in range(L):
            c = p * L + l
            order, units = [], {}
            for r in range(off[c], off[c + 1]):
                for k, e in enumerate(experts[r]):
                    g = l * E + e
                    if g not in units:
                        order.append(g)
                        units[g] = 0
                    if weights is not None:
                        units[g] += round(weights[r][k] * SB_SCALE)
            if mode == "pinned":
                ids = sorted(order)
                yield p, l, first, ids, [units[g] for g in ids]
                first = False
            else:
                for g in order:
                    yield p, l, first, [g], [units[g]]
                    first = False


def _next_uses(steps):
    """Next step index demanding each id, per step: list of dicts id -> next step."""
    nxt = [None] * len(steps)
    later = {}
    for s in range(len(steps) - 1, -1, -1):
        ids = steps[s][3]
        nxt[s] = {g: later.get(g, INF_STEP) for g in ids}
        for g in ids:
            later[g] = s
    return nxt


def policy_key(policy: str, r: dict, g: int, l: int, E: int, score: dict, nextuse: dict,
               hist: Optional[dict] = None) -> tuple:
    """Eviction key of resident ``g`` (record ``r``) at a visit of layer ``l``; the smallest key
    is evicted first. The key is the policy's own, from :data:`specmd_jax.policies.REGISTRY`.
    ``hist``: the trace-level demand counts (kept across evictions), shown to the key as the
    record's ``hist`` field without writing it into the record."""
    rec = r if hist is None else {**r, "hist": hist.get(g, 0)}
    return REGISTRY[policy].key(rec, g, l, E, score, nextuse)


def floyd_pick(evictable_sorted: list, nev: int, seed: int, step: int, draw0: int = 0) -> list:
    """``random`` policy: ``nev`` victims from ``evictable_sorted`` (listed by (ins, id)) by Floyd's
    algorithm with draws ``rand_u32(seed, step, draw0 + i)``."""
    m, chosen = len(evictable_sorted), []
    for i in range(nev):
        j = m - nev + i
        t = rand_u32(seed, step, draw0 + i) % (j + 1)
        chosen.append(j if t in chosen else t)
    return [evictable_sorted[i] for i in chosen]


def simulate(trace, policy: str, capacity: int, *, mode: str = "pinned",
             partitioned: bool = False, seed: int = 0, weights=None, decay_period: int = 0,
             occupancy_log: Optional[list] = None) -> RefResult:
    """Replay ``trace`` through one cache configuration.

    Args:
        trace: a :class:`specmd_jax.core.trace.Trace`.
        policy: a demand-mode name of :data:`specmd_jax.policies.REGISTRY`.
        capacity: slots (experts) in the cache; in partitioned mode the total over layers.
        mode: ``"pinned"`` (one step per visit) or ``"sequential"`` (one per distinct access).
        partitioned: one cache per layer instead of one global pool.
        seed: seed of the ``random`` policy.
        weights: ``policy="score"`` only: the NF integer weights ``q`` of the parametric keep
            score (:mod:`specmd_jax.core.score`; pinned mode, global pool).
        decay_period: a decaying policy (``lfu_decay``) halves every count at the start of every
            step that is a positive multiple of it (0: never); the others ignore it.
        occupancy_log: if a list is given, the pool occupancy after every step is appended.
    """
    score_w = _check_policy(trace, policy, mode, partitioned, weights)
    capacity = int(checks.capacities(capacity, name="capacity")[0])
    seed = int(checks.seeds(seed, name="seed")[0])
    decay = int(checks.capacities(decay_period, name="decay_period")[0])
    L, E = trace.shape.num_layers, trace.shape.num_experts
    steps = list(steps_of(trace, mode))
    nxt = _next_uses(steps) if policy == "belady" else None
    tot = dict.fromkeys(DEMAND_COUNTERS, 0)
    per = {k: [0] * L for k in DEMAND_COUNTERS}
    resident = {}  # id -> dict of per-expert policy fields
    occ = [0] * (L if partitioned else 1)
    score, hist, nextuse = {}, {}, {}  # trace-level: sb's weight units, lfu_history's counts, belady's next use
    evicted_in_pass, max_occ, clk, dec_hits = set(), 0, [0], 0   # clk: clock's last queue position
    queues = {}                                          # s3fifo / arc: one queue machine per pool
    decode = [int(ph) == DECODE for ph in trace.pass_phase.tolist()]

    def key(g, l):
        if policy == "score":
            r = resident[g]
            f = features(s, p, l, g, E, L, r["last"], r["ins"], r["freq"], score.get(g, 0))
            return (sum(a * b for a, b in zip(score_w, f)), g)
        return policy_key(policy, resident[g], g, l, E, score, nextuse, hist)

    for s, (p, l, new_pass, ids, units) in enumerate(steps):
        if new_pass:
            evicted_in_pass.clear()
        if decay and s and s % decay == 0 and policy in DECAYED:   # lfu_decay: counts halve every period
            hist = {g: c >> 1 for g, c in hist.items()}
        pool = l if partitioned else 0
        cap = layer_capacity(capacity, L, l) if partitioned else capacity
        D = set(ids)
        hit = [g in resident for g in ids]
        miss = [g for g, h in zip(ids, hit) if not h]
        nh = len(ids) - len(miss)
        coll = sum(1 for g in miss if g in evicted_in_pass)
        _observe(ids, units, score, hist, nextuse, nxt[s] if nxt is not None else None)
        free = cap - occ[pool]
        evictable = [g for g in resident if g not in D and (not partitioned or g // E == l)]
        nev = max(0, min(len(miss) - free, len(evictable)))
        if policy in QUEUE_POLICIES:
            na, nev = queue_step(queues.setdefault(pool, QUEUE_POLICIES[policy](cap)), resident, ids, miss, D,
                                 free, nev, evicted_in_pass)
        else:
            vict = (clock_victims(resident, evictable, nev, clk) if policy == "clock"
                    else _victims(policy, evictable, nev, lambda g: key(g, l), seed, s)) if nev else []
            for g in vict:
                del resident[g]
            evicted_in_pass.update(vict)
            na = min(len(miss), free + nev)
        occ[pool] += na - nev
        use(resident, ids, sorted(miss)[:na], s, p, clock=clk if policy == "clock" else None)
        max_occ = max(max_occ, occ[pool])
        if occupancy_log is not None:
            occupancy_log.append(occ[pool])
        assert occ[pool] <= max(cap, 0), "occupancy exceeded capacity"
        dec_hits += nh * decode[p]
        for name, v in (("demands", len(ids)), ("hits", nh), ("misses", len(miss)), ("collisions", coll),
                        ("evictions", nev), ("bypass", len(miss) - na)):
            tot[name] += v
            per[name][l] += v
    return RefResult(totals=tot, per_layer=per, resident=sorted(resident), max_occupancy=max_occ,
                     bytes_moved=tot["misses"] * trace.shape.expert_bytes, decode_hits=dec_hits)


def _observe(ids, units, score: dict, hist: dict, nextuse: dict, nxt: Optional[dict]) -> None:
    """The trace-level records every demand updates, resident or not: sb's weight units,
    lfu_history's counts and (Belady) the next use."""
    for g, u in zip(ids, units):
        score[g] = score.get(g, 0) + u
        hist[g] = hist.get(g, 0) + 1
        if nxt is not None:
            nextuse[g] = nxt[g]


def clock_victims(resident: dict, evictable: list, nev: int, clk: list) -> list:
    """CLOCK (second chance; libCacheSim's ``Clock``, 1-bit): take the evictable resident with the
    oldest queue position; a set reference bit is cleared and the expert moves to the head (the next
    position), else it is evicted; until ``nev`` are evicted. The demanded experts are not in the queue
    walk (they are not evictable)."""
    heap = [(resident[g]["pos"], g) for g in evictable]
    heapq.heapify(heap)
    out = []
    while len(out) < nev:
        _, g = heapq.heappop(heap)
        r = resident[g]
        if r["ref"]:
            r["ref"] = 0
            clk[0] += 1
            r["pos"] = clk[0]
            heapq.heappush(heap, (r["pos"], g))
        else:
            out.append(g)
    return out


def _victims(policy, evictable, nev, key, seed, s) -> list:
    """The ``nev`` victims among ``evictable``: the smallest keys (``random``: Floyd's draws over them
    listed by key)."""
    if policy == "random":
        return floyd_pick(sorted(evictable, key=key), nev, seed, s)
    return heapq.nsmallest(nev, evictable, key=key)


def _check_policy(trace, policy, mode, partitioned, weights):
    """Refuse a policy the demand replay cannot run; the integer weights of ``policy="score"``."""
    if policy == "score":
        if weights is None or mode != "pinned" or partitioned:
            raise ValueError("policy 'score' needs weights=, pinned mode and the global pool")
        return [int(x) for x in weights]
    if policy not in REGISTRY or "demand" not in REGISTRY[policy].modes:
        known = tuple(n for n, p in REGISTRY.items() if "demand" in p.modes)
        raise ValueError(f"unknown policy {policy!r} in demand-only replay; known: {known}")
    if policy == "sb" and trace.weights is None:
        raise ValueError(f"policy 'sb' needs router weights; trace {trace.source} has none")
    return None


def use(resident: dict, ids, admitted, s: int, p: int, clock: Optional[list] = None) -> None:
    """Step ``s`` (pass ``p``) uses its demand ``ids``: a hit counts one more use, an ``admitted``
    miss is inserted; both take last use ``s`` and enter the current tier (mark ``p``) unless
    already in it. A bypassed miss is not resident and is not touched. With ``clock`` (its last queue
    position, a one-item list) a hit sets CLOCK's reference bit and an admitted expert enters at the
    head (ids ascending) with the bit clear."""
    for g in ids:
        if g in resident:  # hit
            r = resident[g]
            r["freq"] += 1
            r["ref"] = 1
        elif g in admitted:
            r = resident[g] = {"ins": s, "freq": 1, "mark": -1, "entry": s, "ref": 0}
            if clock is not None:
                clock[0] += 1
                r["pos"] = clock[0]
        else:
            continue
        r["last"] = s
        if r["mark"] != p:
            r["mark"], r["entry"] = p, s
