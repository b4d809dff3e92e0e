"""Entry points: run one configuration or a vmapped sweep of many in one compiled program.

``jit``/``vmap`` live here only. The scan runs over steps (or, with ``unroll_layers``, over passes
with the ``L`` visits of a pass unrolled so layer slices are static: fewer loop trips, longer
compile). The trace is cut into equal chunks (padded with no-op steps) so a progress bar can
follow long runs without recompiling; one compile per (policy, shapes, batch size, options).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from specmd_jax.run.cache import cached, compile_lowered, table
from specmd_jax.core import checks
from specmd_jax.core.counters import DEMAND_COUNTERS
from specmd_jax.kernels.demand import Params, Spec, Visit, make_policy
from specmd_jax.kernels.ranks import GONE
from specmd_jax.core.semantics import INF_STEP, MODES
from specmd_jax.policies import served_by
from specmd_jax.core.trace import Trace
from specmd_jax.core.steps import StepArrays, prepare_steps


# configurations per block inside a step, by policy (see _runner); measured on 2 CPU cores:
# lfu 1.8 M acc/s unblocked at 1024 configs vs 4.0 M at 256
CONFIG_BLOCK = {"lfu": 256, "lfu_history": 256}
_COMPILED = table()  # (spec, batched, unroll, record, B, chunk) -> compiled executable


@cached
def _runner(spec: Spec, batched: bool, unroll: bool, record: bool, block: int = 0):
    """Jitted ``run(params, states, shared, xs) -> (states, shared, ys)`` for one structure.

    ``block > 0`` processes the configurations ``block`` at a time inside each step (a
    ``lax.map`` over blocks of a ``vmap``), so per-step intermediates of policies that build
    ``[configs, W, N]`` tensors (``lfu``) stay in cache; the batch must be a multiple of it.
    """
    pol = make_policy(spec)
    L = spec.num_layers
    step = jax.vmap(pol.step, in_axes=(0, None, None, 0)) if batched else pol.step
    if batched and block:
        vstep = step

        def step(states, x, shared, params):
            nb = jax.tree.leaves(params)[0].shape[0] // block
            split = lambda a: a.reshape((nb, block) + a.shape[1:])  # noqa: E731
            new, occ = lax.map(lambda sp: vstep(sp[0], x, shared, sp[1]),
                               (jax.tree.map(split, states), jax.tree.map(split, params)))
            return jax.tree.map(lambda a: a.reshape((nb * block,) + a.shape[2:]), new), occ.reshape(-1)

    def one(carry, x, params):
        shared, states = carry
        shared = pol.shared_step(shared, x)
        states, occ = step(states, x, shared, params)
        return (shared, states), occ

    def run(params, states, shared, xs):
        if unroll:
            def body(carry, xp):
                occs = []
                for l in range(L):
                    x = Visit(step=xp.step[l], pass_=xp.pass_[l], layer=l, new_pass=xp.new_pass[l],
                              ids=xp.ids[l], units=xp.units[l], next_use=xp.next_use[l], decode=xp.decode[l])
                    carry, occ = one(carry, x, params)
                    occs.append(occ)
                return carry, (jnp.stack(occs, -1) if record else None)
        else:
            def body(carry, x):
                carry, occ = one(carry, x, params)
                return carry, (occ if record else None)
        (shared, states), ys = lax.scan(body, (shared, states), xs)
        return states, shared, ys

    init = jax.jit(jax.vmap(pol.init) if batched else pol.init)
    return pol, init, jax.jit(run, donate_argnums=(1, 2))


def _width_segments(steps: StepArrays, L: int, narrow: int) -> list[tuple[int, int, int]]:
    """Split the steps into runs of whole passes, ``(lo, hi, width)``: passes whose visits all
    demand at most ``narrow`` experts (decode) run a program of that width; the others (wide
    prefill passes) run the full width. A step costs W compares per element, so decode steps
    of a trace with prefill need not pay the prefill's width."""
    W = steps.width
    if steps.mode != "pinned" or W <= narrow:
        return [(0, steps.num_steps, W)]
    demand = (steps.ids >= 0).sum(axis=1).reshape(-1, L).max(axis=1)   # per pass
    width = np.where(demand > narrow, W, narrow)
    cut = np.flatnonzero(np.diff(width)) + 1
    starts = np.concatenate([[0], cut])
    ends = np.concatenate([cut, [len(width)]])
    return [(int(a) * L, int(b) * L, int(width[a])) for a, b in zip(starts, ends)]


