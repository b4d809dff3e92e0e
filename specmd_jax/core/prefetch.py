"""Prefetch plans: predictors (what each visit may know about upcoming layers) and selectors.

Host-side numpy, no jax: a plan is a property of the trace, shared by every cache configuration
of a sweep (whether a proposal costs a copy depends on the cache and is decided in the replay).

At visit ``(p, l)`` (after its demand is served) a predictor scores the experts of each target
layer ``m = l + j``, ``j = 1..depth``, within the same pass (``m < L``; a pass's last layer has
no target: the next token's hidden state does not exist yet). What each predictor may read:

``recorded``
    ``trace.pred_scores[p * L + l]`` (the next layer's gate on the current hidden state, as the
    trace recorded it); depth 1 only.
``oracle``
    the true demand of visit ``(p, m)``, scored by its router-weight mass (token count if the
    trace has no weights). Reads the future by definition, and only the target visit.
``oracle_degraded``
    the oracle's set thinned to a given *recall* (``round(recall * n)`` of the ``n`` true
    experts kept) and padded to a given *precision* with false positives drawn from the layer's
    other experts, seeded per ``(seed, p, l, j)``; all proposed experts get random scores, so
    the order leaks nothing.
``reuse``
    the demand of the same layer ``m`` in the previous pass ``p - 1`` (nothing at ``p = 0``).
``transition``
    cross-layer co-occurrence statistics estimated on a separate *training* trace of the same
    shape: ``T_m[e, e']`` = fraction of passes demanding ``e`` at ``m`` that also demand ``e'``
    at ``m + 1`` (pass-level sets, so row misalignment in real traces does not matter). The score
    of layer ``l + 1`` is ``sum over e in D(p, l) of T_l[e]``; deeper layers chain ``s @ T``.

Selectors, per target layer, over the experts with a positive score, ordered by score
(descending) then id (ascending): ``topk`` keeps ``round(K * overfetch)``; ``percentile`` keeps
those with ``score >= np.percentile(scores of the layer's E experts, q)`` (paper default q = 80);
``all`` keeps every positive score. A visit's proposals list target layers nearest first.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from specmd_jax.core.trace import Trace

PREDICTORS = ("recorded", "oracle", "oracle_degraded", "reuse", "transition")
SELECTORS = ("topk", "percentile", "all")


@dataclasses.dataclass(frozen=True)
class PrefetchConfig:
    """What to prefetch (structure of a plan; numbers that change the plan are fields too).

    Attributes:
        predictor: one of ``PREDICTORS``.
        selector: one of ``SELECTORS``.
        depth: target layers ahead (``>= 1``; the paper uses 1).
        overfetch: ``topk`` multiplier of ``K`` (1.0, 1.5, 2.0 ...).
        percentile: ``percentile`` threshold in [0, 100] (paper default 80).
        recall, precision: ``oracle_degraded`` targets in (0, 1].
        seed: ``oracle_degraded`` seed.
    """

    predictor: str = "recorded"
    selector: str = "topk"
    depth: int = 1
    overfetch: float = 1.0
    percentile: float = 80.0
    recall: float = 1.0
    precision: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.predictor not in PREDICTORS:
            raise ValueError(f"unknown predictor {self.predictor!r}; valid: {', '.join(PREDICTORS)}")
        if self.selector not in SELECTORS:
            raise ValueError(f"unknown selector {self.selector!r}; valid: {', '.join(SELECTORS)}")
        if int(self.depth) != self.depth or self.depth < 1:
            raise ValueError(f"depth must be an integer >= 1, got {self.depth!r}")
        if not (np.isfinite(self.overfetch) and self.overfetch > 0):
            raise ValueError(f"overfetch must be > 0, got {self.overfetch!r}")
        if not 0.0 <= self.percentile <= 100.0:
            raise ValueError(f"percentile must be in [0, 100], got {self.percentile!r}")
        for name in ("recall", "precision"):
            v = getattr(self, name)
            if not 0.0 < v <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {v!r}")
        if self.predictor == "recorded" and self.depth != 1:
            raise ValueError("predictor 'recorded' holds next-layer scores only: depth must be 1")


@dataclasses.dataclass(frozen=True)
class PrefetchPlan:
    """Proposals per visit (pinned steps ``s = p * L + l``).

    Attributes:
        ids: int32[S, Q] global expert ids to prefetch after visit ``s``, in issue order, ``-1``
            padded (``Q`` = the longest list, at least 1).
        config: the :class:`PrefetchConfig` that made it.
        source: the trace's source.
    """

    ids: np.ndarray
    config: PrefetchConfig
    source: str

    @property
    def num_proposals(self) -> int:
        return int(np.sum(self.ids >= 0))


def visit_mass(trace: Trace) -> np.ndarray:
    """float64[P * L, E]: router-weight mass of each expert in each visit (token counts when the
    trace has no weights); ``> 0`` exactly on the visit's demand."""
    E, K = trace.shape.num_experts, trace.shape.top_k
    V = trace.num_visits
    cell = np.repeat(np.arange(V), np.diff(trace.cell_offsets))
    out = np.zeros((V, E))
    w = trace.weights if trace.weights is not None else np.ones(trace.experts.shape, np.float32)
    # a zero router weight still marks a demand: add a tiny floor so "> 0" means "demanded"
    np.add.at(out, (np.repeat(cell, K), trace.experts.reshape(-1).astype(np.int64)),
              np.maximum(w.reshape(-1).astype(np.float64), 1e-12))
    return out


