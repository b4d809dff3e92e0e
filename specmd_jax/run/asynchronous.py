"""Sweeps with asynchronous prefetch and timing: one jitted vmap over one scan of
:mod:`specmd_jax.kernels.asynchronous`, for every (plan, capacity, hardware, miss configuration,
routing) at once."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from specmd_jax.core import checks
from specmd_jax.core.clock import ClockOverflow, async_tick_problem
from specmd_jax.core.counters import ASYNC_COUNTERS
from specmd_jax.core.prefetch import proposal_count, stack_plans
from specmd_jax.core.miss import NO_DROP, MissConfig, Precision, structural_kind
from specmd_jax.core.routing import RoutingConfig, gap_means, token_tables
from specmd_jax.core.semantics import SB_SCALE
from specmd_jax.core.steps import demand_details, prepare_steps, running_scores
from specmd_jax.core.timing import Reading, to_ticks
from specmd_jax.core.trace import PREFILL, Trace
from specmd_jax.core.turns import prepare_turns
from specmd_jax.run.cache import cached
from specmd_jax.run.feed import proposal_chunk, run_chunks, take_rows, pad_cols
from specmd_jax.kernels.asynchronous import AsyncParams, AsyncSpec, AsyncVisit, make_async_policy, rank_sentinels


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



@cached
def _async_runner(spec, multi: bool = False):
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
    misses = list(misses) if misses is not None else [MissConfig()]
    prec = precision if precision is not None else Precision()
    kind, substitute = structural_kind(misses)
    routings = list(routing) if routing is not None else [RoutingConfig()]
    if not routings or not all(isinstance(rc, RoutingConfig) for rc in routings):
        raise TypeError("routing must be a non-empty list of RoutingConfig")
    routed = any(rc.active for rc in routings)
    if routed and substitute:
        raise ValueError("substitute with cache-aware routing runs in the reference (specmd_jax.reference.simulate_timed), not the "
                         "asynchronous kernel")
    if routed and trace.logits is None and trace.weights is None:
        raise ValueError(f"cache-aware routing needs router logits or weights; trace {trace.source} has neither")
    rd = reading if reading is not None else Reading()
    expert = rd.execution == "expert"
    if expert and (routed or substitute):
        raise ValueError("per-expert execution with " + ("cache-aware routing" if routed else "substitute")
                         + " runs in the reference (specmd_jax.reference.simulate_timed), not the asynchronous kernel")
    lams = np.array([float(rc.lam) if rc.active else 0.0 for rc in routings], np.float32)
    R = len(routings)
    L = trace.shape.num_layers
    steps = prepare_steps(trace, "pinned")
    plans, stack, _ = stack_plans(plan, steps.num_steps, trace.source)
    multi = len(plans) > 1
    caps0 = checks.capacities(capacities, limit=16000 if prec.units == (1,) else 2 ** 28,
                              why="the asynchronous kernel ranks residents in int16 (int32 units at mixed precision)")
    hws = checks.hardware_list(hardware)
    problem = checks.count_problem(trace, proposal_count(plan), max(prec.bits))
    if problem:
        raise ValueError(problem)
    caps = np.tile(caps0, len(plans))
    H = len(hws)
    M = len(misses)
    B = len(caps) * H * M * R
    eb = trace.shape.expert_bytes
    problem = async_tick_problem(trace, hws, prec, [p.ids for p in plans], routed, steps)
    if problem is not None:
        raise ValueError(problem)
    xlv, hw_num = _hardware_numbers(hws, prec, eb)
    params, cap_b, hb, mb, rb = _params(caps, H, misses, kind, xlv, hw_num, lams)
    ncas = len(misses[0].thresholds) if kind == "cascade" else 0
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
    pin_sets = turns.pin_sets(steps, rd.pin)            # None: the turn's own demand is pinned
    pin_width = max(steps.width, 2) if pin_sets is not None else 0
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
    det = {k: pad_cols(turns.per_turn(v, NO_DROP if k == "rank" else 0), hw_, NO_DROP if k == "rank" else 0)
           for k, v in det.items()}
    units_t = pad_cols(turns.per_turn(steps.units, 0), hw_, 0)
    ids_t = pad_cols(turns.ids, hw_, -1)
    pins = pad_cols(pin_sets, pin_width, -1) if pin_sets is not None else None
    lscore = lscore[tv]
    chunk = max(1, min(int(chunk_steps), 1 << max(0, (S - 1).bit_length())))
    if multi:
        chunk = max(1, min(chunk, (64 << 20) // max(1, B * stack.shape[2] * 4)))

    live = np.ones(S, bool)

    def xs_of(lo):
        hi = min(S, lo + chunk)
        pad = chunk - (hi - lo)
        return AsyncVisit(live=jnp.asarray(take_rows(live, lo, hi, pad, False)),
                          layer=jnp.asarray(take_rows(layer_t, lo, hi, pad, 0)),
                          new_pass=jnp.asarray(take_rows(turns.new_pass, lo, hi, pad, False)),
                          prefill=jnp.asarray(take_rows(prefill, lo, hi, pad, False)),
                          tokens=jnp.asarray(take_rows(tokens, lo, hi, pad, 0)),
                          ids=jnp.asarray(take_rows(ids_t, lo, hi, pad, -1)),
                          pf_ids=jnp.asarray(proposal_chunk(stack, lo, hi, pad, len(caps0) * H * M * R, multi)),
                          rank=jnp.asarray(take_rows(det["rank"], lo, hi, pad, NO_DROP)),
                          pairs=jnp.asarray(take_rows(det["pairs"], lo, hi, pad, 0)),
                          units=jnp.asarray(take_rows(units_t, lo, hi, pad, 0)),
                          lscore=jnp.asarray(take_rows(lscore, lo, hi, pad, 0)),
                          score=jnp.asarray(take_rows(det["score"], lo, hi, pad, 0)),
                          spos=jnp.asarray(take_rows(det["spos"], lo, hi, pad, 0)),
                          row0=None if row0 is None else jnp.asarray(take_rows(row0, lo, hi, pad, 0)),
                          nrows=None if row0 is None else jnp.asarray(take_rows(nrows, lo, hi, pad, 0)),
                          delta=None if row0 is None else jnp.asarray(take_rows(delta, lo, hi, pad, 0.0)),
                          turn=jnp.asarray(take_rows(turns.index, lo, hi, pad, 0)),
                          nturns=jnp.asarray(take_rows(turns.count, lo, hi, pad, 1)),
                          vdem=jnp.asarray(take_rows(vdem, lo, hi, pad, 0)),
                          pins=None if pins is None else jnp.asarray(take_rows(pins, lo, hi, pad, -1)))

    key = ("async", spec, multi, B, chunk) + ((tabs["cid"].shape,) if routed else ())
    states, ends, compile_s, run_s = run_chunks(key, run, params, states, xs_of, S, chunk, (tabs,))
    ovf = np.asarray(states.ovf)
    if ovf.any():
        b = int(np.argmax(ovf))
        raise ClockOverflow(f"a pass lasted over 2**31 ticks (214 s) for capacity {int(cap_b[b])} on hardware "
                            f"{hws[hb[b]].name!r} ({hws[hb[b]].bandwidth_gbps} GB/s): int32 time overflow; use the "
                            "reference (engine='reference', or specmd_jax.reference.simulate_timed) for such settings")
    pass_ticks, stall_l, ttft, tpot = _times(trace, turns, ends, hw_num[hb], prefill, tokens, layer_t, vdem)
    per = np.asarray(states.per_layer, np.int64)
    pf = np.asarray(states.pf, np.int64)
    names = {n: pf[:, i].sum(axis=1) for i, n in enumerate(ASYNC_COUNTERS)}
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


def _hardware_numbers(hws, prec, eb):
    """Per profile: the copy ticks of each precision level (``xlv`` int64[H, NL]) and the compute
    numbers (``hw_num`` int64[H, 4]: decode layer, prefill layer fixed, prefill per token, per
    expert or -1), each checked to fit the kernel's int32."""
    NL = len(prec.units)
    xlv = np.array([[h.transfer_ticks(prec.level_bytes(eb, i)) for i in range(NL)] for h in hws], np.int64)
    hw_num = np.array([[h.compute_ticks(False, 0), h.compute_ticks(True, 0),
                        h.compute_ticks(True, 1) - h.compute_ticks(True, 0),
                        -1 if h.expert_us is None else to_ticks(h.expert_us * 1e-6)] for h in hws], np.int64)
    for hi, h in enumerate(hws):   # every number cast to int32 below (the pass bound above covers most)
        for nm, v in zip(("transfer ticks", "decode layer ticks", "prefill layer ticks", "prefill token ticks",
                          "expert ticks"), (*xlv[hi], *hw_num[hi])):
            checks.int32_fits(f"hardware {h.name!r}: {nm}", v, "ticks of 100 ns")
    return xlv, hw_num


