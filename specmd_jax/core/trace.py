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

On disk (``.npz``, ``format_version`` = 4; versions 1 to 3, without per-layer expert bytes,
predictions (v1) or logits (v1, v2), still load) the
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

from specmd_jax.core.coerce import as_float, as_int, fail
from specmd_jax.core.limits import MAX_EXPERT_BYTES, MAX_IDS, TraceError
from specmd_jax.core.trace_checks import (check_dtypes, check_experts, check_logits, check_offsets, check_passes,
                                          check_pred_scores, check_weights)
from specmd_jax.core.trace_fields import DECODE, PREFILL

FORMAT_VERSION = 4
READABLE_VERSIONS = (1, 2, 3, 4)
__all__ = ["FORMAT_VERSION", "READABLE_VERSIONS", "PREFILL", "DECODE", "TraceError", "ModelShape", "Trace",
           "validate", "make_trace"]


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """Static shape of an MoE model as the cache sees it.

    Attributes:
        name: model name (free text, e.g. ``"OLMoE-1B-7B"``).
        num_layers: ``L``, MoE layers.
        num_experts: ``E``, experts per layer.
        top_k: ``K``, experts routed per token.
        expert_bytes: bytes of one expert at the stored precision; where layers differ, the
            largest layer's (the slot engines size every slot by it).
        layer_bytes: bytes of one expert of each layer (``L`` values, max ``expert_bytes``), or
            ``None`` when every layer's experts weigh ``expert_bytes``. The byte-budget replay
            (:mod:`specmd_jax.reference.batches`) admits and evicts by these.
    """

    name: str
    num_layers: int
    num_experts: int
    top_k: int
    expert_bytes: int
    layer_bytes: Optional[tuple] = None

    def __post_init__(self):
        lb = self.layer_bytes
        if isinstance(lb, (list, np.ndarray)):   # from JSON or numpy: a hashable tuple (checked by check_shape)
            object.__setattr__(self, "layer_bytes", tuple(lb.tolist() if isinstance(lb, np.ndarray) else lb))

    @property
    def bytes_per_layer(self) -> tuple:
        """Bytes of one expert of each layer (``L`` ints)."""
        return tuple(self.layer_bytes) if self.layer_bytes is not None else (self.expert_bytes,) * self.num_layers

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
                f"expert_bytes={s.expert_bytes}{' (max over layers)' if s.layer_bytes else ''}; {self.num_passes} passes ({n_pre} prefill), "
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
    _check_layer_bytes(where, s)


def _check_layer_bytes(where: str, s) -> None:
    """``layer_bytes``: ``None`` or ``L`` positive integers within the limit whose max is ``expert_bytes``."""
    lb = s.layer_bytes
    if lb is None:
        return
    if not isinstance(lb, tuple) or len(lb) != s.num_layers:
        fail(where, "shape.layer_bytes", f"must hold one value per layer (L={s.num_layers}), got "
                                         f"{str(lb)[:80]!r}")
    for l, b in enumerate(lb):
        if isinstance(b, (bool, np.bool_)) or not isinstance(b, (int, np.integer)) or not 0 < b <= MAX_EXPERT_BYTES:
            fail(where, f"shape.layer_bytes[{l}]", f"must be an integer in [1, {MAX_EXPERT_BYTES}], got {b!r}")
    if max(lb) != s.expert_bytes:
        fail(where, "shape.expert_bytes", f"{s.expert_bytes} must be the largest of layer_bytes ({max(lb)})")


def validate(t: Trace, where: Optional[str] = None) -> Trace:
    """Check every invariant of a trace; raise :class:`TraceError` naming file, field and value.

    Checks: positive shape numbers; non-empty; every array's dtype and ndim; offsets monotone and
    consistent; expert ids in ``[0, E)``; no duplicate id inside one token's top-K; rows have
    exactly ``K`` columns; weights finite and non-negative; phases in {0, 1}; request ids and
    pass tokens non-negative; no cell holds more rows than its pass has tokens; the
    ``(pass, layer)`` grid within :func:`~specmd_jax.core.limits.max_cells`. The checks past the
    shape's are in :mod:`specmd_jax.core.trace_checks`.
    """
    where = where or t.source
    check_shape(where, t.shape)
    check_dtypes(t, where)
    check_passes(t, where)
    check_offsets(t, where)
    check_experts(t, where)
    check_weights(t, where)
    check_pred_scores(t, where)
    check_logits(t, where)
    return t


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
