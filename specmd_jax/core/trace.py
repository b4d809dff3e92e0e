"""The canonical in-memory routing trace and its versioned on-disk format (npz).

A trace is a sequence of *passes* (one forward sweep over layers ``0..L-1``): a prefill pass
carries all prompt tokens, a decode pass one token. For every ``(pass, layer)`` *cell* the trace
holds one row per routed token: the ``K`` expert ids in router rank order and, where known, the
router weights. Cells are stored ragged: rows of cell ``c = p * L + l`` are
``experts[cell_offsets[c]:cell_offsets[c + 1]]``. A cell may be empty (a recorded defect such as
rows lost by the logger); readers never invent rows, they record what was missing in ``notes``.

Optionally a trace carries *predictions*: ``pred_scores[p * L + l]`` holds, for every expert of
layer ``l + 1``, the score a real system had at visit ``(p, l)`` (the next layer's gate applied to
the current hidden state, summed over the pass's tokens); a row of NaN means "no prediction"
(always so for the last layer).

Optionally a trace carries the *router logits* of every routed token: ``logits[r]`` holds the
scores the router ranked all ``E`` experts of the row's layer by (its recorded experts are their
top-``K``, in rank order; validated). Cache-aware routing (:mod:`specmd_jax.core.routing`) re-ranks
with them.

On disk (``.npz``, ``format_version`` = 3; versions 1 and 2, without predictions or logits,
still load) the
same arrays are stored under their field names plus the model shape and provenance strings
(:mod:`specmd_jax.core.npz`). :func:`validate` runs on every load and on construction
from readers and the synthetic generator; its errors name the file, the field and the value.
:func:`~specmd_jax.core.npz.load_npz` checks every member's ``.npy`` header (shape, dtype) against ``meta``, the other
members and :mod:`specmd_jax.core.limits` before it reads any data; nothing is cast that would change
a value (:func:`make_trace` likewise).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from specmd_jax.core.limits import (FLOAT32_MAX, MAX_EXPERT_BYTES, MAX_IDS, TraceError, grid_error)

FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
PREFILL, DECODE = 0, 1
__all__ = ["FORMAT_VERSION", "READABLE_VERSIONS", "PREFILL", "DECODE", "TraceError", "ModelShape", "Trace",
           "validate", "make_trace"]

# In-memory dtype of each integer field (cast only when every value fits) and ndim of every array field.
INT_FIELDS = {"pass_request": np.int32, "pass_phase": np.int8, "pass_tokens": np.int32,
               "cell_offsets": np.int64, "experts": np.int16}
FLOAT_FIELDS = ("weights", "pred_scores", "logits")
NDIM = {"pass_request": 1, "pass_phase": 1, "pass_tokens": 1, "cell_offsets": 1, "experts": 2,
         "weights": 2, "pred_scores": 2, "logits": 2}


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """Static shape of an MoE model as the cache sees it.

    Attributes:
        name: model name (free text, e.g. ``"OLMoE-1B-7B"``).
        num_layers: ``L``, MoE layers.
        num_experts: ``E``, experts per layer.
        top_k: ``K``, experts routed per token.
        expert_bytes: bytes of one expert at the stored precision (all experts equal).
    """

    name: str
    num_layers: int
    num_experts: int
    top_k: int
    expert_bytes: int

    @property
    def num_ids(self) -> int:
        """``N = L * E``: global expert ids are ``layer * E + expert``."""
        return self.num_layers * self.num_experts

    @property
    def total_expert_bytes(self) -> int:
        return self.num_ids * self.expert_bytes


@dataclasses.dataclass(frozen=True, eq=False)
class Trace:
    """A validated routing trace (host-side numpy arrays; never traced by jax).

    Attributes:
        shape: the model shape.
        pass_request: int32[P] request id of each pass.
        pass_phase: int8[P] ``PREFILL`` (0) or ``DECODE`` (1).
        pass_tokens: int32[P] tokens in the pass as recorded by the source.
        cell_offsets: int64[P * L + 1] row offsets of cell ``p * L + l`` (non-decreasing).
        experts: int16[R, K] expert ids (``0..E-1``) of each routed token, rank order.
        weights: float32[R, K] router weights, or ``None`` when the source has none.
        source: where the trace came from (path or generator description).
        notes: defects and caveats found while reading (never silently dropped).
        pred_scores: float32[P * L, E] predicted next-layer scores per visit (see the module
            docstring), or ``None`` when the source has none.
    """

    shape: ModelShape
    pass_request: np.ndarray
    pass_phase: np.ndarray
    pass_tokens: np.ndarray
    cell_offsets: np.ndarray
    experts: np.ndarray
    weights: Optional[np.ndarray]
    source: str = "<memory>"
    notes: tuple = ()
    pred_scores: Optional[np.ndarray] = None
    logits: Optional[np.ndarray] = None

    @property
    def num_passes(self) -> int:
        return int(self.pass_phase.shape[0])

    @property
    def num_visits(self) -> int:
        return self.num_passes * self.shape.num_layers

    @property
    def has_weights(self) -> bool:
        return self.weights is not None

    @property
    def has_predictions(self) -> bool:
        return self.pred_scores is not None

    @property
    def has_logits(self) -> bool:
        return self.logits is not None

    def cell_rows(self, p: int, l: int) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """Rows (experts int16[r, K], weights float32[r, K] or None) of cell (p, l)."""
        c = p * self.shape.num_layers + l
        a, b = int(self.cell_offsets[c]), int(self.cell_offsets[c + 1])
        w = None if self.weights is None else self.weights[a:b]
        return self.experts[a:b], w

    def describe(self) -> str:
        s = self.shape
        n_pre = int(np.sum(self.pass_phase == PREFILL))
        return (f"{s.name}: L={s.num_layers} E={s.num_experts} K={s.top_k} "
                f"expert_bytes={s.expert_bytes}; {self.num_passes} passes ({n_pre} prefill), "
                f"{len(np.unique(self.pass_request))} requests, {self.experts.shape[0]} routed rows")

    def slice_passes(self, start: int, stop: int) -> "Trace":
        """Passes ``[start, stop)`` as a new trace (same shape)."""
        L = self.shape.num_layers
        off = self.cell_offsets[start * L: stop * L + 1]
        a, b = int(off[0]), int(off[-1])
        return dataclasses.replace(
            self, pass_request=self.pass_request[start:stop], pass_phase=self.pass_phase[start:stop],
            pass_tokens=self.pass_tokens[start:stop], cell_offsets=off - a,
            experts=self.experts[a:b], weights=None if self.weights is None else self.weights[a:b],
            pred_scores=None if self.pred_scores is None else self.pred_scores[start * L: stop * L],
            logits=None if self.logits is None else self.logits[a:b],
            source=f"{self.source}[passes {start}:{stop}]")


def fail(where: str, field: str, msg: str) -> None:
    raise TraceError(f"{where}: field '{field}': {msg}")


def check_shape(where: str, s) -> None:
    """The model shape's numbers: positive integers (not bools), ``K <= E``, ``L * E <= MAX_IDS``."""
    if not isinstance(s, ModelShape):
        fail(where, "shape", f"not a ModelShape: {s!r}")
    if not isinstance(s.name, str):
        fail(where, "shape.name", f"must be a string, got {s.name!r}")
    for f in ("num_layers", "num_experts", "top_k"):
        v = getattr(s, f)
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v <= 0:
            fail(where, f"shape.{f}", f"must be a positive integer, got {v!r}")
    if s.top_k > s.num_experts:
        fail(where, "shape.top_k", f"top_k={s.top_k} exceeds num_experts={s.num_experts}")
    if s.num_ids > MAX_IDS:
        fail(where, "shape", f"L*E={s.num_ids} exceeds {MAX_IDS} (int16 rank encoding limit)")
    v = s.expert_bytes
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v <= 0:
        fail(where, "shape.expert_bytes", f"must be a positive integer, got {v!r}")
    if v > MAX_EXPERT_BYTES:
        fail(where, "shape.expert_bytes", f"{v} exceeds {MAX_EXPERT_BYTES} bytes per expert")