def _params(caps, H, misses, kind, xlv, hw_num, lams):
    """The vmapped numbers of every configuration (capacity-major, then hardware, miss, routing)
    and each configuration's capacity, hardware, miss and routing index."""
    M, R = len(misses), len(lams)
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
    return params, cap_b, hb, mb, rb


def _times(trace, turns, ends, hw_num, prefill, tokens, layer_t, vdem):
    """Pass, stall, TTFT and TPOT ticks from each turn's end time relative to its pass start
    (``ends`` [T, B]; ``hw_num`` [B, 4] each configuration's compute numbers)."""
    L = trace.shape.num_layers
    pre = trace.pass_phase == PREFILL
    B = ends.shape[1]
    t_end = ends.astype(np.int64).T                                   # [B, T], relative to pass start
    last = np.flatnonzero(np.r_[turns.new_pass[1:], True])            # last turn of each pass
    pass_ticks = t_end[:, last]
    t_start = np.where(turns.new_pass[None, :], 0, np.concatenate([np.zeros((B, 1), np.int64), t_end[:, :-1]], 1))
    comp = np.where(prefill[None, :], hw_num[:, 1][:, None] + tokens[None, :] * hw_num[:, 2][:, None],
                    hw_num[:, 0][:, None])
    comp = np.where(hw_num[:, 3][:, None] >= 0, hw_num[:, 3][:, None] * vdem[None, :], comp)
    comp = comp // turns.count[None, :] + (turns.index[None, :] < comp % turns.count[None, :])   # turn_share
    stall = t_end - t_start - comp                                    # [B, T]
    stall_l = np.stack([stall[:, layer_t == l].sum(axis=1) for l in range(L)], 1)
    reqs = np.unique(trace.pass_request[pre])
    ttft = (np.stack([pass_ticks[:, pre & (trace.pass_request == r)].sum(axis=1) for r in reqs], 1).mean(axis=1)
            if len(reqs) else np.full(B, np.nan))
    tpot = pass_ticks[:, ~pre].mean(axis=1) if (~pre).any() else np.full(B, np.nan)
    return pass_ticks, stall_l, ttft, tpot
