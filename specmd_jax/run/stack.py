"""Exact LRU, demand-only Least-Stale and Belady sweeps for many capacities from one stack pass.

LRU is a stack algorithm (Mattson et al. 1970): with capacity ``C`` the cache holds the top
``C`` experts of one recency stack that does not depend on ``C``. One *unbatched* scan records,
for every demand, its stack depth before the visit (``depth``) and at the start of its pass
(``start``); every counter of every capacity then follows on the host with histograms:

* hit at ``C``         iff ``depth < C``;
* collision at ``C``   iff ``start < C <= depth`` (the expert was resident when the pass began
  and, being demanded at most once per pass, was evicted in this pass);
* the cache fills before it ever evicts, so a miss is a *fill* (no eviction) iff it is the
  ``k``-th distinct expert ever demanded with ``k <= C``; ``evictions = misses - fills``;
* occupancy is ``min(C, distinct experts so far)``; the final resident set is ``depth < C``.

Per-layer partitioned mode keeps one stack per layer (depth among the layer's experts) and
compares with the layer's share ``cap // L + (l < cap % L)``.

Where it applies: in ``pinned`` mode a visit moves its demand to the top as one block (lowest id
least protected, as the engine's ``mtt`` kind). That is LRU's decision exactly as long as the
demand fits (``|D| <= C``, so no bypass); capacities below the largest visit demand of their pool
are *not exact* here and :func:`run_auto` sends them to the scan engine. ``sequential`` mode needs
``C >= 1`` in pools with demand. ``ls`` takes the same path: in demand-only replay Least-Stale
makes LRU's decisions (see :mod:`specmd_jax.kernels.demand`). Cost: one ``O(N * W)`` step per visit for *all*
capacities, against ``O(B * N * W)`` for the vmapped scan.

``belady`` is a stack algorithm too (its priority, the next use, does not depend on capacity):
:func:`specmd_jax.run.belady.belady_scan` maintains the priority stack with two cumulative maxima
per access; the host side is the same as LRU's.
"""

from __future__ import annotations

import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from specmd_jax.policies import served_by
from specmd_jax.run.cache import cached, compile_lowered, table
from specmd_jax.core import checks
from specmd_jax.core.counters import DEMAND_COUNTERS
from specmd_jax.run.belady import INF_DEPTH, belady_keys, belady_scan
from specmd_jax.run.demand import RunResult, run_configs
from specmd_jax.core.semantics import MODES
from specmd_jax.core.trace import Trace
from specmd_jax.core.steps import StepArrays, prepare_steps

STACK_POLICIES = served_by("stack")
ENGINES = ("auto", "scan", "stack")
_COMPILED = table()  # (L, E, partitioned, S, W) -> compiled depth scan


@cached
def _depth_scan(num_layers: int, num_experts: int, partitioned: bool):
    """Jitted ``run(xs) -> (depth int16[S, W], start int16[S, W], final int16[N])``."""
    L, E = num_layers, num_experts
    N = L * E
    layer_of = jnp.arange(N, dtype=jnp.int32) // E

    def body(carry, x):
        pos, start = carry
        start = jnp.where(x["new_pass"], pos, start)
        ids = x["ids"]
        valid = ids >= 0
        idx = jnp.where(valid, ids, 0)
        depth = jnp.where(valid, pos[idx], INF_DEPTH)
        sdepth = jnp.where(valid, start[idx], INF_DEPTH)
        moved = jnp.sum(valid[:, None] & (depth[:, None] > pos[None, :]), axis=0, dtype=jnp.int16)
        if partitioned:
            moved = jnp.where(layer_of == x["layer"], moved, 0).astype(jnp.int16)
        pos = jnp.where(pos < INF_DEPTH, pos + moved, pos).astype(jnp.int16)
        higher = jnp.sum(valid[None, :] & (ids[None, :] > ids[:, None]), axis=1, dtype=jnp.int16)
        pos = pos.at[jnp.where(valid, ids, N)].set(higher, mode="drop")
        return (pos, start), (depth, sdepth)

    def run(xs):
        init = (jnp.full((N,), INF_DEPTH, jnp.int16), jnp.full((N,), INF_DEPTH, jnp.int16))
        (pos, _), (depth, start) = lax.scan(body, init, xs)
        return depth, start, pos

    return jax.jit(run)


