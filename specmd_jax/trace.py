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
top-``K``, in rank order; validated). Cache-aware routing (:mod:`specmd_jax.routing`) re-ranks
with them.

On disk (``.npz``, ``format_version`` = 3; versions 1 and 2, without predictions or logits,
still load) the
same arrays are stored under their field names plus the model shape and provenance strings. :func:`validate` runs on every load and on construction
from readers and the synthetic generator; its errors name the file, the field and the value.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional, Sequence

import numpy as np

FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
PREFILL, DECODE = 0, 1


class TraceError(ValueError):
    """A trace failed validation. The message names the file, the field and the offending value."""


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


def _fail(where: str, field: str, msg: str) -> None:
    raise TraceError(f"{where}: field '{field}': {msg}")


def validate(t: Trace, where: Optional[str] = None) -> Trace:
    """Check every invariant of a trace; raise :class:`TraceError` naming file, field and value.

    Checks: positive shape numbers; non-empty; array dtypes/shapes; offsets monotone and
    consistent; expert ids in ``[0, E)``; no duplicate id inside one token's top-K; rows have
    exactly ``K`` columns; weights finite and non-negative; phases in {0, 1}.
    """
    where = where or t.source
    s = t.shape
    for f in ("num_layers", "num_experts", "top_k"):
        v = getattr(s, f)
        if not isinstance(v, (int, np.integer)) or v <= 0:
            _fail(where, f"shape.{f}", f"must be a positive integer, got {v!r}")
    if s.top_k > s.num_experts:
        _fail(where, "shape.top_k", f"top_k={s.top_k} exceeds num_experts={s.num_experts}")
    if s.num_ids > 32000:
        _fail(where, "shape", f"L*E={s.num_ids} exceeds 32000 (int16 rank encoding limit)")
    if not isinstance(s.expert_bytes, (int, np.integer)) or s.expert_bytes <= 0:
        _fail(where, "shape.expert_bytes", f"must be a positive integer, got {s.expert_bytes!r}")
    P = t.pass_phase.shape[0]
    if P == 0 or t.experts.shape[0] == 0:
        _fail(where, "experts", "empty trace: no passes or no routed rows")
    for f in ("pass_request", "pass_tokens"):
        if getattr(t, f).shape != (P,):
            _fail(where, f, f"shape {getattr(t, f).shape} != ({P},)")
    bad = ~np.isin(t.pass_phase, (PREFILL, DECODE))
    if bad.any():
        i = int(np.argmax(bad))
        _fail(where, "pass_phase", f"pass {i} has phase {int(t.pass_phase[i])} (expected 0 prefill or 1 decode)")
    L = s.num_layers
    off = t.cell_offsets
    if off.shape != (P * L + 1,):
        _fail(where, "cell_offsets", f"shape {off.shape} != ({P * L + 1},) for P={P}, L={L}")
    if off[0] != 0 or np.any(np.diff(off) < 0) or off[-1] != t.experts.shape[0]:
        _fail(where, "cell_offsets", "must start at 0, be non-decreasing and end at the row count")
    if t.experts.ndim != 2 or t.experts.shape[1] != s.top_k:
        _fail(where, "experts", f"rows must have K={s.top_k} ids, got array shape {t.experts.shape}")
    ex = t.experts.astype(np.int64)
    bad = (ex < 0) | (ex >= s.num_experts)
    if bad.any():
        r, k = map(int, np.argwhere(bad)[0])
        _fail(where, "experts", f"row {r} slot {k}: expert id {int(ex[r, k])} not in [0, E={s.num_experts})")
    srt = np.sort(ex, axis=1)
    dup = np.any(srt[:, 1:] == srt[:, :-1], axis=1) if s.top_k > 1 else np.zeros(len(ex), bool)
    if dup.any():
        r = int(np.argmax(dup))
        _fail(where, "experts", f"row {r}: duplicate expert ids in one token's top-k {ex[r].tolist()}")
    if t.weights is not None:
        w = t.weights
        if w.shape != t.experts.shape:
            _fail(where, "weights", f"shape {w.shape} != experts shape {t.experts.shape}")
        bad = ~np.isfinite(w) | (w < 0)
        if bad.any():
            r, k = map(int, np.argwhere(bad)[0])
            _fail(where, "weights", f"row {r} slot {k}: weight {float(w[r, k])!r} is negative or not finite")
    if t.pred_scores is not None:
        ps = t.pred_scores
        if ps.shape != (P * L, s.num_experts):
            _fail(where, "pred_scores", f"shape {ps.shape} != ({P * L}, {s.num_experts}) (P*L visits x E)")
        nan = np.isnan(ps)
        part = nan.any(axis=1) & ~nan.all(axis=1)
        if part.any():
            v = int(np.argmax(part))
            _fail(where, "pred_scores", f"visit {v} (pass {v // L}, layer {v % L}): some scores NaN, some not "
                                        "(a row is all NaN for 'no prediction' or all numbers)")
        bad = ~nan & (~np.isfinite(ps) | (ps < 0))
        if bad.any():
            v, e = map(int, np.argwhere(bad)[0])
            _fail(where, "pred_scores", f"visit {v} expert {e}: score {float(ps[v, e])!r} is negative or infinite")
        last = ~nan[L - 1::L].all(axis=1)
        if last.any():
            p = int(np.argmax(last))
            _fail(where, "pred_scores", f"pass {p}, last layer {L - 1}: has scores, but there is no next layer "
                                        "in the pass (must be NaN)")
    if t.logits is not None:
        lg = t.logits
        if lg.shape != (t.experts.shape[0], s.num_experts):
            _fail(where, "logits", f"shape {lg.shape} != ({t.experts.shape[0]}, {s.num_experts}) (rows x E)")
        if not np.all(np.isfinite(lg)):
            r, e = map(int, np.argwhere(~np.isfinite(lg))[0])
            _fail(where, "logits", f"row {r} expert {e}: logit {float(lg[r, e])!r} is not finite")
        if len(lg):
            ex = t.experts.astype(np.int64)
            chosen = np.take_along_axis(lg, ex, axis=1)
            mask = np.ones(lg.shape, bool)
            np.put_along_axis(mask, ex, False, axis=1)
            rest = np.where(mask, lg, -np.inf).max(axis=1) if s.top_k < s.num_experts else np.full(len(lg), -np.inf)
            bad = (np.diff(chosen, axis=1) > 0).any(axis=1) | (chosen.min(axis=1) < rest)
            if bad.any():
                r = int(np.argmax(bad))
                _fail(where, "logits", f"row {r}: the recorded experts {t.experts[r].tolist()} are not the top-"
                                       f"{s.top_k} of the logits in rank order (their logits "
                                       f"{[round(float(x), 4) for x in chosen[r]]}, best other {float(rest[r]):.4f})")
    return t