def validate(t: Trace, where: Optional[str] = None) -> Trace:
    """Check every invariant of a trace; raise :class:`TraceError` naming file, field and value.

    Checks: positive shape numbers; non-empty; every array's dtype and ndim; offsets monotone and
    consistent; expert ids in ``[0, E)``; no duplicate id inside one token's top-K; rows have
    exactly ``K`` columns; weights finite and non-negative; phases in {0, 1}; request ids and
    pass tokens non-negative; no cell holds more rows than its pass has tokens; the
    ``(pass, layer)`` grid within :func:`~specmd_jax.core.limits.max_cells`.
    """
    where = where or t.source
    s = t.shape
    check_shape(where, s)
    for f, nd in NDIM.items():
        a = getattr(t, f)
        if a is None and f in FLOAT_FIELDS:
            continue
        want = np.dtype(INT_FIELDS.get(f, np.float32))
        if not isinstance(a, np.ndarray) or a.dtype != want or a.ndim != nd:
            got = f"{a.ndim}-D {a.dtype} array of shape {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
            fail(where, f, f"must be a {nd}-D {want} array, got a {got}")
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
    L = s.num_layers
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
    if t.weights is not None:
        w = t.weights
        if w.shape != t.experts.shape:
            fail(where, "weights", f"shape {w.shape} != experts shape {t.experts.shape}")
        bad = ~np.isfinite(w) | (w < 0)
        if bad.any():
            r, k = map(int, np.argwhere(bad)[0])
            fail(where, "weights", f"row {r} slot {k}: weight {float(w[r, k])!r} is negative or not finite")
    if t.pred_scores is not None:
        ps = t.pred_scores
        if ps.shape != (P * L, s.num_experts):
            fail(where, "pred_scores", f"shape {ps.shape} != ({P * L}, {s.num_experts}) (P*L visits x E)")
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
    if t.logits is not None:
        lg = t.logits
        if lg.shape != (t.experts.shape[0], s.num_experts):
            fail(where, "logits", f"shape {lg.shape} != ({t.experts.shape[0]}, {s.num_experts}) (rows x E)")
        if not np.all(np.isfinite(lg)):
            r, e = map(int, np.argwhere(~np.isfinite(lg))[0])
            fail(where, "logits", f"row {r} expert {e}: logit {float(lg[r, e])!r} is not finite")
        if len(lg):
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
    return t


