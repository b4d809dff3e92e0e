"""Run the batch convention (``convention="bigmoeonedge"``) for many byte budgets in one compiled program.

The host turns the trace into batches once (:func:`batch_inputs`: distinct ids with their first
and last stamps, next uses, weight units), the budgets into integer units of the gcd of the
layers' expert bytes, and scans :mod:`specmd_jax.kernels.batches`'s step over the batches with
the budgets ``vmap``ped. ``jit``/``vmap`` live here only; one compile per (policy, pool, shapes).
"""

from __future__ import annotations

import dataclasses
import math
import time

import jax
import numpy as np
from jax import lax

from specmd_jax.core.semantics import INF_STEP, SB_SCALE
from specmd_jax.core.trace_fields import DECODE
from specmd_jax.kernels.batches import NCOUNT, BatchIn, BatchParams, BatchSpec, make_batch_policy
from specmd_jax.core.conventions import BATCH_COUNTERS
from specmd_jax.run.cache import cached, compile_lowered

INT32_MAX = 2 ** 31 - 1


@dataclasses.dataclass
class BatchRun:
    """Outcome of :func:`run_batches` for ``B`` budgets: ``totals`` int64[B, 9]
    (:data:`~specmd_jax.reference.batches.BATCH_COUNTERS`, bytes in bytes), ``per_layer`` int64[B, 9, L],
    ``resident`` bool[B, N], ``max_bytes`` int64[B], compile and run seconds."""

    totals: np.ndarray
    per_layer: np.ndarray
    resident: np.ndarray
    max_bytes: np.ndarray
    compile_s: float
    run_s: float


def batch_inputs(trace) -> dict:
    """The trace's non-empty ``(pass, layer)`` cells as padded batch arrays (numpy, one row per batch)."""
    L, E = trace.shape.num_layers, trace.shape.num_experts
    off, ex = trace.cell_offsets, trace.experts
    cells = np.flatnonzero(np.diff(off) > 0)
    rows = []
    clock = 0
    w = trace.weights
    for c in cells.tolist():
        p, l = divmod(c, L)
        a, b = int(off[c]), int(off[c + 1])
        ent = ex[a:b].reshape(-1).astype(np.int32) + l * E
        ids, first = np.unique(ent, return_index=True)
        _, rlast = np.unique(ent[::-1], return_index=True)
        units = np.zeros(len(ids), np.int64)
        if w is not None:
            np.add.at(units, np.searchsorted(ids, ent), np.round(w[a:b].reshape(-1).astype(np.float64) * SB_SCALE)
                      .astype(np.int64))
        rows.append((p, l, ids, clock + 1 + first, clock + len(ent) - rlast, units))
        clock += len(ent)
    if clock > INT32_MAX:
        raise ValueError(f"trace {trace.source}: {clock} routed entries exceed the int32 stamps of the batch kernel")
    W = max(len(r[2]) for r in rows)
    S = len(rows)
    out = {k: np.zeros((S,), np.int32) for k in ("pass_", "layer")}
    out.update({k: np.full((S, W), f, np.int32) for k, f in (("ids", -1), ("first", 0), ("last", 0),
                                                              ("next_use", INF_STEP), ("units", 0))})
    for s, (p, l, ids, first, last, units) in enumerate(rows):
        n = len(ids)
        out["pass_"][s], out["layer"][s] = p, l
        out["ids"][s, :n], out["first"][s, :n], out["last"][s, :n] = ids, first, last
        out["units"][s, :n] = np.clip(units, 0, INT32_MAX)
    out["new_pass"] = np.concatenate([[True], out["pass_"][1:] != out["pass_"][:-1]])
    out["decode"] = trace.pass_phase[out["pass_"]] == DECODE
    _fill_next_use(out)
    return out


def _fill_next_use(x: dict) -> None:
    """``next_use[s, j]``: the next batch after ``s`` that looks up ``ids[s, j]`` (``INF_STEP`` if none)."""
    s, j = np.nonzero(x["ids"] >= 0)
    g = x["ids"][s, j]
    o = np.lexsort((s, g))
    same = g[o][1:] == g[o][:-1]
    nxt = np.full(len(o), INF_STEP, np.int64)
    nxt[:-1][same] = s[o][1:][same]
    x["next_use"][s[o], j[o]] = nxt


@cached
def _runner(spec: BatchSpec, size_units: tuple):
    pol = make_batch_policy(spec, np.asarray(size_units))
    step = jax.vmap(pol.step, in_axes=(0, None, None, 0))

    def run(params, xs):
        states = jax.vmap(pol.init)(params)

        def body(carry, x):
            shared, states = carry
            shared = pol.shared_step(shared, x)
            states, _ = step(states, x, shared, params)
            return (shared, states), None

        (_, states), _ = lax.scan(body, (pol.shared_init(), states), xs)
        return states

    return jax.jit(run)


def units_of(trace) -> tuple[int, tuple]:
    """``(g, sizes)``: the gcd of the layers' expert bytes and each layer's expert size in ``g`` units."""
    b = trace.shape.bytes_per_layer
    g = math.gcd(*b)
    return g, tuple(x // g for x in b)


def run_batches(trace, policy: str, budgets_bytes, *, partitioned: bool = False, inputs=None) -> BatchRun:
    """Replay ``trace`` under the batch convention at every budget (bytes; per layer ``budget // L``
    when ``partitioned``) in one vmapped program."""
    L, E = trace.shape.num_layers, trace.shape.num_experts
    x = inputs if inputs is not None else batch_inputs(trace)
    g, sizes = units_of(trace)
    pool_units = (max(sizes) * E) if partitioned else sum(sizes) * E
    lookups = int((x["ids"] >= 0).sum())
    if max(pool_units, lookups * max(sizes)) > INT32_MAX:
        raise ValueError(f"trace {trace.source}: layer expert bytes {sorted(set(trace.shape.bytes_per_layer))} have gcd "
                         f"{g}; in those units the cache or the bytes read exceed int32 (the kernel's counters); "
                         "the reference (engine='reference') replays it")
    bud = np.asarray([int(b) // L if partitioned else int(b) for b in budgets_bytes], dtype=object)
    units = np.asarray([min(int(b) // g, pool_units) for b in bud], np.int32)
    spec = BatchSpec(policy, L, E, x["ids"].shape[1], partitioned)
    xs = BatchIn(**{k: np.asarray(v) for k, v in x.items()})
    t0 = time.perf_counter()
    fn = compile_lowered(_runner(spec, sizes).lower(BatchParams(budget=units), xs))
    t1 = time.perf_counter()
    st = jax.device_get(fn(BatchParams(budget=units), xs))
    t2 = time.perf_counter()
    per = np.asarray(st.per_layer, np.int64)
    per[:, BATCH_COUNTERS.index("read_bytes")] *= g
    per[:, BATCH_COUNTERS.index("evicted_bytes")] *= g
    assert per.shape[1] == NCOUNT
    return BatchRun(totals=per.sum(axis=2), per_layer=per, resident=np.asarray(st.resident, bool),
                    max_bytes=np.asarray(st.max_used, np.int64) * g, compile_s=t1 - t0, run_s=t2 - t1)