def transition_stats(train: Trace) -> np.ndarray:
    """float64[L - 1, E, E]: ``T[m, e, e']`` = P(e' demanded at m + 1 | e demanded at m), from
    pass-level demand sets of ``train``."""
    L, E = train.shape.num_layers, train.shape.num_experts
    dem = (visit_mass(train) > 0).reshape(train.num_passes, L, E).astype(np.float64)
    co = np.einsum("pme,pmf->mef", dem[:, :-1], dem[:, 1:])          # [L-1, E, E]
    n = dem[:, :-1].sum(axis=0)[:, :, None]                          # passes demanding e at m
    return np.divide(co, n, out=np.zeros_like(co), where=n > 0)


def predict_scores(trace: Trace, cfg: PrefetchConfig, train: Optional[Trace] = None) -> np.ndarray:
    """float64[P, L, depth, E]: scores made at visit ``(p, l)`` for layer ``l + j`` (index
    ``j - 1``); NaN where there is no target or no prediction."""
    L, E = trace.shape.num_layers, trace.shape.num_experts
    P, d = trace.num_passes, int(cfg.depth)
    out = np.full((P, L, d, E), np.nan)
    if cfg.predictor == "recorded":
        if trace.pred_scores is None:
            raise ValueError(f"predictor 'recorded': trace {trace.source} has no pred_scores "
                             "(use a trace with predictions, or another predictor)")
        out[:, :, 0] = trace.pred_scores.reshape(P, L, E)
        return out
    mass = visit_mass(trace).reshape(P, L, E)
    if cfg.predictor == "transition":
        if train is None:
            raise ValueError("predictor 'transition' needs a training trace (train=...)")
        if (train.shape.num_layers, train.shape.num_experts) != (L, E):
            raise ValueError(f"training trace shape L={train.shape.num_layers} E={train.shape.num_experts} "
                             f"!= trace shape L={L} E={E}")
        T = transition_stats(train)
        s = (mass > 0).astype(np.float64)                            # current demand, [P, L, E]
        for j in range(1, d + 1):
            nxt = np.full((P, L, E), np.nan)
            nxt[:, : L - j] = np.einsum("ple,lef->plf", s[:, : L - j], T[j - 1: L - 1][: L - j])
            out[:, :, j - 1] = nxt
            s = np.nan_to_num(nxt)
            tot = s.sum(axis=2, keepdims=True)
            s = np.divide(s, tot, out=np.zeros_like(s), where=tot > 0)
        return out
    for j in range(1, d + 1):
        if cfg.predictor == "oracle":
            out[:, : L - j, j - 1] = mass[:, j:]
        elif cfg.predictor == "reuse":
            out[1:, : L - j, j - 1] = mass[:-1, j:]
            out[0, : L - j, j - 1] = 0.0
        else:  # oracle_degraded
            for p in range(P):
                for l in range(L - j):
                    out[p, l, j - 1] = _degrade(mass[p, l + j], cfg, (p, l, j))
    return out


def _degrade(true_mass: np.ndarray, cfg: PrefetchConfig, where: tuple) -> np.ndarray:
    rng = np.random.default_rng([int(cfg.seed), *where])
    E = true_mass.shape[0]
    T = np.flatnonzero(true_mass > 0)
    keep = rng.permutation(T)[: int(round(cfg.recall * len(T)))]
    others = np.setdiff1d(np.arange(E), T)
    nf = int(round(len(keep) * (1.0 - cfg.precision) / cfg.precision))
    false = rng.permutation(others)[: min(nf, len(others))]
    s = np.zeros(E)
    chosen = np.concatenate([keep, false]).astype(np.int64)
    s[chosen] = rng.uniform(0.5, 1.0, size=len(chosen))
    return s