def pool_caps(capacities: np.ndarray, num_layers: int, partitioned: bool) -> np.ndarray:
    """int64[B, P]: each configuration's capacity per pool (``P = 1`` global, ``L`` partitioned)."""
    c = np.asarray(capacities, np.int64)[:, None]
    if not partitioned:
        return c
    lay = np.arange(num_layers)[None, :]
    return c // num_layers + (lay < c % num_layers)


def exact_mask(steps: StepArrays, capacities, num_layers: int, partitioned: bool) -> np.ndarray:
    """bool[B]: configurations whose LRU replay never bypasses (the stack path is exact)."""
    caps = np.atleast_1d(np.asarray(capacities, np.int64))
    demand = (steps.ids >= 0).sum(axis=1)
    P = num_layers if partitioned else 1
    need = np.zeros(P, np.int64)
    pool = steps.layer if partitioned else np.zeros(steps.num_steps, np.int64)
    np.maximum.at(need, pool, demand)
    return np.all(pool_caps(caps, num_layers, partitioned) >= need[None, :], axis=1)


def _count_below(values: np.ndarray, layer: np.ndarray, L: int, top: int) -> np.ndarray:
    """int64[L, top + 2]: ``out[l, c] = #{i : layer_i == l, values_i < c}`` for c in 0..top+1."""
    v = np.minimum(values.astype(np.int64), top + 1)
    h = np.bincount(layer.astype(np.int64) * (top + 2) + v, minlength=L * (top + 2)).reshape(L, top + 2)
    return np.concatenate([np.zeros((L, 1), np.int64), np.cumsum(h, axis=1)[:, :-1]], axis=1)


