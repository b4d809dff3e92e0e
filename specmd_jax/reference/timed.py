"""Pure-Python reference of replay with prefetching and the timing model (no jax, no numpy math).

The executable definition of :mod:`specmd_jax.core.timing`'s semantics (read its docstring first):
pinned visits, one FIFO copy engine, arrival batches with the visit's demand pinned, integer
ticks. With no plan (or an empty one) its counts equal :func:`reference.simulate`'s exactly
(tested), and it adds the times. Slow and explicit on purpose.
"""

from __future__ import annotations

import bisect
import dataclasses

import numpy as np

from specmd_jax.core.counters import TIMED_COUNTERS
from specmd_jax.core import checks
from specmd_jax.core.miss import MissConfig, Precision, check_levels, decide, row_details
from specmd_jax.core.routing import RoutingConfig, gap_means, route_rows
from specmd_jax.reference.arrivals import Arrivals
from specmd_jax.reference.demand import policy_key, steps_of
from specmd_jax.reference.quality import visit_proxies
from specmd_jax.core.score import NF, timed_features
from specmd_jax.core.semantics import INF_STEP, SB_SCALE, layer_capacity
from specmd_jax.policies import REGISTRY
from specmd_jax.core.timing import INSTANT, Hardware, Reading, turn_share
from specmd_jax.core.trace import PREFILL

# random-policy hash seed of a turn's batch of arrivals during its compute (the instant batch's is
# arrivals.SEED_INSTANT; the demand batch draws with the seed itself)
SEED_COMPUTE = 0x5A5A5A5A


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
                   routing: RoutingConfig = None, weights=None, reading: Reading = None) -> TimedResult:
    """Replay ``trace`` with prefetch ``plan`` (a :class:`prefetch.PrefetchPlan` or ``None``) on
    ``hardware`` through one cache configuration (pinned mode).

    ``capacity`` is in units of ``precision`` (:mod:`specmd_jax.core.miss`; slots with the default
    single level); ``miss`` is the miss policy (default ``fetch``); ``routing`` the routing
    policy (:mod:`specmd_jax.core.routing`; default ``standard``); ``reading`` the execution reading
    (:class:`~specmd_jax.core.timing.Reading`; default: whole visits, prefetch after use, the visit
    pinned). ``policy="score"`` is the parametric keep score of :mod:`specmd_jax.core.score` with
    integer ``weights`` (all nine features, ``pf`` and ``level`` included;
    :func:`specmd_jax.core.score.timed_features`), lowest id on ties."""
    return Replay(trace, policy, capacity, plan=plan, hardware=hardware, instant_prefetch=instant_prefetch,
                   partitioned=partitioned, seed=seed, precision=precision, miss=miss, routing=routing,
                   weights=weights, reading=reading).run()


