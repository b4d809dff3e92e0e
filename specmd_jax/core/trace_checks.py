"""The invariants of a trace's arrays, one check per group of fields; each takes the trace ``t``
and ``where`` (the name its errors start with) and raises a
:class:`~specmd_jax.core.limits.TraceError` naming the field and the value.
:func:`specmd_jax.core.trace.validate` runs them in the order they are defined here, after the
model shape's check."""

from __future__ import annotations

import numpy as np

from specmd_jax.core.coerce import fail
from specmd_jax.core.limits import grid_error
from specmd_jax.core.trace_fields import DECODE, FLOAT_FIELDS, INT_FIELDS, NDIM, PREFILL


def check_dtypes(t, where: str) -> None:
    """Every array field has its dtype and ndim (the optional float fields may be ``None``)."""
    for f, nd in NDIM.items():
        a = getattr(t, f)
        if a is None and f in FLOAT_FIELDS:
            continue
        want = np.dtype(INT_FIELDS.get(f, np.float32))
        if not isinstance(a, np.ndarray) or a.dtype != want or a.ndim != nd:
            got = f"{a.ndim}-D {a.dtype} array of shape {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
            fail(where, f, f"must be a {nd}-D {want} array, got a {got}")


def check_passes(t, where: str) -> None:
    """Non-empty; the per-pass fields have one entry per pass; phases in {0, 1}; request ids and
    pass tokens non-negative."""
    P = t.pass_phase.shape[0]
    if P == 0 or t.experts.shape[0] == 0:
        fail(where, "experts", "empty trace: no passes or no routed rows")
    for f in ("pass_request", "pass_tokens"):
        if getattr(t, f).shape != (P,):
            fail(where, f, f"shape {getattr(t, f).shape} != ({P},)")
    bad = ~np.isin(t.pass_phase, (PREFILL, DECODE))
    if bad.any():
        i = int(np.argmax(bad))
        fail(where, "pass_phase", f"pass {i} has phase {int(t.pass_phase[i])} (expected 0 prefill or 1 decode)")
    for f in ("pass_request", "pass_tokens"):
        bad = getattr(t, f) < 0
        if bad.any():
            i = int(np.argmax(bad))
            fail(where, f, f"pass {i}: value {int(getattr(t, f)[i])} is negative")


def check_offsets(t, where: str) -> None:
    """Cell offsets: one per cell plus one, monotone from 0 to the row count; the ``(pass, layer)``
    grid within :func:`~specmd_jax.core.limits.max_cells`; no cell holds more rows than its pass
    has tokens."""
    P, L = t.pass_phase.shape[0], t.shape.num_layers
    off = t.cell_offsets
    if off.shape != (P * L + 1,):
        fail(where, "cell_offsets", f"shape {off.shape} != ({P * L + 1},) for P={P}, L={L}")
    if off[0] != 0 or np.any(np.diff(off) < 0) or off[-1] != t.experts.shape[0]:
        fail(where, "cell_offsets", f"must start at 0, be non-decreasing and end at the row count "
                                     f"{t.experts.shape[0]} (starts {int(off[0])}, ends {int(off[-1])})")
    msg = grid_error(P, L, t.experts.shape[0])
    if msg:
        fail(where, "cell_offsets", msg)
    over = np.diff(off).reshape(P, L) > t.pass_tokens[:, None]
    if over.any():
        p, l = map(int, np.argwhere(over)[0])
        fail(where, "pass_tokens", f"pass {p} has {int(t.pass_tokens[p])} tokens but its cell at layer {l} "
                                    f"holds {int(off[p * L + l + 1] - off[p * L + l])} rows (one per token at most)")


