"""Routing policies: the pinned semantics (numpy and plain Python, no jax).

SpecMD's routing dimension (SpecMD §3.1): the router may favour experts that
are already cached. A trace records what the unmodified router chose; a routing policy re-ranks
each token at replay time, per configuration, against that configuration's cache.

``standard``
    the recorded experts, ranks and weights.
``cache_aware`` (Skliar et al. '25, SpecMD Eq. 1) with strength ``lam``
    ``z' = z + lam * delta * 1_C`` per token, where ``z`` are the token's router logits, ``C``
    the experts of the visit's layer resident at the visit's start (before its misses are
    handled; copies in flight are not cached), and ``delta`` the layer's historical logit
    scale: the mean, over every token of the same layer in *earlier* visits, of the gap between
    its rank-1 and rank-K logits (0 at a layer's first visit). The paper calls ``delta`` "the
    historical average logit value"; a plain mean of centred logits is ~0 and would make ``lam``
    meaningless, so we use the top-1 to top-K gap (ours; documented), which makes ``lam`` the
    fraction of a typical top-K spread a cached expert gains. Arithmetic is float32
    (``bias = float32(lam) * float32(delta)``, ``z' = float32(z) + bias``).
    The new top-K is ordered by ``z'`` descending, then recorded rank (recorded experts before
    the others), then expert id, so ``lam = 0`` gives back the recorded ids and order exactly.
    **Dual-logit weighting** (SpecMD App. A.1: modified logits choose, original logits weigh):
    a token whose set is unchanged keeps its recorded weights; a changed token's weights are the
    softmax of its *original* logits over the new set, in integer arithmetic so the JAX kernel
    reproduces it exactly: each candidate carries ``q = max(1, rint(2**19 * exp(z - max z)))``
    (float64, on the host, max over the token's candidates), and expert ``e`` of the new set
    ``S`` weighs ``u_e / 1024`` with ``u_e = floor((2048 q_e + Q) / (2 Q))``, ``Q = sum_S q``
    (``1024 q_e / Q`` rounded half up: within 1/1024 of the float softmax).
    Traces without router logits re-rank only the recorded candidates (``z = log(weight)``): the
    set cannot change, only the order (and so ``drop_priority`` ranks); tables say
    "candidates only". Traces without weights or logits cannot be re-routed.

The asynchronous JAX engine (:mod:`specmd_jax.kernels.asynchronous`, ``run_async(routing=[...])``)
implements the same rule per configuration with ``lam`` vmapped, from :func:`token_tables`;
tests check it equal to :func:`route_rows` through the timed reference.

Belady cannot be combined with cache-aware routing (its next uses come from the recorded
routing).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from specmd_jax.core.semantics import SB_SCALE

ROUTINGS = ("standard", "cache_aware")


@dataclasses.dataclass(frozen=True)
class RoutingConfig:
    """A routing policy: ``policy`` in :data:`ROUTINGS`, ``lam`` the cache-aware strength (>= 0)."""

    policy: str = "standard"
    lam: float = 0.0

    def __post_init__(self):
        if self.policy not in ROUTINGS:
            raise ValueError(f"unknown routing policy {self.policy!r}; valid: {', '.join(ROUTINGS)}")
        if not (math.isfinite(float(self.lam)) and float(self.lam) >= 0):
            raise ValueError(f"routing lam must be a finite number >= 0, got {self.lam!r}")

    @property
    def active(self) -> bool:
        return self.policy == "cache_aware"

    def label(self, trace=None) -> str:
        if not self.active:
            return "standard"
        cand = "" if trace is None or trace.logits is not None else ", candidates only"
        return f"cache_aware(lam={float(self.lam):g}{cand})"


def candidates(trace, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
    """``(ids int64[r, C], logits float32[r, C])`` of rows ``[a, b)``: every expert of the layer
    with the recorded logits, or the recorded top-K with ``log(weight)``."""
    ex = trace.experts[a:b].astype(np.int64)
    if trace.logits is not None:
        E = trace.shape.num_experts
        return np.broadcast_to(np.arange(E), (b - a, E)), trace.logits[a:b]
    if trace.weights is None:
        raise ValueError(f"cache-aware routing needs router logits or weights; trace {trace.source} has neither")
    with np.errstate(divide="ignore"):
        return ex, np.log(trace.weights[a:b]).astype(np.float32)


def gap_means(trace) -> np.ndarray:
    """float32[P * L]: ``delta`` of every visit (module docstring), from the recorded routing."""
    L, K = trace.shape.num_layers, trace.shape.top_k
    P = trace.num_passes
    out = np.zeros(P * L, np.float32)
    tot = np.zeros(L, np.float64)
    cnt = np.zeros(L, np.int64)
    off = trace.cell_offsets
    for p in range(P):
        for l in range(L):
            c = p * L + l
            out[c] = np.float32(tot[l] / cnt[l]) if cnt[l] else np.float32(0.0)
            a, b = int(off[c]), int(off[c + 1])
            if b > a:
                ids, lg = candidates(trace, a, b)
                ex = trace.experts[a:b].astype(np.int64)
                if trace.logits is not None:
                    first = np.take_along_axis(lg, ex[:, :1], 1)[:, 0]
                    last = np.take_along_axis(lg, ex[:, K - 1:], 1)[:, 0]
                else:
                    first, last = lg[:, 0], lg[:, K - 1]
                g = np.asarray(first, np.float64) - np.asarray(last, np.float64)
                tot[l] += float(np.sum(np.where(np.isfinite(g), g, 0.0)))
                cnt[l] += b - a
    return out


Q_SCALE = 2 ** 19  # resolution of the dual-logit weights (module docstring)


def dual_q(logits: np.ndarray) -> np.ndarray:
    """int64 ``q`` of every candidate of each row (module docstring: dual-logit weighting)."""
    lg = np.asarray(logits, np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        rel = lg - np.max(lg, axis=-1, keepdims=True)
        return np.maximum(1, np.rint(Q_SCALE * np.exp(np.where(np.isfinite(rel), rel, -np.inf)))).astype(np.int64)


def dual_units(q: list) -> list:
    """Router-weight units (of ``SB_SCALE`` = 1024) of a changed token's new set from its
    members' ``q`` (``2 * 1024 * 2**19 < 2**31``: exact in int32 too)."""
    tot = sum(q)
    return [(2 * SB_SCALE * x + tot) // (2 * tot) for x in q]


def token_tables(trace) -> dict:
    """Per routed row of ``trace``, its candidates as dense arrays (what the JAX kernel re-ranks):
    ``cid`` int32[R, C] expert ids within the layer, ``z`` float32[R, C] logits (``log(weight)``
    candidates-only), ``rr`` int32[R, C] recorded rank (``K`` if not recorded), ``q`` int32[R, C]
    dual-logit weights, ``ru`` int32[R, C] recorded weight units (0 if not recorded). ``C = E``
    with logits, ``K`` without."""
    R, K = trace.experts.shape
    cid, z = candidates(trace, 0, R)
    C = cid.shape[1]
    ex = trace.experts.astype(np.int64)
    ranks = np.tile(np.arange(K), (R, 1))
    units = (np.rint(trace.weights.astype(np.float64) * SB_SCALE).astype(np.int64) if trace.weights is not None
             else np.zeros((R, K), np.int64))
    if C == K and trace.logits is None:
        rr, ru = ranks, units
    else:
        rr = np.full((R, C), K, np.int64)
        ru = np.zeros((R, C), np.int64)
        rows = np.repeat(np.arange(R), K)
        rr[rows, ex.reshape(-1)] = ranks.reshape(-1)
        ru[rows, ex.reshape(-1)] = units.reshape(-1)
    return {"cid": np.ascontiguousarray(cid, np.int32), "z": np.asarray(z, np.float32),
            "rr": rr.astype(np.int32), "q": dual_q(z).astype(np.int32), "ru": ru.astype(np.int32)}


def route_rows(trace, a: int, b: int, cached: set, bias: np.float32) -> tuple[list, list]:
    """Routed rows ``[a, b)`` of the trace (experts within the layer): ``(ids, weights)``, lists
    of per-token lists in the new rank order (weights: float, dual-logit weighting)."""
    K = trace.shape.top_k
    rec = trace.experts[a:b].tolist()
    w = trace.weights[a:b].tolist() if trace.weights is not None else None
    if not cached:  # nothing to favour: the recorded routing (lam = 0 still goes through the ranking)
        return rec, (w if w is not None else [[0.0] * K for _ in rec])
    cid, clg = candidates(trace, a, b)
    qs = dual_q(clg)
    ids_out, w_out = [], []
    for i, row in enumerate(rec):
        rank = {e: k for k, e in enumerate(row)}
        z = clg[i]
        keyed = []
        for j, e in enumerate(cid[i].tolist()):
            zp = np.float32(z[j]) + (bias if e in cached else np.float32(0.0))
            keyed.append((-float(zp), rank.get(e, K), e, j))
        keyed.sort()
        new = [e for _, _, e, _ in keyed[:K]]
        ids_out.append(new)
        if set(new) == set(row):
            ww = [w[i][rank[e]] for e in new] if w is not None else [0.0] * K
        else:
            ww = [u / SB_SCALE for u in dual_units([int(qs[i][j]) for _, _, _, j in keyed[:K]])]
        w_out.append(ww)
    return ids_out, w_out
