"""Rank algebra shared by the eviction kernels: sentinels, demand classification, counts below a
rank, the victims' threshold and the Least-Stale current tier's per-layer blocks.

Protection ranks are contiguous per pool (``rank[x]`` = residents more protected than ``x``), so
victims are found elementwise; every helper here works on one configuration's arrays and is
vmapped by the drivers in :mod:`specmd_jax.run`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp
from jax import lax

ABSENT = 32767  # not resident
GONE = 32766    # not resident, evicted earlier in the current pass (collision bookkeeping)


class Demand(NamedTuple):
    """A visit's demand against one configuration's ranks (pinned semantics, ``semantics``)."""

    r0D: Any    # int16[W] ranks of the demanded ids as stored (sentinels included)
    rD: Any     # int16[W] the same, ``ABSENT`` on padding (``GONE`` kept: collisions)
    resD: Any   # bool[W] hit
    missD: Any  # bool[W] miss
    nd: Any     # demands
    nh: Any     # hits
    nm: Any     # misses
    coll: Any   # collision misses
    m: Any      # evictable residents (occupancy minus hits)
    nev: Any    # evictions: clip(misses - free, 0, evictable)
    na: Any     # admitted misses (the rest bypass)


def classify_demand(r, loc, valid, occ, cap) -> Demand:
    """Hits, misses, collisions and the eviction/admission counts of one visit (shared by the
    demand-only and the prefetch engines)."""
    W = loc.shape[0]
    r0D = r[loc]
    rD = jnp.where(valid, r0D, ABSENT).astype(jnp.int16)
    resD = rD < GONE
    nd = wsum([valid[j] for j in range(W)], ())
    nh = wsum([resD[j] for j in range(W)], ())
    nm = nd - nh
    free = cap - occ
    m = occ - nh
    nev = jnp.clip(nm - free, 0, m)
    return Demand(r0D, rD, resD, valid & ~resD, nd, nh, nm, wsum([rD[j] == GONE for j in range(W)], ()), m, nev,
                  jnp.minimum(nm, free + nev))


def wsum(terms, shape):
    """int32 sum of a short list of boolean (or int) terms of ``shape``, as a chain of
    elementwise adds: vectorised over a vmapped batch, where a reduction along a short axis
    is scalar code on XLA:CPU. Long lists (wide prefill visits) are stacked and reduced."""
    if not terms:
        return jnp.zeros(shape, jnp.int32)
    if len(terms) > 16:
        return jnp.sum(jnp.stack([jnp.broadcast_to(t, shape) for t in terms]), axis=0, dtype=jnp.int32)
    acc = jnp.zeros(shape, jnp.int32)
    for t in terms:
        acc = acc + t.astype(jnp.int32)
    return acc


def count_lt(a, r):
    """``#{j : a[j] < r[x]}`` for every x: int16[M] from int16[W] and int16[M].

    A reduce over the short W axis. An unrolled chain of W adds looked faster in isolation but
    made the whole step ~20x slower (XLA duplicates the chain into every consumer fusion). Wide
    visits (prefill, W up to E) are counted 8 rows at a time in a rolled loop, so no
    ``[configs, W, M]`` temporary is built.
    """
    W = a.shape[0]
    if W <= 16:
        return jnp.sum(a[:, None] < r[None, :], axis=0, dtype=jnp.int16)
    g = W // 8

    def body(i, acc):
        return acc + jnp.sum(lax.dynamic_slice_in_dim(a, i * 8, 8)[:, None] < r[None, :], axis=0, dtype=jnp.int16)

    tail = jnp.sum(a[g * 8:, None] < r[None, :], axis=0, dtype=jnp.int16)
    return lax.fori_loop(0, g, body, tail)


def count_lower(a, valid):
    """``#{j valid : a[j] < a[i]}`` for each i (small [W] arrays)."""
    return jnp.sum(valid[None, :] & (a[None, :] < a[:, None]), axis=1, dtype=jnp.int32)


def count_lower_than(b, valid, a):
    """``#{j valid : b[j] < a[i]}`` for each i (small arrays of two widths)."""
    return jnp.sum(valid[None, :] & (b[None, :] < a[:, None]), axis=1, dtype=jnp.int32)


def victim_threshold(ranks, pinned, thresh):
    """Rank from which the non-pinned residents are victims (see module docstring)."""
    ev_pos = ranks.astype(jnp.int32) - count_lower(ranks, pinned)
    return thresh + jnp.sum(pinned & (ev_pos <= thresh), dtype=jnp.int32), ev_pos


def suffix(c):
    """``out[m] = sum(c[m:])`` (inclusive suffix sums over layers)."""
    return jnp.cumsum(c[::-1])[::-1]


def above(cur, m):
    """Current-tier experts in layers above ``m`` (they hold the ranks before layer m's group)."""
    return (suffix(cur) - cur)[m]


def take_victims(cur, n, pinned):
    """Remove ``n`` current-tier victims from the bottom (lowest layers first, skipping the
    ``pinned`` experts of each layer)."""
    e = cur - pinned
    before = jnp.cumsum(e) - e
    return cur - jnp.clip(n - before, 0, e)