def check_experts(t, where: str) -> None:
    """Rows have exactly ``K`` ids, each in ``[0, E)``, none twice in one token's top-K."""
    s = t.shape
    if t.experts.ndim != 2 or t.experts.shape[1] != s.top_k:
        fail(where, "experts", f"rows must have K={s.top_k} ids, got array shape {t.experts.shape}")
    ex = t.experts.astype(np.int64)
    bad = (ex < 0) | (ex >= s.num_experts)
    if bad.any():
        r, k = map(int, np.argwhere(bad)[0])
        fail(where, "experts", f"row {r} slot {k}: expert id {int(ex[r, k])} not in [0, E={s.num_experts})")
    srt = np.sort(ex, axis=1)
    dup = np.any(srt[:, 1:] == srt[:, :-1], axis=1) if s.top_k > 1 else np.zeros(len(ex), bool)
    if dup.any():
        r = int(np.argmax(dup))
        fail(where, "experts", f"row {r}: duplicate expert ids in one token's top-k {ex[r].tolist()}")


def check_weights(t, where: str) -> None:
    """Weights (when present): the experts' shape, finite and non-negative."""
    if t.weights is None:
        return
    w = t.weights
    if w.shape != t.experts.shape:
        fail(where, "weights", f"shape {w.shape} != experts shape {t.experts.shape}")
    bad = ~np.isfinite(w) | (w < 0)
    if bad.any():
        r, k = map(int, np.argwhere(bad)[0])
        fail(where, "weights", f"row {r} slot {k}: weight {float(w[r, k])!r} is negative or not finite")


def check_pred_scores(t, where: str) -> None:
    """Predictions (when present): one row of ``E`` scores per visit, each row all NaN or all
    finite non-negative numbers, and all NaN at the last layer."""
    if t.pred_scores is None:
        return
    P, L, E = t.pass_phase.shape[0], t.shape.num_layers, t.shape.num_experts
    ps = t.pred_scores
    if ps.shape != (P * L, E):
        fail(where, "pred_scores", f"shape {ps.shape} != ({P * L}, {E}) (P*L visits x E)")
    nan = np.isnan(ps)
    part = nan.any(axis=1) & ~nan.all(axis=1)
    if part.any():
        v = int(np.argmax(part))
        fail(where, "pred_scores", f"visit {v} (pass {v // L}, layer {v % L}): some scores NaN, some not "
                                    "(a row is all NaN for 'no prediction' or all numbers)")
    bad = ~nan & (~np.isfinite(ps) | (ps < 0))
    if bad.any():
        v, e = map(int, np.argwhere(bad)[0])
        fail(where, "pred_scores", f"visit {v} expert {e}: score {float(ps[v, e])!r} is negative or infinite")
    last = ~nan[L - 1::L].all(axis=1)
    if last.any():
        p = int(np.argmax(last))
        fail(where, "pred_scores", f"pass {p}, last layer {L - 1}: has scores, but there is no next layer "
                                    "in the pass (must be NaN)")


def check_logits(t, where: str) -> None:
    """Router logits (when present): one finite row of ``E`` per routed row, whose top-``K`` in
    rank order are the row's recorded experts."""
    if t.logits is None:
        return
    s, lg = t.shape, t.logits
    if lg.shape != (t.experts.shape[0], s.num_experts):
        fail(where, "logits", f"shape {lg.shape} != ({t.experts.shape[0]}, {s.num_experts}) (rows x E)")
    if not np.all(np.isfinite(lg)):
        r, e = map(int, np.argwhere(~np.isfinite(lg))[0])
        fail(where, "logits", f"row {r} expert {e}: logit {float(lg[r, e])!r} is not finite")
    if not len(lg):
        return
    ex = t.experts.astype(np.int64)
    chosen = np.take_along_axis(lg, ex, axis=1)
    mask = np.ones(lg.shape, bool)
    np.put_along_axis(mask, ex, False, axis=1)
    rest = np.where(mask, lg, -np.inf).max(axis=1) if s.top_k < s.num_experts else np.full(len(lg), -np.inf)
    bad = (np.diff(chosen, axis=1) > 0).any(axis=1) | (chosen.min(axis=1) < rest)
    if bad.any():
        r = int(np.argmax(bad))
        fail(where, "logits", f"row {r}: the recorded experts {t.experts[r].tolist()} are not the top-"
                               f"{s.top_k} of the logits in rank order (their logits "
                               f"{[round(float(x), 4) for x in chosen[r]]}, best other {float(rest[r]):.4f})")
