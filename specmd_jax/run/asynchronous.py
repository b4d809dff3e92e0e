"""Sweeps with asynchronous prefetch and timing: one jitted vmap over one scan of
:mod:`specmd_jax.kernels.asynchronous`, for every (plan, capacity, hardware, miss configuration,
routing) at once."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from specmd_jax.core import checks
from specmd_jax.core.clock import ClockOverflow, async_tick_problem
from specmd_jax.core.counters import ASYNC_COUNTERS
from specmd_jax.core.prefetch import proposal_count, stack_plans
from specmd_jax.core.miss import MissConfig, Precision, structural_kind
from specmd_jax.core.routing import RoutingConfig, gap_means, token_tables
from specmd_jax.core.steps import demand_details, prepare_steps, running_scores
from specmd_jax.core.timing import Reading
from specmd_jax.core.trace import Trace
from specmd_jax.core.turns import prepare_turns
from specmd_jax.run.cache import cached
from specmd_jax.run.async_host import async_params, hardware_numbers, turn_chunk, turn_inputs, turn_times
from specmd_jax.run.feed import run_chunks
from specmd_jax.kernels.asynchronous import AsyncSpec, AsyncVisit, make_async_policy, rank_sentinels


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



def _checked_settings(trace: Trace, misses, precision, routing, reading):
    """The miss configurations, precision, structural miss kind, ``substitute``, routings, whether
    any routing is cache-aware, and the reading of a sweep, checked against what the asynchronous
    kernel runs."""
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
    return misses, prec, kind, substitute, routings, routed, rd


def _async_spec(trace: Trace, policy: str, steps, turns, stack, misses, prec, kind, substitute: bool,
                routed: bool, rd: Reading):
    """The kernel's static structure for this sweep, and the pin sets of the turns with their
    width: ``(spec, width, pin_sets, pin_width)``."""
    ncas = len(misses[0].thresholds) if kind == "cascade" else 0
    L, E, K = trace.shape.num_layers, trace.shape.num_experts, trace.shape.top_k
    nrows = np.diff(trace.cell_offsets).astype(np.int32)
    # a routed visit demands at most min(E, tokens x K) experts (the step replaces the visit's
    # recorded demand fields with its own W-wide ones, so the host arrays keep their width)
    width = max(steps.width, int(np.minimum(E, nrows * K).max(initial=0))) if routed else steps.width
    if rd.execution == "expert":
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
    return spec, width, pin_sets, pin_width


def _pf_counters(spec, states) -> tuple[dict, np.ndarray]:
    """The prefetch counters by name (int64[B] each, with ``pf_unused_end`` and ``pf_wasted``) and
    the final resident sets."""
    pf = np.asarray(states.pf, np.int64)
    names = {n: pf[:, i].sum(axis=1) for i, n in enumerate(ASYNC_COUNTERS)}
    gone_sentinel = rank_sentinels(spec)[2]
    resident = np.asarray(states.rank) < gone_sentinel
    unused = (np.asarray(states.pfu) & resident).sum(axis=1)
    admitted = names["pf_arrived"] - names["pf_dropped"]
    names["pf_unused_end"] = unused
    names["pf_wasted"] = admitted - (names["pf_useful"] - names["late"]) - unused
    return names, resident


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
    misses, prec, kind, substitute, routings, routed, rd = _checked_settings(trace, misses, precision, routing,
                                                                           reading)
    lams = np.array([float(rc.lam) if rc.active else 0.0 for rc in routings], np.float32)
    R = len(routings)
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
    problem = async_tick_problem(trace, hws, prec, [p.ids for p in plans], routed, steps)
    if problem is not None:
        raise ValueError(problem)
    xlv, hw_num = hardware_numbers(hws, prec, trace.shape.expert_bytes)
    params, cap_b, hb, mb, rb = async_params(caps, H, misses, kind, xlv, hw_num, lams)
    det = demand_details(trace, steps)
    turns = prepare_turns(trace, steps, rd.execution)
    spec, width, pin_sets, pin_width = _async_spec(trace, policy, steps, turns, stack, misses, prec, kind,
                                                   substitute, routed, rd)
    if routed:
        tabs = {k: jnp.asarray(v) for k, v in token_tables(trace).items()}
        routing_rows = (trace.cell_offsets[:-1].astype(np.int32), np.diff(trace.cell_offsets).astype(np.int32),
                        gap_means(trace))
    else:
        tabs, routing_rows = {}, (None, None, None)
    lscore = running_scores(trace, steps) if substitute else np.zeros((steps.num_steps, 1), np.int32)
    init, run = _async_runner(spec, multi)
    states = init(params)
    S = turns.num_turns
    inp = turn_inputs(trace, steps, turns, det, stack, lscore, routed, width, pin_sets, pin_width, rd.prefetch_issue)
    chunk = max(1, min(int(chunk_steps), 1 << max(0, (S - 1).bit_length())))
    if multi:
        chunk = max(1, min(chunk, (64 << 20) // max(1, B * inp["stack"].shape[2] * 4)))
    xs_of = functools.partial(turn_chunk, inp, routing_rows, len(caps0) * H * M * R, multi, S, chunk)
    key = ("async", spec, multi, B, chunk) + ((tabs["cid"].shape,) if routed else ())
    states, ends, compile_s, run_s = run_chunks(key, run, params, states, xs_of, S, chunk, (tabs,))
    ovf = np.asarray(states.ovf)
    if ovf.any():
        b = int(np.argmax(ovf))
        raise ClockOverflow(f"a pass lasted over 2**31 ticks (214 s) for capacity {int(cap_b[b])} on hardware "
                            f"{hws[hb[b]].name!r} ({hws[hb[b]].bandwidth_gbps} GB/s): int32 time overflow; use the "
                            "reference (engine='reference', or specmd_jax.reference.simulate_timed) for such settings")
    pass_ticks, stall_l, ttft, tpot = turn_times(trace, turns, ends, hw_num[hb], inp["prefill"], inp["tokens"],
                                                 inp["layer"], inp["vdem"])
    per = np.asarray(states.per_layer, np.int64)
    names, resident = _pf_counters(spec, states)
    return AsyncResult(capacities=cap_b, hardware=[hws[i] for i in hb], totals=per.sum(axis=2), per_layer=per,
                       pf_totals=names, resident=resident,
                       max_occupancy=np.asarray(states.max_occ, np.int64), pass_ticks=pass_ticks,
                       stall_ticks=stall_l, ttft_ticks=ttft, tpot_ticks=tpot, compile_s=compile_s, run_s=run_s,
                       plan_index=np.repeat(np.arange(len(plans)), len(caps0) * H * M * R), miss_index=mb,
                       routing_index=rb)
