"""Belady/MIN as a *priority* stack algorithm (Mattson et al. 1970: OPT's priority, the next use,
does not depend on capacity): the jitted scan that records each demand's stack depth, and the
host-side keys (next uses) it orders the stack by. :mod:`specmd_jax.run.stack` turns the depths
into the counters of every capacity, as for LRU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from specmd_jax.core.semantics import INF_STEP
from specmd_jax.core.steps import StepArrays
from specmd_jax.run.cache import cached

INF_DEPTH = 32767  # int16 "never demanded yet" (N <= 32000 is checked)


def _cascade(Mb: int, M: int, N: int):
    """The access of one id at depth ``d`` on the first ``Mb`` positions of a pool's stack (of
    ``M`` positions; ``N`` ids): ``f(row_full, d, x, nu, seen) -> (new row, moved)`` where
    ``moved`` int32[M] holds the ids at positions ``0..d`` at their new depths (``N``: nothing
    to write)."""
    lo = jnp.iinfo(jnp.int32).min
    pos = jnp.arange(Mb, dtype=jnp.int32)

    def f(row_full, d, x, nu, seen):
        row = row_full[:Mb]
        v = jnp.where((pos < d) & (row >= 0), nu[jnp.maximum(row, 0)], lo)
        rec = (v == lax.cummax(v)) & (pos < d)
        recpos = lax.cummax(jnp.where(rec, pos, -1))
        prev = jnp.concatenate([jnp.full((1,), -1, jnp.int32), recpos[:-1]])
        new = jnp.where(rec & (pos >= 1), row[jnp.maximum(prev, 0)], row)
        new = new.at[jnp.minimum(d, Mb - 1)].set(row[recpos[jnp.maximum(d - 1, 0)]])
        new = new.at[0].set(x)
        # ids at positions 0..d and their new depths (-> N: nothing to write)
        moved = jnp.full((M,), N, jnp.int32).at[:Mb].set(jnp.where(pos <= d, new, N))
        return row_full.at[:Mb].set(new), moved

    return f


@cached
def belady_scan(num_layers: int, num_experts: int, partitioned: bool):
    """Jitted ``run(xs) -> (depth, start, final)`` for Belady/MIN as a *priority* stack
    algorithm (Mattson et al. 1970: OPT's priority, the next use, does not depend on capacity).

    The stack of each pool lists ids by depth; with capacity ``C`` the cache holds the top ``C``.
    Accessing ``x`` at depth ``d`` puts ``x`` on top and cascades positions ``1..d``: each keeps the
    more protected of (itself, the carried id) and carries the other down; the id carried out
    lands at ``d``. With ``v`` the keys along the stack (larger = less protected), the carried id
    entering position ``i`` is the prefix-argmax of ``v[0..i-1]``, so a position changes only where
    ``v`` sets a new prefix maximum (a *record*), and then takes the previous record's id: two
    cumulative maxima per access, no sequential loop over the stack. A pinned visit first gives
    its whole demand the top priority (no demanded expert can be the victim of another), runs
    the accesses in ascending id order, then sets their real keys (next use).

    Keys ``xs["nu"]`` (int32, smaller = more protected) come from the host: a unique rank of
    ``(next use step, -id)`` so ties follow the reference (lowest id evicted first).
    """
    L, E = num_layers, num_experts
    N = L * E
    M = E if partitioned else N

    # an access at depth d only touches positions 0..d: run it on the shortest stack prefix that
    # holds d (most accesses are shallow), chosen by a switch on d
    sizes = sorted({min(M, 64), min(M, 256), M})
    branches = [_cascade(Mb, M, N) for Mb in sizes]
    bounds = jnp.asarray(sizes, jnp.int32)

    def access(j, c):
        stack, depth, nvalid, nu, ids, p = c
        x = ids[j]
        valid = x >= 0
        xi = jnp.where(valid, x, 0)
        seen = depth[xi] < INF_DEPTH
        d = jnp.where(seen, depth[xi].astype(jnp.int32), nvalid[p])
        act = valid & ((d > 0) | ~seen)
        row = stack[p]
        b = jnp.sum(d >= bounds)  # smallest prefix with d < Mb
        new, moved = lax.switch(jnp.minimum(b, len(sizes) - 1), branches, row, d, x, nu, seen)
        new = jnp.where(act, new, row)
        pos_m = jnp.arange(M, dtype=jnp.int16)
        depth = depth.at[jnp.where(act, moved, N)].set(pos_m, mode="drop")
        nvalid = nvalid.at[p].add((valid & ~seen).astype(jnp.int32))
        stack = stack.at[p].set(new)
        return stack, depth, nvalid, nu, ids, p

    def body(carry, x):
        stack, depth, nvalid, nu, start = carry
        start = jnp.where(x["new_pass"], depth, start)
        ids = x["ids"]
        valid = ids >= 0
        idx = jnp.where(valid, ids, N)
        d0 = jnp.where(valid, depth[jnp.where(valid, ids, 0)], INF_DEPTH)
        s0 = jnp.where(valid, start[jnp.where(valid, ids, 0)], INF_DEPTH)
        p = x["layer"] if partitioned else jnp.int32(0)
        # the visit's demand is the most protected while it is served (-1 - id < every key)
        nu = nu.at[idx].set(-1 - ids, mode="drop")
        stack, depth, nvalid, nu, _, _ = lax.fori_loop(0, ids.shape[0], access, (stack, depth, nvalid, nu, ids, p))
        nu = nu.at[idx].set(x["nu"], mode="drop")
        return (stack, depth, nvalid, nu, start), (d0, s0)

    def run(xs):
        P = L if partitioned else 1
        init = (jnp.full((P, M), -1, jnp.int32), jnp.full((N,), INF_DEPTH, jnp.int16), jnp.zeros((P,), jnp.int32),
                jnp.zeros((N,), jnp.int32), jnp.full((N,), INF_DEPTH, jnp.int16))
        (_, depth, _, _, _), (d, s) = lax.scan(body, init, xs)
        return d, s, depth

    return jax.jit(run)


def belady_keys(steps: StepArrays, num_ids: int) -> np.ndarray:
    """int32[S, W]: the Belady key each demanded id takes after its visit (smaller = more
    protected): ``next_step * W + (W - 1 - slot there)``, or ``S * W + N - id`` if never demanded
    again, i.e. nearer next use first and, on ties, the lower id evicted first (the reference's
    ``(-next_use, id)`` order)."""
    S, W = steps.ids.shape
    big = S * W + num_ids
    if big >= 2 ** 31 - 1:
        raise ValueError(f"trace too long for the Belady stack path (S*W + N = {big} >= 2**31)")
    valid = steps.ids >= 0
    nxt = steps.next_use
    # slot of each (step, id) in its row (rows are sorted ascending, padded with -1 at the end)
    r, c = np.nonzero(valid)
    flat = r.astype(np.int64) * num_ids + steps.ids[r, c]
    order = np.argsort(flat)
    fl_sorted = flat[order]
    key = np.full((S, W), 0, np.int64)
    has = valid & (nxt < INF_STEP)
    hr, hc = np.nonzero(has)
    q = nxt[hr, hc].astype(np.int64) * num_ids + steps.ids[hr, hc]
    at = np.searchsorted(fl_sorted, q)
    slot = c[order][at]
    key[hr, hc] = nxt[hr, hc].astype(np.int64) * W + (W - 1 - slot)
    nr, nc = np.nonzero(valid & ~has)
    key[nr, nc] = big - steps.ids[nr, nc]
    return key.astype(np.int32)
