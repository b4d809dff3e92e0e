"""Host-side (numpy) preparation of a trace into fixed-shape step arrays for the JAX engine.

One row per scan step (see :mod:`specmd_jax.core.semantics`): ``pinned`` mode has one row per visit
(``S = P * L``) with the visit's distinct expert ids sorted ascending and padded with ``-1`` to
``width`` = the largest demand of any visit; ``sequential`` mode has one row per distinct access
(``width = 1``). Computed once per (trace, mode) and shared by every configuration of a sweep.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from specmd_jax.core.miss import NO_DROP
from specmd_jax.core.semantics import INF_STEP, MODES, SB_SCALE
from specmd_jax.core.trace import DECODE, Trace


@dataclasses.dataclass(frozen=True)
class StepArrays:
    """Stacked per-step inputs (numpy; become the scan's ``xs``).

    Attributes:
        step: int32[S] global step index.
        pass_: int32[S] pass index.
        layer: int32[S] layer of the visit.
        new_pass: bool[S] first step of its pass.
        ids: int32[S, W] global ids ``layer * E + expert``, ``-1`` padding.
        units: int32[S, W] summed ``round(weight * SB_SCALE)`` of each id in its visit.
        next_use: int32[S, W] next step demanding the id (``INF_STEP`` if none).
        decode: bool[S] the step belongs to a decode pass.
    """

    step: np.ndarray
    pass_: np.ndarray
    layer: np.ndarray
    new_pass: np.ndarray
    ids: np.ndarray
    units: np.ndarray
    next_use: np.ndarray
    mode: str
    decode: np.ndarray = None

    @property
    def num_steps(self) -> int:
        return int(self.step.shape[0])

    @property
    def width(self) -> int:
        return int(self.ids.shape[1])

    @property
    def num_demands(self) -> int:
        return int(np.sum(self.ids >= 0))


def prepare_steps(trace: Trace, mode: str = "pinned", width: int | None = None) -> StepArrays:
    """Turn ``trace`` into :class:`StepArrays` for ``mode`` (vectorised numpy).

    ``width`` pads the id rows to a fixed width (>= the largest demand) so that traces of
    different content share one compiled program.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    L, E, K = trace.shape.num_layers, trace.shape.num_experts, trace.shape.top_k
    V = trace.num_visits
    counts = np.diff(trace.cell_offsets)
    cell_of_row = np.repeat(np.arange(V, dtype=np.int64), counts)
    cell = np.repeat(cell_of_row, K)                      # row-major: token order, then rank
    exp = trace.experts.reshape(-1).astype(np.int64)
    if trace.weights is not None:
        u = np.rint(trace.weights.reshape(-1).astype(np.float64) * SB_SCALE).astype(np.int64)
    else:
        u = np.zeros_like(exp)
    key = cell * E + exp                                  # (visit, expert) pairs
    uniq, first, inv = np.unique(key, return_index=True, return_inverse=True)
    units_u = np.bincount(inv, weights=u, minlength=len(uniq)).astype(np.int64)
    v_u = uniq // E
    gid_u = (v_u % L) * E + uniq % E
    if mode == "pinned":
        order = np.arange(len(uniq))                      # np.unique sorts by (visit, expert)
        nper = np.bincount(v_u, minlength=V)
        W = max(int(nper.max()), 1)
        if width is not None:
            if width < W:
                raise ValueError(f"width={width} is below the largest visit demand {W}")
            W = int(width)
        slot = np.arange(len(uniq)) - np.repeat(np.cumsum(nper) - nper, nper)
        S = V
        srow = v_u
        step_visit = np.arange(V)
    else:
        order = np.argsort(first, kind="stable")          # first appearance in the stream
        S = len(uniq)
        W = 1
        srow = np.arange(S)
        slot = np.zeros(S, np.int64)
        step_visit = v_u[order]
    ids = np.full((S, W), -1, np.int32)
    units = np.zeros((S, W), np.int32)
    ids[srow, slot] = gid_u[order]
    units[srow, slot] = units_u[order]
    # next use: for each (step, id) the next step with the same id
    s_flat = srow.astype(np.int64)
    g_flat = gid_u[order]
    o = np.lexsort((s_flat, g_flat))
    nxt = np.full(len(o), INF_STEP, np.int64)
    same = g_flat[o][1:] == g_flat[o][:-1]
    nxt[o[:-1][same]] = s_flat[o][1:][same]
    next_use = np.full((S, W), INF_STEP, np.int32)
    next_use[srow, slot] = nxt
    pass_ = (step_visit // L).astype(np.int32)
    new_pass = np.ones(S, bool)
    new_pass[1:] = pass_[1:] != pass_[:-1]
    return StepArrays(step=np.arange(S, dtype=np.int32), pass_=pass_, layer=(step_visit % L).astype(np.int32),
                      new_pass=new_pass, ids=ids, units=units, next_use=next_use, mode=mode,
                      decode=np.asarray(trace.pass_phase)[pass_] == DECODE)


def running_scores(trace: Trace, steps) -> np.ndarray:
    """int32[S, E]: running gate score (cumulative quantised router weight, ``sb``'s score) of the
    visit layer's experts after each pinned visit (the ``substitute`` miss policy's distance)."""
    L, E = trace.shape.num_layers, trace.shape.num_experts
    S = steps.num_steps
    u = np.zeros((S, E), np.int64)
    ok = steps.ids >= 0
    rows = np.broadcast_to(np.arange(S)[:, None], ok.shape)
    np.add.at(u, (rows[ok], steps.ids[ok] % E), steps.units[ok])
    return u.reshape(-1, L, E).cumsum(axis=0).reshape(S, E).astype(np.int32)



def demand_details(trace: Trace, steps) -> dict:
    """int32[S, W] per demanded id of pinned ``steps`` (padding: ``NO_DROP`` / 0): ``rank`` its
    best router rank in the visit, ``pairs`` the tokens routing it, ``score`` its best quantised
    router weight, ``spos`` its position in the visit's demand sorted by (score, id) ascending."""
    E, K = trace.shape.num_experts, trace.shape.top_k
    V = trace.num_visits
    cell = np.repeat(np.repeat(np.arange(V, dtype=np.int64), np.diff(trace.cell_offsets)), K)
    key = cell * E + trace.experts.reshape(-1).astype(np.int64)
    best_rank = np.full(V * E, NO_DROP, np.int64)
    np.minimum.at(best_rank, key, np.tile(np.arange(K), trace.experts.shape[0]))
    best_w = np.zeros(V * E, np.int64)
    if trace.weights is not None:
        np.maximum.at(best_w, key, np.rint(trace.weights.reshape(-1).astype(np.float64) * SB_SCALE).astype(np.int64))
    ok = steps.ids >= 0
    k2 = np.arange(steps.num_steps)[:, None] * E + np.where(ok, steps.ids % E, 0)
    score = np.where(ok, best_w[k2], 0)
    srt = np.where(ok, score * (2 ** 20) + np.where(ok, steps.ids, 0), np.iinfo(np.int64).max // 4)  # padding last
    spos = np.argsort(np.argsort(srt, axis=1, kind="stable"), axis=1, kind="stable")
    return {"rank": np.where(ok, best_rank[k2], NO_DROP).astype(np.int32),
            "pairs": np.where(ok, np.bincount(key, minlength=V * E)[k2], 0).astype(np.int32),
            "score": score.astype(np.int32), "spos": spos.astype(np.int32)}


def decode_demands(trace: Trace) -> int:
    """Demands of the decode passes: distinct experts per (pass, layer) visit, summed over the visits
    of decode passes (the same in both modes; the prefill's are the rest)."""
    L, E, K = trace.shape.num_layers, trace.shape.num_experts, trace.shape.top_k
    counts = np.diff(trace.cell_offsets)
    cell = np.repeat(np.repeat(np.arange(trace.num_visits, dtype=np.int64), counts), K)
    pairs = np.unique(cell * E + trace.experts.reshape(-1).astype(np.int64))
    return int(np.sum(np.asarray(trace.pass_phase)[pairs // E // L] == DECODE))