def _first(bad: np.ndarray):
    """Index (int, or tuple for n-D) of the first True of ``bad``."""
    i = np.unravel_index(int(np.argmax(bad)), bad.shape)
    return int(i[0]) if len(i) == 1 else tuple(map(int, i))


def as_int(x, field: str, dtype, where: str, whole_floats: bool = True) -> np.ndarray:
    """``x`` as ``dtype``; refuse non-integer dtypes (floats only when whole and ``whole_floats``)
    and values the cast would wrap, naming the field, the value and its index."""
    try:
        a = np.asarray(x)
    except (ValueError, TypeError) as e:
        fail(where, field, f"not a rectangular array ({e})")
    if a.dtype.kind == "f" and whole_floats:
        bad = ~np.isfinite(a) | (a != np.trunc(a)) if a.size else np.zeros(a.shape, bool)
        if bad.any():
            i = _first(bad)
            fail(where, field, f"value {a[i].item()!r} at index {i} is not a whole number")
    elif a.dtype.kind not in "iu":
        fail(where, field, f"dtype {a.dtype} is not an integer type")
    if a.size:
        info = np.iinfo(dtype)
        bad = (a < info.min) | (a > info.max)
        if bad.any():
            i = _first(bad)
            fail(where, field, f"value {int(a[i])} at index {i} does not fit {np.dtype(dtype).name}")
    return a.astype(dtype)


def as_float(x, field: str, where: str) -> np.ndarray:
    """``x`` as float32; refuse dtypes other than real floats and integers (strings, complex,
    bool, objects) and finite values float32 cannot hold, naming the field, value and index."""
    try:
        a = np.asarray(x)
    except (ValueError, TypeError) as e:
        fail(where, field, f"not a rectangular array ({e})")
    if a.dtype.kind not in "fiu":
        fail(where, field, f"dtype {a.dtype} is not a real number type (float or integer)")
    if a.size:
        b = a.astype(np.float64)
        with np.errstate(invalid="ignore"):
            big = np.isfinite(b) & (np.abs(b) > FLOAT32_MAX)
        if big.any():
            i = _first(big)
            fail(where, field, f"value {a[i].item()!r} at index {i} overflows float32")
    return a.astype(np.float32)


def make_trace(shape: ModelShape, pass_request: Sequence[int], pass_phase: Sequence[int],
               pass_tokens: Sequence[int], cell_offsets, experts, weights=None, source="<memory>",
               notes: Sequence[str] = (), pred_scores=None, logits=None) -> Trace:
    """Build and validate a :class:`Trace` from array-likes.

    Integer fields accept integer arrays (and floats holding whole numbers); real-number fields
    accept float or integer arrays. Nothing is cast that would change a value: a value out of the
    field's dtype range, a fractional id, a string or complex array is a :class:`TraceError`.
    """
    check_shape(source, shape)
    ex = as_int(experts, "experts", np.int16, source)
    t = Trace(shape=shape,
              pass_request=as_int(pass_request, "pass_request", np.int32, source),
              pass_phase=as_int(pass_phase, "pass_phase", np.int8, source),
              pass_tokens=as_int(pass_tokens, "pass_tokens", np.int32, source),
              cell_offsets=as_int(cell_offsets, "cell_offsets", np.int64, source),
              experts=ex if ex.size else np.zeros((0, shape.top_k), np.int16),
              weights=None if weights is None else as_float(weights, "weights", source),
              source=source, notes=tuple(notes),
              pred_scores=None if pred_scores is None else as_float(pred_scores, "pred_scores", source),
              logits=None if logits is None else as_float(logits, "logits", source))
    return validate(t)
