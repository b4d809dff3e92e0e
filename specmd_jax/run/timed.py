"""Sweeps with instantaneous prefetch: one jitted vmap over one scan (:mod:`specmd_jax.kernels.instant`), and the
timing of any number of hardware profiles from the recorded per-pass miss counts.

With instantaneous prefetch the copy engine carries only each visit's own demand misses, so a
visit stalls ``misses x transfer`` and a pass lasts ``sum over its visits of (stall + compute)``
(see :mod:`specmd_jax.core.timing`): :func:`timing` evaluates that for a hardware profile from
``pass_misses`` on the host, for every configuration at once, without another replay.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from specmd_jax.core import checks
from specmd_jax.kernels.demand import GONE
from specmd_jax.kernels.instant import PfParams, PfSpec, PfVisit, make_pf_policy, pf_counter_names
from specmd_jax.core.prefetch import PrefetchPlan
from specmd_jax.core.semantics import SB_SCALE
from specmd_jax.core.timing import Hardware, Reading, to_ticks
from specmd_jax.core.trace import PREFILL, Trace
from specmd_jax.core.turns import prepare_turns
from specmd_jax.core.steps import prepare_steps

_COMPILED: dict = {}

NO_DROP = 2 ** 30  # a drop_priority threshold no router rank reaches: the fetch policy


def running_scores(trace: Trace, steps) -> np.ndarray:
    """int32[S, E]: running gate score (cumulative quantised router weight, ``sb``'s score) of the
    visit layer's experts after each pinned visit (the ``substitute`` miss policy's distance)."""
    L, E = trace.shape.num_layers, trace.shape.num_experts
    S = steps.num_steps
    u = np.zeros((S, E), np.int64)
    ok = steps.ids >= 0
    rows = np.broadcast_to(np.arange(S)[:, None], ok.shape)
    np.add.at(u, (rows[ok], steps.ids[ok] % E), steps.units[ok])
    return u.reshape(-1, L, E).cumsum(axis=0).reshape(S, E).astype(np.int32)


def demand_details(trace: Trace, steps) -> dict:
    """int32[S, W] per demanded id of pinned ``steps`` (padding: ``NO_DROP`` / 0): ``rank`` its
    best router rank in the visit, ``pairs`` the tokens routing it, ``score`` its best quantised
    router weight, ``spos`` its position in the visit's demand sorted by (score, id) ascending."""
    E, K = trace.shape.num_experts, trace.shape.top_k
    V = trace.num_visits
    cell = np.repeat(np.repeat(np.arange(V, dtype=np.int64), np.diff(trace.cell_offsets)), K)
    key = cell * E + trace.experts.reshape(-1).astype(np.int64)
    best_rank = np.full(V * E, NO_DROP, np.int64)
    np.minimum.at(best_rank, key, np.tile(np.arange(K), trace.experts.shape[0]))
    best_w = np.zeros(V * E, np.int64)
    if trace.weights is not None:
        np.maximum.at(best_w, key, np.rint(trace.weights.reshape(-1).astype(np.float64) * SB_SCALE).astype(np.int64))
    ok = steps.ids >= 0
    k2 = np.arange(steps.num_steps)[:, None] * E + np.where(ok, steps.ids % E, 0)
    score = np.where(ok, best_w[k2], 0)
    srt = np.where(ok, score * (2 ** 20) + np.where(ok, steps.ids, 0), np.iinfo(np.int64).max // 4)  # padding last
    spos = np.argsort(np.argsort(srt, axis=1, kind="stable"), axis=1, kind="stable")
    return {"rank": np.where(ok, best_rank[k2], NO_DROP).astype(np.int32),
            "pairs": np.where(ok, np.bincount(key, minlength=V * E)[k2], 0).astype(np.int32),
            "score": score.astype(np.int32), "spos": spos.astype(np.int32)}



@functools.lru_cache(maxsize=None)
def _runner(spec: PfSpec, multi: bool = False):
    init, step = make_pf_policy(spec)
    # multi: each configuration has its own plan (pf_ids batched), the rest of the visit is shared
    vis_axes = PfVisit(layer=None, new_pass=None, ids=None, pf_ids=0, rank=None, pairs=None,
                       units=None, pin=None, issue=None) if multi else None
    vstep = jax.vmap(step, in_axes=(0, vis_axes, 0))

    def run(params, states, xs):
        def body(st, x):
            st, nm = vstep(st, x, params)
            return st, nm
        return lax.scan(body, states, xs)

    return jax.jit(jax.vmap(init)), jax.jit(run, donate_argnums=(1,))


@dataclasses.dataclass
class PfResult:
    """Outcome of :func:`run_instant` for ``B`` configurations.

    Attributes:
        totals: int64[B, 6] ``engine.COUNTER_NAMES``; per_layer: int64[B, 6, L].
        pf_totals: dict name -> int64[B]: ``pf_issued`` (= arrived: instant), ``pf_resident``,
            ``pf_dropped``, ``pf_useful``, ``pf_wasted`` (admitted, evicted before any demand),
            ``pf_unused_end`` (admitted, still resident and never demanded at the end);
            under ``prefetch_issue="at_router"`` also ``pf_pending`` (a proposal whose demand
            copy its turn had just queued).
        resident: bool[B, N]; max_occupancy: int64[B].
        pass_misses: int64[B, P] demand misses per pass (summed over the pass's turns).
        plan_index: int64[B] the plan of each configuration (configurations are plan-major,
            then capacity, then drop threshold).
        drop_rank: int64[B] the ``drop_priority`` threshold of each configuration.
        reading: the execution reading replayed (:class:`~specmd_jax.core.timing.Reading`).
        num_turns: scan steps of the replay (visits, or experts under ``execution="expert"``).
        visit_demands: int64[S] distinct experts demanded per visit (the layer compute of
            :meth:`Hardware.layer_ticks` when ``expert_us`` is set; :func:`timing`'s ``demands``).
    """

    totals: np.ndarray
    per_layer: np.ndarray
    pf_totals: dict
    resident: np.ndarray
    max_occupancy: np.ndarray
    pass_misses: np.ndarray
    compile_s: float
    run_s: float
    plan_index: np.ndarray = None
    drop_rank: np.ndarray = None
    reading: Reading = None
    num_turns: int = 0
    visit_demands: np.ndarray = None


def _plans(plan, S: int, source: str):
    """(list of plans, stacked ids int32[n_plans, S, Qmax], max depth); validates the sizes."""
    plans = [plan] if isinstance(plan, PrefetchPlan) else list(plan)
    if not plans:
        raise ValueError("no prefetch plan given")
    for p in plans:
        if p.ids.shape[0] != S:
            raise ValueError(f"plan has {p.ids.shape[0]} visits, trace {source} has {S}")
        srt = np.sort(p.ids, axis=1)
        dup = (srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)
        if dup.any():  # the kernels would queue a repeat twice; the reference counts it as pending
            s = int(np.argmax(dup.any(axis=1)))
            raise ValueError(f"plan {p.config} proposes expert {int(srt[s, 1:][dup[s]][0])} twice at visit {s}: "
                             "a visit's proposals must be distinct (make_plan's always are)")
    Q = max(p.ids.shape[1] for p in plans)
    stack = np.full((len(plans), S, Q), -1, np.int32)
    for i, p in enumerate(plans):
        stack[i, :, : p.ids.shape[1]] = p.ids
    return plans, stack, max(int(p.config.depth) for p in plans)


def _n_proposals(plan) -> int:
    """The most proposals any one of ``plan``'s plans makes over the trace."""
    plans = [plan] if isinstance(plan, PrefetchPlan) else list(plan)
    return max((int(np.sum(np.asarray(p.ids) >= 0)) for p in plans), default=0)


def _cols(a: np.ndarray, width: int, fill) -> np.ndarray:
    """``a`` ([rows, w]) padded with columns of ``fill`` to ``width`` (unchanged if already as wide)."""
    if a.shape[1] >= width:
        return a
    return np.concatenate([a, np.full((a.shape[0], width - a.shape[1]), fill, a.dtype)], axis=1)


def _take(a: np.ndarray, lo: int, hi: int, pad: int, fill) -> np.ndarray:
    """Rows [lo, hi) of ``a``, padded with ``pad`` rows of ``fill`` (a chunk of the scan's xs)."""
    a = a[lo:hi]
    return np.concatenate([a, np.full((pad,) + a.shape[1:], fill, a.dtype)]) if pad else a


def _run_chunks(key, run, params, states, xs_of, S: int, chunk: int, extra: tuple = ()):
    """Compile once per ``key`` (cached), then scan the trace chunk by chunk (``extra``: further
    arguments of ``run``, the same for every chunk).

    Returns (states, per-step outputs as numpy [S, ...], compile_s, run_s)."""
    t0 = time.perf_counter()
    compiled = _COMPILED.get(key)
    if compiled is None:
        compiled = _COMPILED[key] = run.lower(params, states, xs_of(0), *extra).compile()
    compile_s = time.perf_counter() - t0
    ys = []
    t0 = time.perf_counter()
    for lo in range(0, S, chunk):
        states, y = compiled(params, states, xs_of(lo), *extra)
        ys.append(np.asarray(y)[: min(chunk, S - lo)])
    jax.block_until_ready(states)
    return states, np.concatenate(ys), compile_s, time.perf_counter() - t0


def _pf_chunk(stack: np.ndarray, lo: int, hi: int, pad: int, reps: int, multi: bool) -> np.ndarray:
    """Proposals of steps [lo, hi) padded to the chunk: int32[chunk, Q] (one plan) or
    int32[chunk, n_plans * reps, Q] (one row per configuration, plan-major)."""
    a = stack[:, lo:hi]
    if pad:
        a = np.concatenate([a, np.full((a.shape[0], pad, a.shape[2]), -1, np.int32)], axis=1)
    if not multi:
        return a[0]
    return np.repeat(a.transpose(1, 0, 2), reps, axis=1)


def _pin_pieces(need: np.ndarray, width: int, chunk: int) -> list:
    """Scan pieces ``(lo, hi, length, pin width)`` of a replay whose turns pin their visit's whole
    demand: turn ``t`` needs a pin set of ``need[t]`` ids. The pin work is ``[w, w]`` per
    configuration and turn, so the turns run at a bucketed width (a power of two >= 8, at most
    ``width``) rather than the trace's widest visit: runs of turns of one bucket, a run shorter than
    ``min(chunk, 256)`` turns joined to the next (at the wider width), cut into pieces of at most
    ``chunk`` turns, each padded to a power of two of at least ``min(chunk, 1024)`` turns (one
    program per distinct width and length)."""
    T = len(need)
    b = np.minimum(np.maximum(8, 1 << np.ceil(np.log2(np.maximum(need, 1))).astype(np.int64)), width)
    cut = np.flatnonzero(np.r_[True, b[1:] != b[:-1]])
    runs, min_run = [], min(chunk, 256)
    for lo, hi in zip(cut, np.r_[cut[1:], T]):
        w = int(b[lo])
        if runs and runs[-1][1] - runs[-1][0] < min_run:
            runs[-1] = [runs[-1][0], int(hi), max(runs[-1][2], w)]
        else:
            runs.append([int(lo), int(hi), w])
    if len(runs) > 1 and runs[-1][1] - runs[-1][0] < min_run:
        last = runs.pop()
        runs[-1] = [runs[-1][0], last[1], max(runs[-1][2], last[2])]
    return [(lo, min(hi, lo + chunk), min(chunk, max(1024, 1 << max(0, (min(hi, lo + chunk) - lo - 1).bit_length()))), w)
            for a, hi, w in runs for lo in range(a, hi, chunk)]


def _run_pieces(key, run, params, states, xs_of, pieces: list):
    """:func:`_run_chunks` over pieces ``(lo, hi, length, width)`` of different shapes (one compiled
    program per distinct (``key``, width, length), cached)."""
    ys, compile_s, run_s = [], 0.0, 0.0
    for lo, hi, n, w in pieces:
        xs = xs_of(lo, hi, n, w)
        t0 = time.perf_counter()
        compiled = _COMPILED.get(key + (w, n))
        if compiled is None:
            compiled = _COMPILED[key + (w, n)] = run.lower(params, states, xs).compile()
        t1 = time.perf_counter()
        states, y = compiled(params, states, xs)
        ys.append(np.asarray(y)[: hi - lo])
        compile_s, run_s = compile_s + t1 - t0, run_s + time.perf_counter() - t1
    jax.block_until_ready(states)
    return states, np.concatenate(ys), compile_s, run_s


def run_instant(trace: Trace, policy: str, capacities, plan, *, drop_ranks=None,
                chunk_steps: int = 8192, reading: Reading = None) -> PfResult:
    """Replay ``trace`` with proposals inserted instantly, for every capacity at once.

    ``plan`` is a :class:`PrefetchPlan` or a list of them: with several, every (plan, capacity)
    pair is a configuration of the same compiled program (prefetch parameters as a vmapped axis).
    ``drop_ranks``: thresholds of the ``drop_priority`` miss policy, one more axis (``None``:
    fetch). ``reading``: the execution reading (:class:`~specmd_jax.core.timing.Reading`; default:
    whole visits, proposals after the use, the visit's demand pinned). Its three dimensions are
    static: each (execution, prefetch_issue, pin) is compiled once (``pin`` only matters under
    ``execution="expert"``), and the scan runs over its turns (:mod:`specmd_jax.core.turns`), ``chunk_steps``
    turns at a time.
    """
    reading = (reading if reading is not None else Reading())
    if not isinstance(reading, Reading):
        raise TypeError(f"reading must be a specmd_jax.core.timing.Reading, got {type(reading).__name__}")
    reading = reading.canonical
    expert = reading.execution == "expert"
    L, E = trace.shape.num_layers, trace.shape.num_experts
    steps = prepare_steps(trace, "pinned")
    S = steps.num_steps
    plans, stack, depth = _plans(plan, S, trace.source)
    multi = len(plans) > 1
    caps0 = checks.capacities(capacities, limit=16000, why="the instant kernel ranks residents in int16")
    problem = checks.count_problem(trace, _n_proposals(plan), bits=1)   # bits served are counted on the host
    if problem:
        raise ValueError(problem)
    drops = np.atleast_1d(np.asarray([NO_DROP] if drop_ranks is None else drop_ranks, np.int64))
    if np.any(drops < 0):
        raise ValueError(f"drop ranks must be >= 0, got {drops.tolist()}")
    M = len(drops)
    caps = np.repeat(np.tile(caps0, len(plans)), M)
    db = np.tile(drops, len(plans) * len(caps0))
    # Least-Stale's one-layer shortcut holds when every proposal is of the next layer (make_plan
    # with depth 1); a plan proposing any other layer takes the per-layer path
    if depth < 2 and not np.all((stack < 0) | (stack // E == steps.layer[None, :, None] + 1)):
        depth = 2
    turns = prepare_turns(trace, steps, reading.execution)
    T = turns.num_turns
    pin_width = steps.width if expert and reading.pin == "visit" else 0
    spec = PfSpec(policy, L, E, int(turns.ids.shape[1]), int(stack.shape[2]), depth,
                  full_demand=drop_ranks is None, execution=reading.execution, issue=reading.prefetch_issue,
                  pin_width=pin_width)
    init, run = _runner(spec, multi)
    B = caps.shape[0]
    params = PfParams(capacity=jnp.asarray(caps, jnp.int32), drop_rank=jnp.asarray(np.minimum(db, NO_DROP), jnp.int32))
    det = demand_details(trace, steps)
    # per-turn inputs, shared by every configuration (the per-visit arrays themselves under "visit")
    layer = steps.layer[turns.visit]
    rank = turns.per_turn(det["rank"], NO_DROP)
    pairs = turns.per_turn(det["pairs"], 0)
    units = turns.per_turn(steps.units, 0)
    stack = turns.proposals(stack, reading.prefetch_issue)
    pin = steps.ids[turns.visit] if pin_width else None
    issue = (turns.first if reading.prefetch_issue == "at_router" else turns.last) if expert else None
    states = init(params)
    chunk = max(1, min(int(chunk_steps), 1 << max(0, (T - 1).bit_length())))
    if multi:  # keep the per-configuration proposals of a chunk under ~64 MiB
        chunk = max(1, min(chunk, (64 << 20) // max(1, B * stack.shape[2] * 4)))

    def xs_of(lo, hi=None, n=chunk, w=None):
        hi = min(T, lo + chunk) if hi is None else hi
        pad = n - (hi - lo)
        return PfVisit(layer=jnp.asarray(_take(layer, lo, hi, pad, 0)),
                       new_pass=jnp.asarray(_take(turns.new_pass, lo, hi, pad, False)),
                       ids=jnp.asarray(_take(turns.ids, lo, hi, pad, -1)),
                       pf_ids=jnp.asarray(_pf_chunk(stack, lo, hi, pad, len(caps0) * M, multi)),
                       rank=jnp.asarray(_take(rank, lo, hi, pad, NO_DROP)),
                       pairs=jnp.asarray(_take(pairs, lo, hi, pad, 0)),
                       units=jnp.asarray(_take(units, lo, hi, pad, 0)),
                       pin=None if pin is None else jnp.asarray(_take(pin[:, :w], lo, hi, pad, -1)),
                       issue=None if issue is None else jnp.asarray(_take(issue, lo, hi, pad, False)))

    if pin is None:
        states, nm, compile_s, run_s = _run_chunks((spec, multi, B, chunk), run, params, states, xs_of, T, chunk)
    else:  # the visit pin set at the width its turns need (decode visits are narrower than prefill ones)
        need = (pin >= 0).sum(axis=1)
        states, nm, compile_s, run_s = _run_pieces((spec, multi, B), run, params, states, xs_of,
                                                   _pin_pieces(need, pin_width, chunk))
    per_turn = nm.astype(np.int64)                               # [T, B]
    # a pass's turns are contiguous and every pass has L visits, each with a turn
    pass_misses = np.add.reduceat(per_turn, np.flatnonzero(turns.new_pass), axis=0).T
    per = np.asarray(states.per_layer, np.int64)
    pf = np.asarray(states.pf, np.int64).sum(axis=2)
    unused = np.asarray(states.pfu, np.int64).sum(axis=1)
    names = dict(zip(pf_counter_names(spec), pf.T))
    admitted = names["pf_issued"] - names["pf_dropped"]
    names["pf_unused_end"] = unused
    names["pf_wasted"] = admitted - names["pf_useful"] - unused
    return PfResult(totals=per.sum(axis=2), per_layer=per, pf_totals=names,
                    resident=np.asarray(states.rank) < GONE, max_occupancy=np.asarray(states.max_occ, np.int64),
                    pass_misses=pass_misses, compile_s=compile_s, run_s=run_s,
                    plan_index=np.repeat(np.arange(len(plans)), len(caps0) * M), drop_rank=db, reading=reading,
                    num_turns=T, visit_demands=(steps.ids >= 0).sum(axis=1).astype(np.int64))


def timing(trace: Trace, pass_misses: np.ndarray, hardware: Hardware, demands=None) -> dict:
    """Times (ticks) of replays whose turns stall ``misses x transfer`` (no prefetch, or instant
    prefetch, under every execution reading: the copy engine is idle when a turn starts):
    ``pass_ticks`` int64[B, P], ``stall_ticks`` int64[B], ``ttft_ticks`` float[B] (mean over
    requests with a prefill pass), ``tpot_ticks`` float[B] (mean decode pass).

    A pass computes the sum of its layers' :meth:`Hardware.layer_ticks` (how a layer's compute is
    split over its turns does not change the sum). With ``hardware.expert_us`` set that is
    ``n x expert_us`` for ``n`` demanded experts: ``demands`` int[S], the distinct experts of each
    pinned visit (:attr:`PfResult.visit_demands`; default: the trace's recorded demand, which is
    the demand under standard routing)."""
    L = trace.shape.num_layers
    x = hardware.transfer_ticks(trace.shape.expert_bytes)
    pre = trace.pass_phase == PREFILL
    if hardware.expert_us is not None:
        n = (np.asarray(demands, np.int64) if demands is not None
             else (prepare_steps(trace, "pinned").ids >= 0).sum(axis=1).astype(np.int64))
        if n.shape != (trace.num_passes * L,):
            raise ValueError(f"demands must hold one count per visit ({trace.num_passes * L}), got shape {n.shape}")
        comp = [int(c) * hardware.layer_ticks(False, 0, 1) for c in n.reshape(trace.num_passes, L).sum(axis=1)]
    else:
        comp = [L * hardware.compute_ticks(bool(ph), int(n)) for ph, n in zip(pre, trace.pass_tokens)]
    pm = np.asarray(pass_misses, np.int64)
    worst = sum(comp) + int(pm.sum(axis=1).max(initial=0)) * x      # Python ints: exact
    if worst > 2 ** 62:
        raise ValueError(f"hardware {hardware.name!r}: the passes of trace {trace.source} would total {worst} ticks, "
                         "past the timing model's int64 ticks (2**62 of 100 ns, about 14,600 years)")
    comp = np.asarray(comp, np.int64)
    pass_ticks = comp[None, :] + pm * x
    out = {"pass_ticks": pass_ticks, "stall_ticks": pm.sum(axis=1) * x, "transfer_ticks": x}
    reqs = np.unique(trace.pass_request[pre])
    if len(reqs):
        per_req = np.stack([pass_ticks[:, pre & (trace.pass_request == r)].sum(axis=1) for r in reqs], 1)
        out["ttft_ticks"] = per_req.mean(axis=1)
    else:
        out["ttft_ticks"] = np.full(pm.shape[0], np.nan)
    out["tpot_ticks"] = pass_ticks[:, ~pre].mean(axis=1) if (~pre).any() else np.full(pm.shape[0], np.nan)
    return out


@dataclasses.dataclass
class AsyncResult:
    """Outcome of :func:`run_async` for ``B = len(capacities) * len(hardware)`` configurations
    (capacity-major: config ``i * H + h``). Counters as :class:`PfResult` plus ``late``;
    ``pass_ticks`` int64[B, P]; ``stall_ticks`` int64[B, L] by layer; ``ttft_ticks`` /
    ``tpot_ticks`` float[B] (mean over requests with a prefill pass / over decode passes)."""

    capacities: np.ndarray
    hardware: list
    totals: np.ndarray
    per_layer: np.ndarray
    pf_totals: dict
    resident: np.ndarray
    max_occupancy: np.ndarray
    pass_ticks: np.ndarray
    stall_ticks: np.ndarray
    ttft_ticks: np.ndarray
    tpot_ticks: np.ndarray
    compile_s: float
    run_s: float
    plan_index: np.ndarray = None
    miss_index: np.ndarray = None  # int64[B] index into run_async's ``misses`` of each configuration
    routing_index: np.ndarray = None  # int64[B] index into run_async's ``routing`` list


class ClockOverflow(ValueError):
    """A pass outlasted the asynchronous kernel's int32 clock (2**31 ticks of 100 ns, 214 s)."""


def async_tick_problem(trace: Trace, hardware, precision=None, plan_ids=(), routed: bool = False, steps=None):
    """Why the asynchronous kernel could not even start timing ``trace`` on one of ``hardware``
    without an int32 product wrapping unseen (a message naming the profile and its numbers), or
    ``None``.

    The kernel keeps times in int32 ticks relative to the pass start (2**31 ticks = 214 s). It
    detects a sum that passes that range (the runner raises :class:`ClockOverflow`), but a
    *product* can wrap more than once and come out positive: one batch of copies (a visit's
    demand misses plus its proposals, at the slowest precision level's copy time), a prefill
    layer's compute (fixed + tokens x per token) and per-expert compute (demand x expert_us)
    must each fit, and so must every per-copy and per-layer number."""
    from specmd_jax.core.miss import Precision
    prec = precision if precision is not None else Precision()
    steps = steps if steps is not None else prepare_steps(trace, "pinned")
    E, K = trace.shape.num_experts, trace.shape.top_k
    dem = np.sum(steps.ids >= 0, axis=1).astype(np.int64)
    if routed:      # a routed visit demands at most min(E, tokens x K) experts
        dem = np.maximum(dem, np.minimum(E, np.diff(trace.cell_offsets).astype(np.int64) * K))
    prop = np.zeros(steps.num_steps, np.int64)
    for ids in plan_ids:
        prop = np.maximum(prop, np.sum(np.asarray(ids) >= 0, axis=1))
    batch = int((dem + prop).max(initial=0)) + 1
    tok = int(trace.pass_tokens.max(initial=0))
    eb = trace.shape.expert_bytes
    for h in hardware:
        x = max(h.transfer_ticks(prec.level_bytes(eb, i)) for i in range(len(prec.units)))
        need = {f"a batch of {batch} copies at {x} ticks each": batch * x,
                f"a prefill layer of {tok} tokens": h.compute_ticks(True, tok),
                "a decode layer": h.compute_ticks(False, 0),
                f"a layer of {int(dem.max(initial=0))} experts": h.layer_ticks(False, 0, int(dem.max(initial=0)))}
        for what, v in need.items():
            if v > checks.INT32_MAX:
                return (f"hardware {h.name!r} (bandwidth_gbps={h.bandwidth_gbps!r}, latency_us={h.latency_us!r}, "
                        f"decode_layer_us={h.decode_layer_us!r}, prefill_layer_us={h.prefill_layer_us!r}, "
                        f"prefill_token_us={h.prefill_token_us!r}, expert_us={h.expert_us!r}): {what} takes {v} "
                        f"ticks on trace {trace.source}, past the asynchronous kernel's int32 clock (2**31 ticks, "
                        "214 s per pass); engine='reference' is exact at any scale")
    return None


@functools.lru_cache(maxsize=None)
def _async_runner(spec, multi: bool = False):
    from specmd_jax.kernels.asynchronous import AsyncVisit, make_async_policy
    init, step = make_async_policy(spec)
    vis_axes = AsyncVisit(live=None, layer=None, new_pass=None, prefill=None, tokens=None, ids=None,
                          pf_ids=0, rank=None, pairs=None, units=None, lscore=None, score=None,
                          spos=None, row0=None, nrows=None, delta=None, turn=None, nturns=None, vdem=None,
                          pins=None) if multi else None
    vstep = jax.vmap(step, in_axes=(0, vis_axes, 0, None))

    def run(params, states, xs, tabs):
        return lax.scan(lambda st, x: vstep(st, x, params, tabs), states, xs)

    return jax.jit(jax.vmap(init)), jax.jit(run, donate_argnums=(1,))


def run_async(trace: Trace, policy: str, capacities, plan, hardware, *, misses=None, precision=None,
              routing=None, reading=None, chunk_steps: int = 8192) -> AsyncResult:
    """Asynchronous-prefetch replay of ``trace`` for every (plan, capacity, hardware profile, miss
    configuration) in one compiled program (:mod:`specmd_jax.kernels.asynchronous`; ``lru``, ``ls``,
    ``fifo``). ``plan``: a :class:`PrefetchPlan` or a list. ``misses``: a list of
    :class:`~specmd_jax.core.miss.MissConfig` sharing one structure (fetch and drop_priority mix;
    otherwise one policy whose numbers vary: thresholds, percentiles, levels); default fetch.
    ``precision``: :class:`~specmd_jax.core.miss.Precision` levels (``capacities`` then in units; mixed
    levels: weighted ranks). ``routing``: a list of :class:`~specmd_jax.core.routing.RoutingConfig`
    (``standard`` or ``cache_aware``, whose ``lam`` is vmapped data; ``standard`` runs as
    ``lam = 0``, which is the same routing exactly); not with ``substitute``. ``reading``: the
    execution reading (:class:`~specmd_jax.core.timing.Reading`; structural: one program per reading,
    the scan runs over its turns, :mod:`specmd_jax.core.turns`); per-expert execution with
    ``substitute`` or cache-aware routing runs in the reference only. Configurations are plan-major, then
    capacity, hardware, miss, routing."""
    from specmd_jax.kernels.asynchronous import ASYNC_COUNTER_NAMES, AsyncParams, AsyncSpec, AsyncVisit, rank_sentinels
    from specmd_jax.core.miss import MissConfig, Precision, structural_kind
    from specmd_jax.core.routing import RoutingConfig, gap_means, token_tables
    misses = list(misses) if misses is not None else [MissConfig()]
    prec = precision if precision is not None else Precision()
    kind, substitute = structural_kind(misses)
    routings = list(routing) if routing is not None else [RoutingConfig()]
    if not routings or not all(isinstance(rc, RoutingConfig) for rc in routings):
        raise TypeError("routing must be a non-empty list of RoutingConfig")
    routed = any(rc.active for rc in routings)
    if routed and substitute:
        raise ValueError("substitute with cache-aware routing runs in the reference (reference_timed), not the "
                         "asynchronous kernel")
    if routed and trace.logits is None and trace.weights is None:
        raise ValueError(f"cache-aware routing needs router logits or weights; trace {trace.source} has neither")
    rd = reading if reading is not None else Reading()
    expert = rd.execution == "expert"
    if expert and (routed or substitute):
        raise ValueError("per-expert execution with " + ("cache-aware routing" if routed else "substitute")
                         + " runs in the reference (reference_timed), not the asynchronous kernel")
    lams = np.array([float(rc.lam) if rc.active else 0.0 for rc in routings], np.float32)
    R = len(routings)
    L = trace.shape.num_layers
    steps = prepare_steps(trace, "pinned")
    plans, stack, _ = _plans(plan, steps.num_steps, trace.source)
    multi = len(plans) > 1
    caps0 = checks.capacities(capacities, limit=16000 if prec.units == (1,) else 2 ** 28,
                              why="the asynchronous kernel ranks residents in int16 (int32 units at mixed precision)")
    hws = checks.hardware_list(hardware)
    problem = checks.count_problem(trace, _n_proposals(plan), max(prec.bits))
    if problem:
        raise ValueError(problem)
    caps = np.tile(caps0, len(plans))
    H = len(hws)
    M = len(misses)
    B = len(caps) * H * M * R
    eb = trace.shape.expert_bytes
    NL = len(prec.units)
    problem = async_tick_problem(trace, hws, prec, [p.ids for p in plans], routed, steps)
    if problem is not None:
        raise ValueError(problem)
    xlv = np.array([[h.transfer_ticks(prec.level_bytes(eb, i)) for i in range(NL)] for h in hws], np.int64)
    hw_num = np.array([[h.compute_ticks(False, 0), h.compute_ticks(True, 0),
                        h.compute_ticks(True, 1) - h.compute_ticks(True, 0),
                        -1 if h.expert_us is None else to_ticks(h.expert_us * 1e-6)] for h in hws], np.int64)
    for hi, h in enumerate(hws):   # every number cast to int32 below (the pass bound above covers most)
        for nm, v in zip(("transfer ticks", "decode layer ticks", "prefill layer ticks", "prefill token ticks",
                          "expert ticks"), (*xlv[hi], *hw_num[hi])):
            checks.int32_fits(f"hardware {h.name!r}: {nm}", v, "ticks of 100 ns")
    cap_b = np.repeat(caps, H * M * R)
    hb = np.tile(np.repeat(np.arange(H), M * R), len(caps))
    mb = np.tile(np.repeat(np.arange(M), R), len(caps) * H)
    rb = np.tile(np.arange(R), len(caps) * H * M)
    drop = np.array([m.rank_threshold if m.policy == "drop_priority" else NO_DROP for m in misses], np.int64)
    ncas = len(misses[0].thresholds) if kind == "cascade" else 0
    cas = np.array([m.threshold_units(SB_SCALE) if kind == "cascade" else () for m in misses], np.int64).reshape(M, ncas)
    params = AsyncParams(capacity=jnp.asarray(cap_b, jnp.int32), xfer=jnp.asarray(xlv[hb, 0], jnp.int32),
                         c_dec=jnp.asarray(hw_num[hb, 0], jnp.int32), c_pre0=jnp.asarray(hw_num[hb, 1], jnp.int32),
                         c_pre1=jnp.asarray(hw_num[hb, 2], jnp.int32),
                         drop_rank=jnp.asarray(np.minimum(drop[mb], NO_DROP), jnp.int32),
                         xfer_lv=jnp.asarray(xlv[hb], jnp.int32),
                         pct_milli=jnp.asarray([misses[i].percentile_milli for i in mb], jnp.int32),
                         degrade=jnp.asarray([misses[i].degrade_level for i in mb], jnp.int32),
                         cas_th=jnp.asarray(cas[mb], jnp.int32), lam=jnp.asarray(lams[rb], jnp.float32),
                         c_exp=jnp.asarray(hw_num[hb, 3], jnp.int32))
    det = demand_details(trace, steps)
    E, K = trace.shape.num_experts, trace.shape.top_k
    nrows = np.diff(trace.cell_offsets).astype(np.int32)
    # a routed visit demands at most min(E, tokens x K) experts (the step replaces the visit's
    # recorded demand fields with its own W-wide ones, so the host arrays keep their width)
    width = max(steps.width, int(np.minimum(E, nrows * K).max(initial=0))) if routed else steps.width
    turns = prepare_turns(trace, steps, rd.execution)
    if expert:
        width = 1
    # XLA:CPU compiles a step whose demand (or pinned set) is one wide about 3x slower than a
    # two-wide one (measured: 7.3 vs 2.4 ms per step at 1,024 configurations, OLMoE shape); a
    # padding column (-1) costs nothing, so every width is at least 2
    width = max(width, 2)
    pin_width = max(steps.width, 2) if expert and not rd.pins_running else 0
    spec = AsyncSpec(policy, L, E, width, int(stack.shape[2]), bool(substitute),
                     units=tuple(prec.units), miss_kind=kind, cascade_len=ncas, bits=tuple(prec.bits),
                     full_demand=not substitute and all(m.policy != "drop_priority" for m in misses),
                     routing=routed, top_k=K if routed else 0, issue=rd.prefetch_issue, pin_width=pin_width)
    if routed:
        tabs = {k: jnp.asarray(v) for k, v in token_tables(trace).items()}
        row0 = trace.cell_offsets[:-1].astype(np.int32)
        delta = gap_means(trace)
    else:
        tabs, row0, delta = {}, None, None
    lscore = running_scores(trace, steps) if substitute else np.zeros((steps.num_steps, 1), np.int32)
    init, run = _async_runner(spec, multi)
    states = init(params)
    S = turns.num_turns
    pre = trace.pass_phase == PREFILL
    tv = turns.visit                                                  # each turn's visit
    prefill = pre[steps.pass_[tv]]
    tokens = trace.pass_tokens[steps.pass_[tv]].astype(np.int32)
    layer_t = steps.layer[tv]
    vdem = np.sum(steps.ids >= 0, axis=1).astype(np.int32)[tv]
    stack = turns.proposals(stack, rd.prefetch_issue)
    hw_ = turns.ids.shape[1] if routed else width     # a routed step replaces the host's demand rows
    det = {k: _cols(turns.per_turn(v, NO_DROP if k == "rank" else 0), hw_, NO_DROP if k == "rank" else 0)
           for k, v in det.items()}
    units_t = _cols(turns.per_turn(steps.units, 0), hw_, 0)
    ids_t = _cols(turns.ids, hw_, -1)
    pins = _cols(steps.ids[tv], pin_width, -1) if pin_width else None
    lscore = lscore[tv]
    chunk = max(1, min(int(chunk_steps), 1 << max(0, (S - 1).bit_length())))
    if multi:
        chunk = max(1, min(chunk, (64 << 20) // max(1, B * stack.shape[2] * 4)))

    live = np.ones(S, bool)

    def xs_of(lo):
        hi = min(S, lo + chunk)
        pad = chunk - (hi - lo)
        return AsyncVisit(live=jnp.asarray(_take(live, lo, hi, pad, False)),
                          layer=jnp.asarray(_take(layer_t, lo, hi, pad, 0)),
                          new_pass=jnp.asarray(_take(turns.new_pass, lo, hi, pad, False)),
                          prefill=jnp.asarray(_take(prefill, lo, hi, pad, False)),
                          tokens=jnp.asarray(_take(tokens, lo, hi, pad, 0)),
                          ids=jnp.asarray(_take(ids_t, lo, hi, pad, -1)),
                          pf_ids=jnp.asarray(_pf_chunk(stack, lo, hi, pad, len(caps0) * H * M * R, multi)),
                          rank=jnp.asarray(_take(det["rank"], lo, hi, pad, NO_DROP)),
                          pairs=jnp.asarray(_take(det["pairs"], lo, hi, pad, 0)),
                          units=jnp.asarray(_take(units_t, lo, hi, pad, 0)),
                          lscore=jnp.asarray(_take(lscore, lo, hi, pad, 0)),
                          score=jnp.asarray(_take(det["score"], lo, hi, pad, 0)),
                          spos=jnp.asarray(_take(det["spos"], lo, hi, pad, 0)),
                          row0=None if row0 is None else jnp.asarray(_take(row0, lo, hi, pad, 0)),
                          nrows=None if row0 is None else jnp.asarray(_take(nrows, lo, hi, pad, 0)),
                          delta=None if row0 is None else jnp.asarray(_take(delta, lo, hi, pad, 0.0)),
                          turn=jnp.asarray(_take(turns.index, lo, hi, pad, 0)),
                          nturns=jnp.asarray(_take(turns.count, lo, hi, pad, 1)),
                          vdem=jnp.asarray(_take(vdem, lo, hi, pad, 0)),
                          pins=None if pins is None else jnp.asarray(_take(pins, lo, hi, pad, -1)))

    key = ("async", spec, multi, B, chunk) + ((tabs["cid"].shape,) if routed else ())
    states, ends, compile_s, run_s = _run_chunks(key, run, params, states, xs_of, S, chunk, (tabs,))
    ovf = np.asarray(states.ovf)
    if ovf.any():
        b = int(np.argmax(ovf))
        raise ClockOverflow(f"a pass lasted over 2**31 ticks (214 s) for capacity {int(cap_b[b])} on hardware "
                            f"{hws[hb[b]].name!r} ({hws[hb[b]].bandwidth_gbps} GB/s): int32 time overflow; use the "
                            "reference (engine='reference', or reference_timed) for such settings")
    t_end = ends.astype(np.int64).T                                   # [B, T], relative to pass start
    last = np.flatnonzero(np.r_[turns.new_pass[1:], True])            # last turn of each pass
    pass_ticks = t_end[:, last]
    t_start = np.where(turns.new_pass[None, :], 0, np.concatenate([np.zeros((B, 1), np.int64), t_end[:, :-1]], 1))
    comp = np.where(prefill[None, :], hw_num[hb, 1][:, None] + tokens[None, :] * hw_num[hb, 2][:, None],
                    hw_num[hb, 0][:, None])
    comp = np.where(hw_num[hb, 3][:, None] >= 0, hw_num[hb, 3][:, None] * vdem[None, :], comp)
    comp = comp // turns.count[None, :] + (turns.index[None, :] < comp % turns.count[None, :])   # turn_share
    stall = t_end - t_start - comp                                    # [B, T]
    stall_l = np.stack([stall[:, layer_t == l].sum(axis=1) for l in range(L)], 1)
    reqs = np.unique(trace.pass_request[pre])
    ttft = (np.stack([pass_ticks[:, pre & (trace.pass_request == r)].sum(axis=1) for r in reqs], 1).mean(axis=1)
            if len(reqs) else np.full(B, np.nan))
    tpot = pass_ticks[:, ~pre].mean(axis=1) if (~pre).any() else np.full(B, np.nan)
    per = np.asarray(states.per_layer, np.int64)
    pf = np.asarray(states.pf, np.int64)
    names = {n: pf[:, i].sum(axis=1) for i, n in enumerate(ASYNC_COUNTER_NAMES)}
    gone_sentinel = rank_sentinels(spec)[2]
    resident = np.asarray(states.rank) < gone_sentinel
    unused = (np.asarray(states.pfu) & resident).sum(axis=1)
    admitted = names["pf_arrived"] - names["pf_dropped"]
    names["pf_unused_end"] = unused
    names["pf_wasted"] = admitted - (names["pf_useful"] - names["late"]) - unused
    return AsyncResult(capacities=cap_b, hardware=[hws[i] for i in hb], totals=per.sum(axis=2), per_layer=per,
                       pf_totals=names, resident=resident,
                       max_occupancy=np.asarray(states.max_occ, np.int64), pass_ticks=pass_ticks,
                       stall_ticks=stall_l, ttft_ticks=ttft, tpot_ticks=tpot, compile_s=compile_s, run_s=run_s,
                       plan_index=np.repeat(np.arange(len(plans)), len(caps0) * H * M * R), miss_index=mb,
                       routing_index=rb)