def _checked_inputs(trace: Trace, capacities, mode: str, partitioned: bool, steps: Optional[StepArrays],
                    policy: str) -> tuple[StepArrays, np.ndarray]:
    """The steps of ``trace`` in ``mode`` (``steps`` if given) and the checked capacities, after
    checking that the stack path serves ``policy`` and is exact at every capacity."""
    if policy not in STACK_POLICIES:
        raise ValueError(f"the stack path serves {STACK_POLICIES} only, not {policy!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    steps = steps if steps is not None else prepare_steps(trace, mode)
    if steps.mode != mode:
        raise ValueError(f"steps were prepared for mode {steps.mode!r}, not {mode!r}")
    L, E = trace.shape.num_layers, trace.shape.num_experts
    N = L * E
    if N > 32000:
        raise ValueError(f"the stack path holds depths in int16; L*E = {N} is above 32000")
    caps = checks.capacities(capacities)
    ok = exact_mask(steps, caps, L, partitioned)
    if not np.all(ok):
        raise ValueError(f"capacities {caps[~ok][:5].tolist()} are below the largest visit demand of "
                         f"their pool: LRU bypasses there and the stack path is not exact; use run_auto")
    return steps, caps


def _compiled_scan(steps: StepArrays, L: int, E: int, partitioned: bool, belady: bool):
    """The scan's inputs and its compiled program (cached per structure and shape):
    :func:`_depth_scan` for ``lru``/``ls``, :func:`specmd_jax.run.belady.belady_scan` for ``belady``."""
    xs = {"ids": jnp.asarray(steps.ids), "layer": jnp.asarray(steps.layer),
          "new_pass": jnp.asarray(steps.new_pass)}
    if belady:
        xs["nu"] = jnp.asarray(belady_keys(steps, L * E))
    key = (belady, L, E, bool(partitioned)) + steps.ids.shape
    compiled = _COMPILED.get(key)
    if compiled is None:
        scan = belady_scan if belady else _depth_scan
        compiled = _COMPILED[key] = compile_lowered(scan(L, E, bool(partitioned)).lower(xs))
    return compiled, xs


def _fill_order(first: np.ndarray, pool_of: np.ndarray) -> np.ndarray:
    """int64[D]: for each first demand (``first``), its rank ``k`` (1-based) among the distinct
    experts ever demanded in its pool (``pool_of``); 0 for the other demands."""
    order_k = np.zeros(len(pool_of), np.int64)
    for p in np.unique(pool_of[first]):
        sel = np.flatnonzero(first & (pool_of == p))
        order_k[sel] = np.arange(1, len(sel) + 1)
    return order_k


def _stack_counters(steps: StepArrays, caps: np.ndarray, depth, start, final, L: int, E: int,
                    partitioned: bool):
    """Every capacity's counters (int64[B, 6, L]), final resident sets (bool[B, N]), maximum
    occupancy (int64[B]) and hits in decode passes (int64[B]) from the scan's depths (see the
    module docstring)."""
    N = L * E
    depth, start, final = (np.asarray(a, np.int64) for a in (depth, start, final))
    valid = steps.ids >= 0
    lay = np.broadcast_to(steps.layer[:, None], steps.ids.shape)[valid]
    d, s = depth[valid], start[valid]
    top = E if partitioned else N
    B = caps.shape[0]
    pc = pool_caps(caps, L, partitioned)                          # [B, P]
    # column index into the [L, top + 2] tables per (config, layer)
    col = np.minimum(np.broadcast_to(pc, (B, L)) if partitioned else np.repeat(pc, L, axis=1), top + 1)
    rows = np.arange(L)[None, :]
    below_d = _count_below(d, lay, L, top)
    below_s = _count_below(s, lay, L, top)
    # fills: the k-th distinct expert ever demanded (k counted in its pool) is admitted into free
    # space iff k <= C; first demands are those with no finite depth yet
    first = d >= INF_DEPTH
    ids = steps.ids[valid]
    pool_of = (ids // E) if partitioned else np.zeros_like(ids)
    order_k = _fill_order(first, pool_of)
    fill_tab = _count_below(order_k[first] - 1, lay[first], L, top)   # (k - 1) < C  <=>  k <= C
    demands = np.bincount(lay, minlength=L).astype(np.int64)
    hits = below_d[rows, col]
    dec = np.broadcast_to(steps.decode[:, None], steps.ids.shape)[valid]
    dec_hits = _count_below(d[dec], lay[dec], L, top)[rows, col].sum(axis=1)
    coll = below_s[rows, col] - hits
    misses = demands[None, :] - hits
    fills = fill_tab[rows, col]
    per = np.zeros((B, len(DEMAND_COUNTERS), L), np.int64)
    per[:, DEMAND_COUNTERS.index("demands")] = demands[None, :]
    per[:, DEMAND_COUNTERS.index("hits")] = hits
    per[:, DEMAND_COUNTERS.index("misses")] = misses
    per[:, DEMAND_COUNTERS.index("collisions")] = coll
    per[:, DEMAND_COUNTERS.index("evictions")] = misses - fills
    # bypass stays 0: exact configurations never overflow
    if partitioned:
        distinct = np.array([np.count_nonzero(first & (pool_of == p)) for p in range(L)], np.int64)
        maxocc = np.minimum(pc, distinct[None, :]).max(axis=1)
        resident = final[None, :] < np.repeat(pc, E, axis=1)
    else:
        maxocc = np.minimum(caps, int(first.sum()))
        resident = final[None, :] < caps[:, None]
    return per, resident, maxocc, dec_hits


def run_stack(trace: Trace, capacities, *, mode: str = "pinned", partitioned: bool = False,
              steps: Optional[StepArrays] = None, policy: str = "lru") -> RunResult:
    """Counters of ``policy`` (``lru``, ``ls`` or ``belady``) for every configuration in
    ``capacities`` from one stack pass.

    Same outputs as :func:`specmd_jax.run.demand.run_configs`. Raises ``ValueError`` if a capacity is not exact
    on this trace (see :func:`exact_mask`; :func:`run_auto` handles those).
    """
    steps, caps = _checked_inputs(trace, capacities, mode, partitioned, steps, policy)
    L, E = trace.shape.num_layers, trace.shape.num_experts
    t0 = time.perf_counter()
    compiled, xs = _compiled_scan(steps, L, E, partitioned, policy == "belady")
    t1 = time.perf_counter()
    depth, start, final = jax.block_until_ready(compiled(xs))
    per, resident, maxocc, dec_hits = _stack_counters(steps, caps, depth, start, final, L, E, partitioned)
    return RunResult(totals=per.sum(axis=2), per_layer=per, resident=resident, max_occupancy=maxocc,
                     occupancy=None, compile_s=t1 - t0, run_s=time.perf_counter() - t1,
                     engine=np.full(len(resident), "jax-stack", object), decode_hits=dec_hits)


def run_auto(trace: Trace, policy: str, capacities, seeds=None, *, mode: str = "pinned",
             partitioned: bool = False, engine: str = "auto", steps: Optional[StepArrays] = None,
             **scan_kwargs) -> RunResult:
    """Dispatch a sweep: ``engine="scan"`` is :func:`specmd_jax.run.demand.run_configs`; ``"stack"`` is
    :func:`run_stack` (``lru``/``ls``/``belady`` only, exact capacities only); ``"auto"`` (default) uses the
    stack path for ``lru``/``ls``/``belady`` configurations where it is exact and the scan for the rest."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be 'auto', 'scan' or 'stack', got {engine!r}")
    caps = checks.capacities(capacities)
    problem = checks.count_problem(trace, bits=1)   # demand-only: no bits-served counter
    if problem:
        raise ValueError(problem)
    if engine == "stack" and policy not in STACK_POLICIES:
        raise ValueError(f"engine='stack' serves {STACK_POLICIES} only, not {policy!r}")
    if engine == "scan" or policy not in STACK_POLICIES or scan_kwargs.get("record"):
        return run_configs(trace, policy, caps, seeds, mode=mode, partitioned=partitioned, steps=steps,
                           **scan_kwargs)
    steps = steps if steps is not None else prepare_steps(trace, mode)
    if engine == "stack":
        return run_stack(trace, caps, mode=mode, partitioned=partitioned, steps=steps, policy=policy)
    ok = exact_mask(steps, caps, trace.shape.num_layers, partitioned) if steps.mode == mode else None
    if ok is None or not ok.any():
        return run_configs(trace, policy, caps, seeds, mode=mode, partitioned=partitioned, steps=steps,
                           **scan_kwargs)
    a = run_stack(trace, caps[ok], mode=mode, partitioned=partitioned, steps=steps, policy=policy)
    if ok.all():
        return a
    seeds = np.zeros_like(caps) if seeds is None else np.atleast_1d(np.asarray(seeds, np.int64))
    b = run_configs(trace, policy, caps[~ok], seeds[~ok], mode=mode, partitioned=partitioned, steps=steps,
                    **scan_kwargs)

    def merge(x, y):
        out = np.empty((len(caps),) + x.shape[1:], x.dtype)
        out[ok], out[~ok] = x, y
        return out

    return RunResult(totals=merge(a.totals, b.totals), per_layer=merge(a.per_layer, b.per_layer),
                     resident=merge(a.resident, b.resident), max_occupancy=merge(a.max_occupancy, b.max_occupancy),
                     occupancy=None, compile_s=a.compile_s + b.compile_s, run_s=a.run_s + b.run_s,
                     engine=merge(a.engine, b.engine), decode_hits=merge(a.decode_hits, b.decode_hits))
