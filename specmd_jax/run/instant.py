"""Sweeps with instantaneous prefetch: one jitted vmap over one scan of
:mod:`specmd_jax.kernels.instant`, for every (plan, capacity, drop threshold) at once. Times of any
number of hardware profiles follow from the recorded per-pass miss counts
(:func:`specmd_jax.core.clock.pass_times`)."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from specmd_jax.core import checks
from specmd_jax.core.prefetch import proposal_count, stack_plans
from specmd_jax.core.miss import NO_DROP
from specmd_jax.core.steps import demand_details, prepare_steps
from specmd_jax.core.timing import Reading
from specmd_jax.core.trace import Trace
from specmd_jax.core.turns import prepare_turns
from specmd_jax.run.cache import cached
from specmd_jax.run.feed import pin_pieces, proposal_chunk, run_chunks, run_pieces, take_rows
from specmd_jax.kernels.instant import PfParams, PfSpec, PfVisit, make_pf_policy, pf_counter_names
from specmd_jax.kernels.ranks import GONE


@cached
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
        totals: int64[B, 6] ``engine.DEMAND_COUNTERS``; per_layer: int64[B, 6, L].
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
            :meth:`Hardware.layer_ticks` when ``expert_us`` is set; :func:`~specmd_jax.core.clock.pass_times`'s ``demands``).
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



def _checked_reading(reading) -> Reading:
    """The canonical form of ``reading`` (default: :class:`~specmd_jax.core.timing.Reading`'s)."""
    reading = (reading if reading is not None else Reading())
    if not isinstance(reading, Reading):
        raise TypeError(f"reading must be a specmd_jax.core.timing.Reading, got {type(reading).__name__}")
    return reading.canonical


def _configurations(trace: Trace, capacities, plan, drop_ranks, S: int):
    """The plans stacked, the proposal depth, the capacities and drop thresholds per configuration
    (plan-major, then capacity, then drop threshold): ``(plans, stack, depth, caps0, caps, db, M)``."""
    plans, stack, depth = stack_plans(plan, S, trace.source)
    caps0 = checks.capacities(capacities, limit=16000, why="the instant kernel ranks residents in int16")
    problem = checks.count_problem(trace, proposal_count(plan), bits=1)   # bits served are counted on the host
    if problem:
        raise ValueError(problem)
    drops = np.atleast_1d(np.asarray([NO_DROP] if drop_ranks is None else drop_ranks, np.int64))
    if np.any(drops < 0):
        raise ValueError(f"drop ranks must be >= 0, got {drops.tolist()}")
    M = len(drops)
    caps = np.repeat(np.tile(caps0, len(plans)), M)
    db = np.tile(drops, len(plans) * len(caps0))
    return plans, stack, depth, caps0, caps, db, M


def _turn_inputs(trace: Trace, steps, turns, stack: np.ndarray, reading: Reading) -> dict:
    """Per-turn inputs, shared by every configuration (the per-visit arrays themselves under
    ``"visit"``): layer, rank, pairs, units, the proposals and the turns that issue them."""
    det = demand_details(trace, steps)
    return dict(layer=steps.layer[turns.visit], rank=turns.per_turn(det["rank"], NO_DROP),
                pairs=turns.per_turn(det["pairs"], 0), units=turns.per_turn(steps.units, 0),
                stack=turns.proposals(stack, reading.prefetch_issue),
                issue=turns.carries_proposals(reading.prefetch_issue))


def _visits(inp: dict, turns, pin, reps: int, multi: bool, T: int, chunk: int, lo: int, hi=None, n=None,
            w=None) -> PfVisit:
    """Turns ``[lo, hi)`` (default: one chunk from ``lo``) padded to ``n`` rows (default ``chunk``),
    the pin sets cut to ``w`` columns, as a ``PfVisit`` of arrays."""
    n = chunk if n is None else n
    hi = min(T, lo + chunk) if hi is None else hi
    pad = n - (hi - lo)
    issue = inp["issue"]
    return PfVisit(layer=jnp.asarray(take_rows(inp["layer"], lo, hi, pad, 0)),
                   new_pass=jnp.asarray(take_rows(turns.new_pass, lo, hi, pad, False)),
                   ids=jnp.asarray(take_rows(turns.ids, lo, hi, pad, -1)),
                   pf_ids=jnp.asarray(proposal_chunk(inp["stack"], lo, hi, pad, reps, multi)),
                   rank=jnp.asarray(take_rows(inp["rank"], lo, hi, pad, NO_DROP)),
                   pairs=jnp.asarray(take_rows(inp["pairs"], lo, hi, pad, 0)),
                   units=jnp.asarray(take_rows(inp["units"], lo, hi, pad, 0)),
                   pin=None if pin is None else jnp.asarray(take_rows(pin[:, :w], lo, hi, pad, -1)),
                   issue=None if issue is None else jnp.asarray(take_rows(issue, lo, hi, pad, False)))


def _pf_counters(spec: PfSpec, states) -> dict:
    """The prefetch counters by name (int64[B] each), with ``pf_unused_end`` and ``pf_wasted``."""
    pf = np.asarray(states.pf, np.int64).sum(axis=2)
    unused = np.asarray(states.pfu, np.int64).sum(axis=1)
    names = dict(zip(pf_counter_names(spec), pf.T))
    admitted = names["pf_issued"] - names["pf_dropped"]
    names["pf_unused_end"] = unused
    names["pf_wasted"] = admitted - names["pf_useful"] - unused
    return names


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
    reading = _checked_reading(reading)
    L, E = trace.shape.num_layers, trace.shape.num_experts
    steps = prepare_steps(trace, "pinned")
    S = steps.num_steps
    plans, stack, depth, caps0, caps, db, M = _configurations(trace, capacities, plan, drop_ranks, S)
    multi = len(plans) > 1
    # Least-Stale's one-layer shortcut holds when every proposal is of the next layer (make_plan
    # with depth 1); a plan proposing any other layer takes the per-layer path
    if depth < 2 and not np.all((stack < 0) | (stack // E == steps.layer[None, :, None] + 1)):
        depth = 2
    turns = prepare_turns(trace, steps, reading.execution)
    T = turns.num_turns
    pin = turns.pin_sets(steps, reading.pin)          # None: the turn's own demand is pinned
    pin_width = steps.width if pin is not None else 0
    spec = PfSpec(policy, L, E, int(turns.ids.shape[1]), int(stack.shape[2]), depth,
                  full_demand=drop_ranks is None, execution=reading.execution, issue=reading.prefetch_issue,
                  pin_width=pin_width)
    init, run = _runner(spec, multi)
    B = caps.shape[0]
    params = PfParams(capacity=jnp.asarray(caps, jnp.int32), drop_rank=jnp.asarray(np.minimum(db, NO_DROP), jnp.int32))
    inp = _turn_inputs(trace, steps, turns, stack, reading)
    states = init(params)
    chunk = max(1, min(int(chunk_steps), 1 << max(0, (T - 1).bit_length())))
    if multi:  # keep the per-configuration proposals of a chunk under ~64 MiB
        chunk = max(1, min(chunk, (64 << 20) // max(1, B * inp["stack"].shape[2] * 4)))
    xs_of = functools.partial(_visits, inp, turns, pin, len(caps0) * M, multi, T, chunk)
    if pin is None:
        states, nm, compile_s, run_s = run_chunks((spec, multi, B, chunk), run, params, states, xs_of, T, chunk)
    else:  # the visit pin set at the width its turns need (decode visits are narrower than prefill ones)
        need = (pin >= 0).sum(axis=1)
        states, nm, compile_s, run_s = run_pieces((spec, multi, B), run, params, states, xs_of,
                                                   pin_pieces(need, pin_width, chunk))
    per_turn = nm.astype(np.int64)                               # [T, B]
    # a pass's turns are contiguous and every pass has L visits, each with a turn
    pass_misses = np.add.reduceat(per_turn, np.flatnonzero(turns.new_pass), axis=0).T
    per = np.asarray(states.per_layer, np.int64)
    return PfResult(totals=per.sum(axis=2), per_layer=per, pf_totals=_pf_counters(spec, states),
                    resident=np.asarray(states.rank) < GONE, max_occupancy=np.asarray(states.max_occ, np.int64),
                    pass_misses=pass_misses, compile_s=compile_s, run_s=run_s,
                    plan_index=np.repeat(np.arange(len(plans)), len(caps0) * M), drop_rank=db, reading=reading,
                    num_turns=T, visit_demands=(steps.ids >= 0).sum(axis=1).astype(np.int64))