class Replay(Arrivals):
    """State and steps of one timed replay (:func:`simulate_timed`). A visit is a list of *turns*
    (one with the whole demand under ``execution=visit``, one per expert under ``expert``); a turn
    classifies its demand, queues its fetches, waits, admits what arrived, uses, computes its
    share and admits what arrived meanwhile (``specmd_jax.core.timing``)."""

    def __init__(self, trace, policy, capacity, *, plan, hardware, instant_prefetch, partitioned, seed,
                 precision, miss, routing, weights, reading):
        capacity = int(checks.capacities(capacity, name="capacity")[0])
        seed = int(checks.seeds(seed, name="seed")[0])
        hws = checks.hardware_list(hardware)
        if len(hws) != 1:
            raise ValueError(f"hardware: one profile per replay, got {len(hws)} (sweep_prefetch takes a list)")
        hardware = hws[0]
        self.score_w = None
        if policy == "score":
            if weights is None or len(weights) != NF:
                raise ValueError(f"policy 'score' needs weights= ({NF} integers, specmd_jax.core.score.FEATURES order)")
            self.score_w = [int(x) for x in weights]
        elif policy not in REGISTRY or "instant" not in REGISTRY[policy].modes:
            raise ValueError(f"policy {policy!r} is not defined in the timed replay; known: "
                             f"{tuple(n for n, p in REGISTRY.items() if 'instant' in p.modes) + ('score',)}")
        self.prec = precision if precision is not None else Precision()
        self.mcfg = miss if miss is not None else MissConfig()
        check_levels(policy, self.prec)
        self.rcfg = routing if routing is not None else RoutingConfig()
        if self.rcfg.active and policy == "belady":
            raise ValueError("belady's next uses come from the recorded routing: it cannot run with cache-aware routing")
        self.reading = reading if reading is not None else Reading()
        if not isinstance(self.reading, Reading):
            raise TypeError(f"reading must be a specmd_jax.core.timing.Reading, got {type(reading).__name__}")
        self.expert = self.reading.execution == "expert"
        if policy == "sb" and trace.weights is None:
            raise ValueError(f"policy 'sb' needs router weights; trace {trace.source} has none")
        self.trace, self.policy, self.capacity = trace, policy, capacity
        self.hardware, self.instant_prefetch, self.partitioned, self.seed = hardware, instant_prefetch, partitioned, seed
        self.deltas = gap_means(trace) if self.rcfg.active else None
        self.off = trace.cell_offsets.tolist()
        self.lv_units, self.lv_bits = self.prec.units, self.prec.bits
        self.L, self.E = L, _ = trace.shape.num_layers, trace.shape.num_experts
        self.steps = list(steps_of(trace, "pinned"))
        if plan is not None and plan.ids.shape[0] != len(self.steps):
            raise ValueError(f"plan has {plan.ids.shape[0]} visits, trace has {len(self.steps)}")
        self.proposals = [[int(g) for g in row if g >= 0] for row in plan.ids.tolist()] if plan is not None else None
        self.xfer_lv = [hardware.transfer_ticks(self.prec.level_bytes(trace.shape.expert_bytes, i))
                        for i in range(len(self.lv_bits))]
        self.xfer = self.xfer_lv[0]
        self.phase = trace.pass_phase.tolist()
        self.tokens = trace.pass_tokens.tolist()
        self.request = trace.pass_request.tolist()
        self.demand_at: dict = {}  # id -> sorted visit indices demanding it (Belady's next use)
        for s, (_, _, _, ids, _) in enumerate(self.steps):
            for g in ids:
                self.demand_at.setdefault(g, []).append(s)
        self.tot = dict.fromkeys(TIMED_COUNTERS, 0)
        self.per = {k: [0] * L for k in TIMED_COUNTERS}
        self.resident: dict = {}             # id -> record
        self.pending: dict = {}              # id -> (completion tick, issue number, level) of its queued copy
        self.issued = 0
        self.occ = [0] * (L if partitioned else 1)
        self.score, self.nextuse, self.hist = {}, {}, {}   # sb's units; belady's next use; lfu_history's counts
        self.evicted_in_pass: set = set()
        self.todo: set = set()               # experts of the running visit whose turn has not come
        self.seq = 0
        self.t = 0
        self.engine_free = 0
        self.max_occ = 0
        self.p = self.s = 0

    # ---------------------------------------------------------------- helpers
    def add(self, name, l, v=1):
        self.tot[name] += v
        self.per[name][l] += v

    def pool_of(self, g):
        return g // self.E if self.partitioned else 0

    def cap_of(self, q):
        return layer_capacity(self.capacity, self.L, q) if self.partitioned else self.capacity

    def next_demand(self, g, after):
        v = self.demand_at.get(g, [])
        i = bisect.bisect_right(v, after)
        return v[i] if i < len(v) else INF_STEP

    def key(self, x, l):
        r = self.resident[x]
        if self.policy == "score":
            f = timed_features(self.seq, self.p, l, x, self.E, self.L, r, self.score.get(x, 0))
            return (sum(a * b for a, b in zip(self.score_w, f)), x)
        return policy_key(self.policy, r, x, l, self.E, self.score, self.nextuse, self.hist)

    # ---------------------------------------------------------------- one visit
    def visit(self, s, p, l):
        E, resident = self.E, self.resident
        self.s, self.p = s, p
        # routing (specmd_jax.core.routing): the visit's tokens re-ranked against the cache at its start
        a, b = self.off[s], self.off[s + 1]
        rec_rows = self.trace.experts[a:b].tolist()
        rec_w = (self.trace.weights[a:b].tolist() if self.trace.weights is not None
                 else [[0.0] * len(r) for r in rec_rows])
        if self.rcfg.active:
            cached = {x - l * E for x in resident if x // E == l}
            new_rows, new_w = route_rows(self.trace, a, b, cached, np.float32(self.rcfg.lam) * self.deltas[s])
        else:
            new_rows, new_w = rec_rows, rec_w
        vscore, vrank, vunits = row_details(new_rows, new_w, l, E, SB_SCALE)
        ids = sorted(vscore)
        for g in ids:  # the router's weights join the running gate scores
            self.score[g] = self.score.get(g, 0) + vunits[g]
        self.add("demands", l, len(ids))
        served_lvl, subs = {}, {}
        if self.expert:
            order = list(dict.fromkeys(l * E + e for row in new_rows for e in row))  # router order
            turns = [[g] for g in order] or [[]]
            P_visit = set(ids)
        else:
            turns = [ids]
        n = len(turns)
        layer = self.hardware.layer_ticks(self.phase[p] == PREFILL, self.tokens[p], len(ids))
        for i, tids in enumerate(turns):
            self.todo = set(order[i + 1:]) if self.expert else set()
            share = turn_share(layer, n, i)
            self.turn(i, n, tids, ids, vscore, vrank, l, share, served_lvl, subs,
                      P_visit if self.expert and not self.reading.pins_running else None)
        self.todo = set()
        visit_proxies(self.add, E, self.lv_bits, l, rec_rows, rec_w, new_rows, served_lvl, subs)

    def turn(self, i, n, tids, ids, vscore, vrank, l, share, served_lvl, subs, P_fixed):
        """One turn: demand ``tids`` (ascending) of the visit ``ids``; ``P_fixed`` the pinned set
        when it is not the turn's executed set (``expert`` with ``pin=visit``)."""
        resident, pending, add = self.resident, self.pending, self.add
        E, t = self.E, self.t
        # random-policy hash seeds of a turn's arrival batches (turn 0: the visit's own, so the
        # visit reading draws exactly what it always drew)
        rseed = self.seed if i == 0 else self.seed ^ ((i * 0x2545F491) & 0xFFFFFFFF)
        hits = [g for g in tids if g in resident]
        late = [g for g in tids if g not in resident and g in pending]
        miss = [g for g in tids if g not in resident and g not in pending]
        add("hits", l, len(hits))
        add("late", l, len(late))
        add("misses", l, len(miss))
        add("collisions", l, sum(1 for g in miss if g in self.evicted_in_pass))
        for g in hits:
            if resident[g]["pf"]:
                add("pf_useful", l)
        add("pf_useful", l, len(late))
        for g in tids:
            self.hist[g] = self.hist.get(g, 0) + 1      # lfu_history's counts
            if self.policy == "belady":
                self.nextuse[g] = self.next_demand(g, self.s)
        # miss policy (specmd_jax.core.miss) on everything not resident; X = the executed set
        dset = set(tids)
        vset = set(ids)  # a stand-in comes from outside the visit's demand
        others = (sorted(x for x in resident if x // E == l and x not in vset)
                  if self.mcfg.policy == "substitute" else [])
        dec = decide(self.mcfg, len(self.lv_bits), sorted(late + miss), ids, vscore, vrank, self.score, others,
                     SB_SCALE)
        fetched = [g for g in miss if dec[g][0] == "fetch"]
        waited = [g for g in late if dec[g][0] == "fetch"]
        tsubs = {g: dec[g][1] for g in late + miss if dec[g][0] == "sub"}
        subs.update(tsubs)
        add("dropped", l, sum(1 for g in late + miss if dec[g][0] == "drop"))
        add("substituted", l, len(tsubs))
        served_lvl.update({g: resident[g]["lvl"] for g in hits})
        served_lvl.update({g: pending[g][2] for g in waited})
        served_lvl.update({g: dec[g][1] for g in fetched})
        served_lvl.update({("sub", g): resident[x]["lvl"] for g, x in tsubs.items()})
        D = set(hits) | set(fetched) | set(waited) | set(tsubs.values())
        P = D if P_fixed is None else P_fixed | D
        own = set(fetched) | set(waited)
        # 3-5. demand copies behind the queue; [prefetch at the router]; wait; arrivals up to t_ready
        for g in fetched:  # ids ascending
            self.engine_free = max(t, self.engine_free) + self.xfer_lv[dec[g][1]]
            add("units_moved", l, self.lv_units[dec[g][1]])
            self.issued += 1
            pending[g] = (self.engine_free, self.issued, dec[g][1])
        if i == 0 and self.reading.prefetch_issue == "at_router":
            self.issue(t, P, l, rseed)
        t_ready = max([t] + [pending[g][0] for g in waited + fetched])
        add("stall_ticks", l, t_ready - t)
        self.arrive(self.arrivals_until(t_ready), P, own, l, rseed)
        # 6. use
        self.seq += 1
        for g in sorted(D):
            r = resident.get(g)
            if r is None:  # bypassed
                continue
            r["freq"] += 1
            r["hp"] += r["lvl"] == 0
            r["last"] = self.seq
            if g in dset:  # a substitute is used, but was not demanded
                r["pf"] = False
            if r["mark"] != self.p:  # enters the current tier (a prefetch this pass already put it there)
                r["mark"], r["entry"] = self.p, self.seq
        # 7. prefetch issue after the use
        if i == n - 1 and self.reading.prefetch_issue == "after_use":
            self.issue(t_ready, P, l, rseed)
        # 8-9. compute; arrivals during it
        t_end = t_ready + share
        self.arrive(self.arrivals_until(t_end), P, own, l, rseed ^ SEED_COMPUTE)
        self.t = t_end

    # ---------------------------------------------------------------- the replay
    def run(self) -> TimedResult:
        pass_ticks, pass_start = [], 0
        for s, (p, l, new_pass, _, _) in enumerate(self.steps):
            if new_pass:
                self.evicted_in_pass.clear()
                if s:
                    pass_ticks.append(self.t - pass_start)
                pass_start = self.t
            self.visit(s, p, l)
        if self.steps:
            pass_ticks.append(self.t - pass_start)
        ttft: dict = {}
        for p, d in enumerate(pass_ticks):
            if self.phase[p] == PREFILL:
                ttft[self.request[p]] = ttft.get(self.request[p], 0) + d
        dec = [d for p, d in enumerate(pass_ticks) if self.phase[p] != PREFILL]
        return TimedResult(totals=self.tot, per_layer=self.per, resident=sorted(self.resident),
                           max_occupancy=self.max_occ, pass_ticks=pass_ticks, ttft_ticks=ttft,
                           transfer_ticks=self.xfer, decode_pass_ticks=dec)
