"""Turns: the scan steps of an execution reading (host-side numpy, no jax).

A visit runs as one *turn* under ``execution="visit"`` (its whole demand) and as one turn per
distinct expert under ``execution="expert"``, in router order (first appearance in the visit's
token rows, token-major, then rank); a visit with no demand keeps one empty turn, which carries
its compute (:mod:`specmd_jax.core.timing`). The JAX engines scan over turns; every per-visit input
(demand details, proposals, the visit's pinned set) is gathered onto its turns here, once per
trace and reading, and shared by every configuration. The three dimensions of a reading are
these pieces: ``execution`` the turns themselves, ``prefetch_issue`` :meth:`TurnArrays.proposals`
and :meth:`TurnArrays.carries_proposals`, ``pin`` :meth:`TurnArrays.pin_sets`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from specmd_jax.core.timing import EXECUTIONS, PINS, PREFETCH_ISSUES
from specmd_jax.core.trace import Trace
from specmd_jax.core.steps import StepArrays, prepare_steps


@dataclasses.dataclass(frozen=True)
class TurnArrays:
    """Per-turn indices into the pinned visits (``T`` turns).

    Attributes:
        visit: int32[T] the visit (pinned step) of each turn.
        index: int32[T] the turn's place in its visit (``i``).
        count: int32[T] the visit's number of turns (``n``).
        new_pass: bool[T] the first turn of a pass.
        ids: int32[T, Wd] the turn's demand: the visit's row (``Wd = W``) or its one expert
            (``Wd = 1``; ``-1`` for an empty visit's turn).
        slot: int32[T] the column of the turn's expert in the visit's row (``-1``: the whole
            row, or no expert).
        execution: ``"visit"`` or ``"expert"``.
    """

    visit: np.ndarray
    index: np.ndarray
    count: np.ndarray
    new_pass: np.ndarray
    ids: np.ndarray
    slot: np.ndarray
    execution: str

    @property
    def num_turns(self) -> int:
        return int(self.visit.shape[0])

    @property
    def first(self) -> np.ndarray:
        return self.index == 0

    @property
    def last(self) -> np.ndarray:
        return self.index == self.count - 1

    def per_turn(self, a: np.ndarray, fill) -> np.ndarray:
        """A per-visit ``[S, W]`` array as ``[T, Wd]`` (the turn expert's entry under ``expert``)."""
        if self.execution == "visit":
            return a
        rows = a[self.visit, np.maximum(self.slot, 0)]
        return np.where(self.slot >= 0, rows, fill).astype(a.dtype)[:, None]

    def proposals(self, stack: np.ndarray, issue: str) -> np.ndarray:
        """Plans ``int32[n_plans, S, Q]`` as ``[n_plans, T, Q]``: a visit's proposals go on its first
        turn (``at_router``) or its last (``after_use``); other turns propose nothing."""
        if issue not in PREFETCH_ISSUES:
            raise ValueError(f"prefetch_issue must be one of {PREFETCH_ISSUES}, got {issue!r}")
        if self.execution == "visit":
            return stack
        on = self.first if issue == "at_router" else self.last
        return np.where(on[None, :, None], stack[:, self.visit], -1).astype(np.int32)

    def carries_proposals(self, issue: str) -> "np.ndarray | None":
        """bool[T]: the turn of each visit that carries its proposals (``issue``: its first turn
        ``at_router``, its last ``after_use``); ``None`` under ``execution="visit"`` (every turn does)."""
        if issue not in PREFETCH_ISSUES:
            raise ValueError(f"prefetch_issue must be one of {PREFETCH_ISSUES}, got {issue!r}")
        if self.execution == "visit":
            return None
        return self.first if issue == "at_router" else self.last

    def pin_sets(self, steps: StepArrays, pin: str) -> "np.ndarray | None":
        """int32[T, W]: the visit's whole demand on each of its turns when the reading pins the visit
        (``pin="visit"``) under per-expert execution; ``None`` when the pinned set is the turn's own
        demand (every reading of ``execution="visit"``, and ``pin="running"``)."""
        if pin not in PINS:
            raise ValueError(f"pin must be one of {PINS}, got {pin!r}")
        if self.execution == "visit" or pin == "running":
            return None
        return steps.ids[self.visit]


def prepare_turns(trace: Trace, steps: StepArrays, execution: str) -> TurnArrays:
    """The turns of ``trace`` (``steps``: its pinned :class:`StepArrays`) under ``execution``."""
    if execution not in EXECUTIONS:
        raise ValueError(f"execution must be one of {EXECUTIONS}, got {execution!r}")
    if steps.mode != "pinned":
        raise ValueError("turns are built from pinned steps")
    S, L = steps.num_steps, trace.shape.num_layers
    if execution == "visit":
        one = np.ones(S, np.int32)
        return TurnArrays(visit=np.arange(S, dtype=np.int32), index=np.zeros(S, np.int32), count=one,
                          new_pass=steps.new_pass.copy(), ids=steps.ids, slot=np.full(S, -1, np.int32),
                          execution=execution)
    seq = prepare_steps(trace, "sequential")                 # first appearance: token, then rank
    v_seq = seq.pass_.astype(np.int64) * L + seq.layer
    nper = np.bincount(v_seq, minlength=S)
    empty = np.flatnonzero(nper == 0)
    v_all = np.concatenate([v_seq, empty])
    id_all = np.concatenate([seq.ids[:, 0].astype(np.int64), np.full(len(empty), -1)])
    order = np.argsort(v_all, kind="stable")                 # a visit's experts keep router order
    visit, gid = v_all[order], id_all[order]
    cnt = np.maximum(nper, 1)
    start = np.cumsum(cnt) - cnt
    index = np.arange(len(visit)) - start[visit]
    row = steps.ids[visit]
    slot = np.where(gid >= 0, np.sum((row >= 0) & (row < gid[:, None]), axis=1), -1)
    return TurnArrays(visit=visit.astype(np.int32), index=index.astype(np.int32), count=cnt[visit].astype(np.int32),
                      new_pass=steps.new_pass[visit] & (index == 0), ids=gid.astype(np.int32)[:, None],
                      slot=slot.astype(np.int32), execution=execution)
