"""The asynchronous prefetch kernel's types: static spec, numeric parameters, state, visit record,
and the static :class:`Layout` that every piece of its step shares (:mod:`specmd_jax.kernels.queue`,
:mod:`~specmd_jax.kernels.admission`, :mod:`~specmd_jax.kernels.rerank`,
:mod:`~specmd_jax.kernels.reroute`, composed in :mod:`~specmd_jax.kernels.asynchronous`)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp
from jax import lax

from specmd_jax.kernels.ranks import ABSENT, GONE
from specmd_jax.kernels.pytree import pytree_dataclass

NONE = jnp.iinfo(jnp.int32).max  # no queued copy


@pytree_dataclass
class AsyncParams:
    """Numeric parameters of one configuration (vmappable): ``capacity`` slots, ``xfer`` ticks per
    copy, compute ticks per layer: ``c_dec`` (decode), ``c_pre0`` + ``c_pre1`` per prompt token;
    ``drop_rank``: the ``drop_priority`` miss policy's threshold (a demanded expert that is not
    resident and whose best router rank in the visit is ``>= drop_rank`` is dropped:
    :mod:`specmd_jax.core.miss`); ``fetch`` is a threshold no rank reaches."""

    capacity: Any
    xfer: Any
    c_dec: Any
    c_pre0: Any
    c_pre1: Any
    drop_rank: Any
    xfer_lv: Any = None    # int32[levels] ticks per copy at each precision level (xfer_lv[0] == xfer)
    pct_milli: Any = None  # fetch_priority: percentile in thousandths
    degrade: Any = None    # fetch_priority: level the degraded experts are fetched at
    cas_th: Any = None     # int32[cascade_len] cascade thresholds in router-weight units
    lam: Any = None        # float32 cache-aware routing strength (AsyncSpec.routing)
    c_exp: Any = None      # int32 ticks of one expert's compute (Hardware.expert_us), -1: the layer's numbers


@pytree_dataclass
class AsyncState:
    rank: Any
    occ: Any
    pfu: Any
    qidx: Any
    ring: Any
    head: Any
    tail: Any
    t: Any
    eng: Any
    per_layer: Any
    pf: Any
    max_occ: Any
    ovf: Any
    cur: Any   # int32[L] Least-Stale current tier per layer ([0] for other policies)
    lc: Any    # int32[N] per-layer issue number of x's queued copy (ls; else [0])
    icnt: Any  # int32[L] copies issued per layer (ls; else [0])
    done: Any  # int32[L] copies arrived per layer (ls; else [0])
    ul: Any    # int32[N] units of each resident (mixed precision; else [0])
    hp: Any    # int32[N] uses at the top level since insertion (lhu; else [0])


FIELDS = ("rank", "occ", "pfu", "qidx", "ring", "head", "tail", "t", "eng", "per_layer", "pf", "max_occ", "ovf",
          "cur", "lc", "icnt", "done", "ul", "hp")


@pytree_dataclass
class AsyncVisit:
    """Shared inputs of one visit: ``layer``, ``new_pass``, ``prefill`` (bool), ``tokens``,
    ``ids`` int32[W] demand (ascending), ``pf_ids`` int32[Q] proposals in issue order, ``live``
    (False on the padding steps that fill a chunk: no compute, so the clock stands still)."""

    live: Any
    layer: Any
    new_pass: Any
    prefill: Any
    tokens: Any
    ids: Any
    pf_ids: Any
    rank: Any   # int32[W] best router rank of each demanded id in the visit
    pairs: Any  # int32[W] tokens routing it
    units: Any  # int32[W] its summed quantised router weight
    lscore: Any  # int32[E] running gate score of the visit layer's experts after the visit
                 # (``substitute``; shape [1] otherwise)
    score: Any = None  # int32[W] best quantised router weight of each demanded id (miss levels)
    spos: Any = None   # int32[W] its position in the demand sorted by (score, id) ascending
    row0: Any = None   # cache-aware routing (AsyncSpec.routing): first routed row of the visit,
    nrows: Any = None  # its number of rows (tokens)
    delta: Any = None  # float32 the layer's logit gap mean before the visit (routing.gap_means)
    turn: Any = None   # int32 the step's turn in its visit (specmd_jax.core.turns; 0 under execution="visit")
    nturns: Any = None  # int32 turns of its visit (1 under execution="visit")
    vdem: Any = None   # int32 the visit's demand count (fetch_priority's percentile, expert_us compute)
    pins: Any = None   # int32[pin_width] the visit's demand (-1 padded) when AsyncSpec.pin_width > 0


class AsyncSpec(NamedTuple):
    policy: str
    num_layers: int
    num_experts: int
    width: int
    prefetch_width: int
    substitute: bool = False  # miss policy ``substitute`` (else fetch / drop_priority by drop_rank)
    units: tuple = (1,)       # units per precision level (specmd_jax.core.miss.Precision.units), highest first
    miss_kind: str = "fetch"  # fetch (with drop_rank) | fetch_lowest | fetch_priority | cascade
    cascade_len: int = 0      # number of cascade thresholds
    bits: tuple = (16,)       # bits per precision level (quality proxies)
    full_demand: bool = True  # no configuration drops or substitutes: the executed set is the demand,
                              # shared by all configurations (a cheaper pinning mask)
    routing: bool = False     # cache-aware routing: each configuration re-routes the visit's tokens
    top_k: int = 0            # K (routing only)
    issue: str = "after_use"  # prefetch_issue of the reading: "after_use" | "at_router" (timing.Reading)
    pin_width: int = 0        # > 0: a separate pinned set of this width per step (AsyncVisit.pins: the
                              # visit's demand, execution="expert" with pin="visit"); 0: the step's executed set


def rank_sentinels(spec: AsyncSpec) -> tuple:
    """``(dtype, ABSENT, GONE)`` of the rank table: int16 slot ranks, or int32 weighted ranks
    (mixed precision: units of the more protected residents) with sentinels above any sum."""
    if len(spec.units) == 1 and spec.units[0] == 1 and spec.policy != "lhu":
        return jnp.int16, ABSENT, GONE
    return jnp.int32, 2 ** 30 + 1, 2 ** 30


class Layout:
    """Static constants of one :class:`AsyncSpec` (sizes, rank dtype and sentinels, policy flags,
    precision tables, triangular masks) and the small per-layer helpers, built once per compile."""

    def __init__(self, spec: AsyncSpec):
        self.spec = spec
        L, E, W, Q = spec.num_layers, spec.num_experts, spec.width, spec.prefetch_width
        self.L, self.E, self.W, self.Q, self.N = L, E, W, Q, L * E
        self.rdt, self.A_, self.G_ = rank_sentinels(spec)
        self.lru, self.ls, self.lhu = spec.policy == "lru", spec.policy == "ls", spec.policy == "lhu"
        self.sub = spec.substitute
        self.mixed = self.rdt == jnp.int32          # weighted ranks: units of the more protected residents
        self.UNITS = jnp.asarray(spec.units, jnp.int32)
        self.BITS = jnp.asarray(spec.bits, jnp.int32)
        self.u0, self.NL, self.kind = int(spec.units[0]), len(spec.units), spec.miss_kind
        # the pinned set is not the step's own demand: pinned residents and admitted demand copies
        # are scattered separately, and a batch member of the pinned set that is not the step's
        # own copy is a prefetch (a later turn's expert)
        self.separate = self.sub or spec.pin_width > 0
        self.layer_of = jnp.arange(self.N) // E
        self.earlier = jnp.arange(W)[None, :] < jnp.arange(W)[:, None]     # [j, j'] j' < j
        self.incl = jnp.arange(W)[None, :] <= jnp.arange(W)[:, None]       # [j, j'] j' <= j
        self.later = jnp.arange(W)[None, :] > jnp.arange(W)[:, None]       # [j, j'] j' > j
        self.earlierQ = jnp.arange(Q)[None, :] < jnp.arange(Q)[:, None]
        self.laterQ = jnp.arange(Q)[None, :] > jnp.arange(Q)[:, None]
        self.nbits = max(1, int(self.N).bit_length())

    def per_id(self, table):
        """[L] per-layer values -> [N] per id (a broadcast; ids are layer-major)."""
        return jnp.broadcast_to(table[:, None], (self.L, self.E)).reshape(self.N)

    def per_layer_count(self, mask):
        """int32[L] members of a bool[N] mask per layer."""
        return jnp.sum(mask.reshape(self.L, self.E), axis=1, dtype=jnp.int32)

    def wsum(self, a, w, r, greater: bool):
        """int32[N]: ``sum_j w[j] * (a[j] > r[x])`` (or ``<``) for every x; rows 8 at a time."""
        def part(aa, ww):
            cmp = aa[:, None] > r[None, :] if greater else aa[:, None] < r[None, :]
            return jnp.sum(jnp.where(cmp, ww[:, None], 0), axis=0, dtype=jnp.int32)
        n = a.shape[0]
        if n <= 16:
            return part(a, w)
        g = n // 8
        tail = part(a[g * 8:], w[g * 8:])
        return lax.fori_loop(0, g, lambda i, acc: acc + part(lax.dynamic_slice_in_dim(a, i * 8, 8),
                                                             lax.dynamic_slice_in_dim(w, i * 8, 8)), tail)

    def level_of(self, u):
        """Precision level of residents holding ``u`` units (levels have distinct units)."""
        return jnp.sum(self.UNITS[None, :] > u[:, None], axis=1, dtype=jnp.int32)