def select(scores: np.ndarray, cfg: PrefetchConfig, top_k: int) -> list:
    """Expert indices (within the layer) chosen from ``scores`` (float[E]; NaN row -> none),
    in issue order (score descending, id ascending)."""
    if np.isnan(scores).any():
        return []
    pos = np.flatnonzero(scores > 0)
    if cfg.selector == "percentile":
        thr = np.percentile(scores, cfg.percentile)
        pos = pos[scores[pos] >= thr]
    order = pos[np.lexsort((pos, -scores[pos]))]
    if cfg.selector == "topk":
        order = order[: max(0, int(round(top_k * cfg.overfetch)))]
    return order.tolist()


def make_plan(trace: Trace, cfg: PrefetchConfig, train: Optional[Trace] = None) -> PrefetchPlan:
    """The proposals of every visit of ``trace`` under ``cfg`` (see the module docstring)."""
    L, E, K = trace.shape.num_layers, trace.shape.num_experts, trace.shape.top_k
    sc = predict_scores(trace, cfg, train)
    P, d = trace.num_passes, int(cfg.depth)
    rows = []
    for p in range(P):
        for l in range(L):
            ids = []
            for j in range(1, d + 1):
                if l + j < L:
                    ids += [(l + j) * E + e for e in select(sc[p, l, j - 1], cfg, K)]
            rows.append(ids)
    Q = max(1, max(len(r) for r in rows))
    out = np.full((P * L, Q), -1, np.int32)
    for s, r in enumerate(rows):
        out[s, : len(r)] = r
    return PrefetchPlan(ids=out, config=cfg, source=trace.source)


def prediction_quality(trace: Trace, plan: PrefetchPlan) -> dict:
    """Precision and recall of the plan against the true demand of each target visit (trace level,
    independent of the cache): ``precision = hits / proposals``, ``recall = hits / demands of the
    target visits that had a prediction``; also per lookahead ``j``."""
    L, E = trace.shape.num_layers, trace.shape.num_experts
    dem = visit_mass(trace) > 0                                  # [P*L, E]
    d = plan.config.depth
    tp = np.zeros(d, np.int64)
    npred = np.zeros(d, np.int64)
    ntrue = np.zeros(d, np.int64)
    for s in range(plan.ids.shape[0]):
        p, l = divmod(s, L)
        ids = plan.ids[s][plan.ids[s] >= 0]
        for j in range(1, d + 1):
            m = l + j
            if m >= L:
                break
            mine = ids[ids // E == m] % E
            if plan.config.predictor == "recorded" and np.isnan(trace.pred_scores[s]).any():
                continue
            truth = dem[p * L + m]
            tp[j - 1] += int(truth[mine].sum())
            npred[j - 1] += len(mine)
            ntrue[j - 1] += int(truth.sum())
    q = {"proposals": int(npred.sum()), "true_positives": int(tp.sum()), "target_demands": int(ntrue.sum()),
         "precision": float(tp.sum() / npred.sum()) if npred.sum() else float("nan"),
         "recall": float(tp.sum() / ntrue.sum()) if ntrue.sum() else float("nan")}
    q["by_depth"] = [{"j": j + 1, "precision": float(tp[j] / npred[j]) if npred[j] else float("nan"),
                      "recall": float(tp[j] / ntrue[j]) if ntrue[j] else float("nan")} for j in range(d)]
    return q


def stack_plans(plan, S: int, source: str):
    """(list of plans, stacked ids int32[n_plans, S, Qmax], max depth); validates the sizes."""
    plans = [plan] if isinstance(plan, PrefetchPlan) else list(plan)
    if not plans:
        raise ValueError("no prefetch plan given")
    for p in plans:
        if p.ids.shape[0] != S:
            raise ValueError(f"plan has {p.ids.shape[0]} visits, trace {source} has {S}")
        srt = np.sort(p.ids, axis=1)
        dup = (srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)
        if dup.any():  # the kernels would queue a repeat twice; the reference counts it as pending
            s = int(np.argmax(dup.any(axis=1)))
            raise ValueError(f"plan {p.config} proposes expert {int(srt[s, 1:][dup[s]][0])} twice at visit {s}: "
                             "a visit's proposals must be distinct (make_plan's always are)")
    Q = max(p.ids.shape[1] for p in plans)
    stack = np.full((len(plans), S, Q), -1, np.int32)
    for i, p in enumerate(plans):
        stack[i, :, : p.ids.shape[1]] = p.ids
    return plans, stack, max(int(p.config.depth) for p in plans)



def proposal_count(plan) -> int:
    """The most proposals any one of ``plan``'s plans makes over the trace."""
    plans = [plan] if isinstance(plan, PrefetchPlan) else list(plan)
    return max((int(np.sum(np.asarray(p.ids) >= 0)) for p in plans), default=0)