def _visits_xs(steps: StepArrays, lo: int, hi: int, chunk: int, unroll: bool, L: int,
               width: int) -> Visit:
    """Steps ``[lo, hi)`` with ids cut to ``width`` columns, padded with no-op steps to ``chunk``
    rows, as a ``Visit`` of arrays."""
    n = hi - lo
    pad = chunk - n

    def take(a, fill):
        a = a[lo:hi, :width] if a.ndim == 2 else a[lo:hi]
        if pad:
            a = np.concatenate([a, np.full((pad,) + a.shape[1:], fill, a.dtype)])
        return a

    last_step = int(steps.step[hi - 1]) if n else 0
    x = dict(step=take(steps.step, last_step), pass_=take(steps.pass_, 0), layer=take(steps.layer, 0),
             new_pass=take(steps.new_pass, False), ids=take(steps.ids, -1), units=take(steps.units, 0),
             next_use=take(steps.next_use, INF_STEP), decode=take(steps.decode, False))
    if pad and unroll:
        x["layer"][n:] = np.tile(np.arange(L, dtype=np.int32), pad // L)
    if unroll:
        x = {k: v.reshape((chunk // L, L) + v.shape[1:]) for k, v in x.items()}
    return Visit(**{k: jnp.asarray(v) for k, v in x.items()})


@dataclasses.dataclass
class RunResult:
    """Outcome of :func:`run_configs`.

    Attributes:
        totals: int64[B, 6] counters (``DEMAND_COUNTERS``); per_layer: int64[B, 6, L].
        resident: bool[B, N] final resident sets.
        max_occupancy: int64[B].
        occupancy: int32[S] pool occupancy after each step (single unbatched run with record).
        compile_s, run_s: seconds compiling, and running after it; decode_hits: int64[B] hits in decode passes.
        engine: str[B] the path that ran each configuration (``jax-scan``, ``jax-stack``, ``reference``).
    """

    totals: np.ndarray
    per_layer: np.ndarray
    resident: np.ndarray
    max_occupancy: np.ndarray
    occupancy: Optional[np.ndarray]
    compile_s: float
    run_s: float
    engine: Optional[np.ndarray] = None
    decode_hits: Optional[np.ndarray] = None


def _checked_inputs(trace: Trace, policy: str, capacities, seeds, mode: str, batched: bool, record: bool,
                    steps: Optional[StepArrays], unroll_layers: Optional[bool]):
    """:func:`run_configs`'s arguments checked: ``(caps, seeds, steps, unroll_layers)``."""
    if policy not in served_by("scan"):
        raise ValueError(f"the scan kernel does not serve policy {policy!r}; it serves {', '.join(served_by('scan'))}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if policy == "sb" and trace.weights is None:
        raise ValueError(f"policy 'sb' needs router weights; trace {trace.source} has none")
    caps = checks.capacities(capacities, limit=32000, why="the scan ranks residents in int16")
    problem = checks.count_problem(trace, bits=1)   # demand-only: no bits-served counter
    if problem:
        raise ValueError(problem)
    seeds = np.zeros_like(caps) if seeds is None else checks.seeds(seeds)
    if seeds.shape != caps.shape:
        raise ValueError(f"seeds shape {seeds.shape} != capacities shape {caps.shape}")
    if not batched and caps.shape[0] != 1:
        raise ValueError("batched=False runs exactly one configuration")
    if record and batched:
        raise ValueError("record=True needs batched=False")
    steps = steps if steps is not None else prepare_steps(trace, mode)
    if steps.mode != mode:
        raise ValueError(f"steps were prepared for mode {steps.mode!r}, not {mode!r}")
    if unroll_layers is None:
        # measured on XLA:CPU (2 cores, OLMoE, 1024 configs): unrolling the 16 layers compiles
        # 5-20x slower and runs no faster with the contiguous-rank kernels, so it is opt-in.
        unroll_layers = False
    if unroll_layers and mode != "pinned":
        raise ValueError("unroll_layers needs mode='pinned' (one step per visit)")
    return caps, seeds, steps, unroll_layers


def _blocked(policy: str, caps: np.ndarray, seeds: np.ndarray, batched: bool, config_block: Optional[int]):
    """``(block, caps, seeds)``: the configurations per block inside a step (0: all at once) and
    the configurations padded with capacity-0 ones to a whole number of blocks."""
    B = caps.shape[0]
    block = CONFIG_BLOCK.get(policy, 0) if config_block is None else int(config_block)
    block = block if (batched and 0 < block < B) else 0
    if block:  # pad with capacity-0 configurations to a whole number of blocks; trimmed below
        pad = -B % block
        caps = np.concatenate([caps, np.zeros(pad, caps.dtype)])
        seeds = np.concatenate([seeds, np.zeros(pad, seeds.dtype)])
    return block, caps, seeds


def _programs(spec: Spec, segments: list, steps: StepArrays, params: Params, batched: bool, unroll: bool,
              record: bool, block: int, chunk_steps: int, num_configs: int):
    """One compiled program per width class (cached per structure and shape) with its chunk length,
    the initial states and shared keys (which do not depend on the width), and the compile seconds:
    ``(programs {width: (compiled, chunk)}, states, shared, compile_s)``."""
    L, S = spec.num_layers, steps.num_steps
    programs, compile_s = {}, 0.0
    for w in sorted({w for _, _, w in segments}):
        longest = max(hi - lo for lo, hi, ww in segments if ww == w)
        # chunk: a power of two (at most chunk_steps) so traces of similar length share a compile
        chunk = max(1, min(int(chunk_steps), 1 << max(0, (longest - 1).bit_length())))
        if unroll:
            chunk = max(L, chunk // L * L)
        spec_w = spec._replace(width=w)
        pol, init, run = _runner(spec_w, bool(batched), bool(unroll), bool(record), block)
        if not programs:  # the state and the shared keys do not depend on the width
            states, shared = init(params), pol.shared_init()
        key = (spec_w, bool(batched), bool(unroll), bool(record), num_configs, chunk, block)
        t0 = time.perf_counter()
        compiled = _COMPILED.get(key)
        if compiled is None:  # numbers are data: only a new structure or shape compiles
            xs0 = _visits_xs(steps, 0, min(chunk, S), chunk, unroll, L, w)
            compiled = _COMPILED[key] = compile_lowered(run.lower(params, states, shared, xs0))
        compile_s += time.perf_counter() - t0
        programs[w] = (compiled, chunk)
    return programs, states, shared, compile_s


def _run_segments(programs: dict, segments: list, steps: StepArrays, params: Params, states, shared,
                  unroll: bool, L: int, record: bool, bar):
    """Run the trace segment by segment, chunk by chunk: ``(states, occupancies, run_s)``
    (occupancies: one array per chunk when ``record``)."""
    occs = []
    t0 = time.perf_counter()
    for seg_lo, seg_hi, w in segments:
        compiled, chunk = programs[w]
        for lo in range(seg_lo, seg_hi, chunk):
            hi = min(seg_hi, lo + chunk)
            xs = _visits_xs(steps, lo, hi, chunk, unroll, L, w)
            states, shared, ys = compiled(params, states, shared, xs)
            if record:
                occs.append(np.asarray(ys).reshape(-1)[: hi - lo])
            if bar is not None:
                jax.block_until_ready(states.max_occ)
                bar.update(hi - lo)
    jax.block_until_ready(states)
    return states, occs, time.perf_counter() - t0


def run_configs(trace: Trace, policy: str, capacities, seeds=None, *, mode: str = "pinned",
                partitioned: bool = False, unroll_layers: Optional[bool] = None,
                chunk_steps: int = 8192, batched: bool = True, record: bool = False,
                progress: bool = False, steps: Optional[StepArrays] = None,
                config_block: Optional[int] = None, split_widths: Optional[bool] = None) -> RunResult:
    """Replay ``trace`` for configurations ``(capacities[i], seeds[i])`` in one compiled program.

    Args:
        trace: the trace.
        policy: a name the scan kernel serves (:func:`specmd_jax.policies.served_by`).
        capacities: int[B] cache slots per configuration.
        seeds: int[B] seeds (``random`` policy), default zeros.
        mode: ``"pinned"`` or ``"sequential"``.
        partitioned: per-layer caches (capacity split over layers) instead of one global pool.
        unroll_layers: scan over passes with the ``L`` layers unrolled (pinned mode only);
            default off (see below).
        chunk_steps: steps per compiled chunk (rounded to whole passes when unrolled).
        batched: vmap over configurations; ``False`` runs a single configuration unbatched.
        record: return the occupancy after every step (single unbatched run only).
        progress: show a tqdm progress bar over chunks.
        steps: precomputed ``prepare_steps(trace, mode)`` to reuse across calls.
        config_block: configurations per block inside a step (0: all at once); default by
            policy from ``CONFIG_BLOCK``.
        split_widths: run decode passes with a program of width K and only the wide (prefill)
            passes at the full width (pinned mode); default on for traces of >= 2048 steps.
    """
    caps, seeds, steps, unroll_layers = _checked_inputs(trace, policy, capacities, seeds, mode, batched, record,
                                                        steps, unroll_layers)
    L, E = trace.shape.num_layers, trace.shape.num_experts
    spec = Spec(policy, L, E, steps.width, bool(partitioned))
    B = caps.shape[0]
    block, caps, seeds = _blocked(policy, caps, seeds, batched, config_block)
    if split_widths is None:  # small traces: one program (fewer compiles matter more there)
        split_widths = steps.num_steps >= 2048
    segments = (_width_segments(steps, L, trace.shape.top_k) if split_widths
                else [(0, steps.num_steps, steps.width)])
    S = steps.num_steps
    params = Params(capacity=jnp.asarray(caps, jnp.int32), seed=jnp.asarray(seeds, jnp.uint32))
    if not batched:
        params = jax.tree.map(lambda a: a[0], params)
    programs, states, shared, compile_s = _programs(spec, segments, steps, params, batched, unroll_layers, record,
                                                    block, chunk_steps, caps.shape[0])
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=S, desc=f"{policy} x{caps.shape[0]}", unit="step")
    states, occs, run_s = _run_segments(programs, segments, steps, params, states, shared, unroll_layers, L,
                                        record, bar)
    if bar is not None:
        bar.close()
    per = np.asarray(states.per_layer, np.int64).reshape(-1, len(DEMAND_COUNTERS), L)[:B]
    tot = per.sum(axis=2)
    res = (np.asarray(states.rank) < GONE).reshape(caps.shape[0], -1)[:B]
    return RunResult(totals=tot, per_layer=per, resident=res,
                     max_occupancy=np.asarray(states.max_occ, np.int64).reshape(-1)[:B],
                     decode_hits=np.asarray(states.dec_hits, np.int64).reshape(-1)[:B],
                     occupancy=np.concatenate(occs) if record else None,
                     compile_s=compile_s, run_s=run_s, engine=np.full(B, "jax-scan", object))