def make_trace(shape: ModelShape, pass_request: Sequence[int], pass_phase: Sequence[int],
               pass_tokens: Sequence[int], cell_offsets, experts, weights=None, source="<memory>",
               notes: Sequence[str] = (), pred_scores=None, logits=None) -> Trace:
    """Build and validate a :class:`Trace` from array-likes (dtypes normalised)."""
    t = Trace(shape=shape,
              pass_request=np.asarray(pass_request, np.int32),
              pass_phase=np.asarray(pass_phase, np.int8),
              pass_tokens=np.asarray(pass_tokens, np.int32),
              cell_offsets=np.asarray(cell_offsets, np.int64),
              experts=np.asarray(experts).astype(np.int16) if np.asarray(experts).size else
              np.zeros((0, shape.top_k), np.int16),
              weights=None if weights is None else np.asarray(weights, np.float32),
              source=source, notes=tuple(notes),
              pred_scores=None if pred_scores is None else np.asarray(pred_scores, np.float32),
              logits=None if logits is None else np.asarray(logits, np.float32))
    if t.experts.ndim == 2 and t.experts.size and np.asarray(experts).max() >= 2 ** 15:
        _fail(source, "experts", f"expert id {int(np.asarray(experts).max())} too large")
    return validate(t)


def save_trace(t: Trace, path: str) -> None:
    """Write ``t`` to ``path`` in the canonical npz format (version ``FORMAT_VERSION``)."""
    meta = {"format_version": FORMAT_VERSION, "shape": dataclasses.asdict(t.shape),
            "source": t.source, "notes": list(t.notes), "has_weights": t.has_weights}
    arrays = dict(pass_request=t.pass_request, pass_phase=t.pass_phase, pass_tokens=t.pass_tokens,
                  cell_offsets=t.cell_offsets, experts=t.experts)
    if t.weights is not None:
        arrays["weights"] = t.weights
    if t.pred_scores is not None:
        arrays["pred_scores"] = t.pred_scores
    if t.logits is not None:
        arrays["logits"] = t.logits
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    with open(path, "wb") as f:
        np.savez_compressed(f, meta=np.array(json.dumps(meta)), **arrays)


def _int_field(z, field: str, dtype, where: str) -> np.ndarray:
    """``z[field]`` cast to ``dtype``; refuse non-integer arrays and values the cast would wrap."""
    a = z[field]
    if a.dtype.kind not in "iub":
        _fail(where, field, f"dtype {a.dtype} is not an integer type")
    if a.size:
        info = np.iinfo(dtype)
        lo, hi = a.min(), a.max()
        if lo < info.min or hi > info.max:
            v = int(lo) if lo < info.min else int(hi)
            _fail(where, field, f"value {v} does not fit {np.dtype(dtype).name}")
    return a.astype(dtype)


def load_npz(path: str) -> Trace:
    """Read a canonical npz trace; validate it; errors name the file, field and value."""
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - re-raised with the file name
        raise TraceError(f"{path}: not a readable npz file ({e})") from e
    with z:
        if "meta" not in z:
            _fail(path, "meta", "missing (not a specmd_jax trace)")
        try:
            meta = json.loads(str(z["meta"]))
        except json.JSONDecodeError as e:
            raise TraceError(f"{path}: field 'meta': not valid JSON ({e})") from e
        ver = meta.get("format_version")
        if ver not in READABLE_VERSIONS:
            _fail(path, "format_version", f"unknown version {ver!r} (this build reads {READABLE_VERSIONS})")
        for f in ("pass_request", "pass_phase", "pass_tokens", "cell_offsets", "experts"):
            if f not in z:
                _fail(path, f, "missing")
        try:
            shape = ModelShape(**meta["shape"])
        except (KeyError, TypeError) as e:
            raise TraceError(f"{path}: field 'shape': {e}") from e
        t = Trace(shape=shape, pass_request=_int_field(z, "pass_request", np.int32, path),
                  pass_phase=_int_field(z, "pass_phase", np.int8, path),
                  pass_tokens=_int_field(z, "pass_tokens", np.int32, path),
                  cell_offsets=_int_field(z, "cell_offsets", np.int64, path),
                  experts=_int_field(z, "experts", np.int16, path),
                  weights=z["weights"].astype(np.float32) if "weights" in z else None,
                  pred_scores=z["pred_scores"].astype(np.float32) if "pred_scores" in z else None,
                  logits=z["logits"].astype(np.float32) if "logits" in z else None,
                  source=str(meta.get("source", path)), notes=tuple(meta.get("notes", ())))
    return validate(t, where=path)
