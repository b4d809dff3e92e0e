"""The execution reading (:class:`specmd_jax.core.timing.Reading`) inside a kernel step: the pieces
the instant and the asynchronous kernels compose, each written once.

A reading is static (one compiled program each). Its three dimensions reach a step as

* ``execution``: a step is a turn (:mod:`specmd_jax.core.turns`); :func:`on_issuing_turn` runs a
  proposal batch on the one turn of a visit that carries it, and :func:`turn_compute` gives a
  turn its share of the layer's compute;
* ``prefetch_issue``: :func:`proposals_first` says whether the proposal batch runs before the
  demand is served (at the router) or after its use;
* ``pin``: :func:`pin_set` is what every batch of the step protects: the turn's executed demand,
  or the visit's whole demand (:attr:`TurnArrays.pin_sets` on the host).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp
from jax import lax

from specmd_jax.core.timing import EXECUTIONS, PINS, PREFETCH_ISSUES


def check(execution: str, issue: str, pin_width: int) -> None:
    """Refuse an unknown reading, or a visit-wide pin set outside ``execution="expert"``."""
    if execution not in EXECUTIONS or issue not in PREFETCH_ISSUES:
        raise ValueError(f"execution must be one of {EXECUTIONS} and prefetch issue one of {PREFETCH_ISSUES}, got "
                         f"{execution!r}, {issue!r}")
    if pin_width and execution != "expert":
        raise ValueError("a visit-wide pin set (pin_width > 0) is a reading of execution='expert' only "
                         f"(pin {PINS[0]!r} under execution 'visit' pins the turn itself)")


def proposals_first(issue: str) -> bool:
    """True when a step's proposal batch runs before its demand is served (``at_router``)."""
    return issue == "at_router"


class PinSet(NamedTuple):
    """The ids a step's batches protect: ``valid`` bool[P], ``gat`` (gather index, 0 where not
    valid), ``scat`` (scatter index, ``N`` where not valid: dropped) and ``mask`` bool[N]."""

    valid: Any
    gat: Any
    scat: Any
    mask: Any

    def ranks(self, r, absent, dtype):
        """The pinned ids' ranks in ``r`` (``absent`` where not valid)."""
        return jnp.where(self.valid, r[self.gat], absent).astype(dtype)


def pin_set(ids, valid, n: int, mask=None) -> PinSet:
    """The pinned set of ``ids`` where ``valid`` (``mask``: its [n] membership, when the caller
    has it already)."""
    scat = jnp.where(valid, ids, n)
    if mask is None:
        mask = jnp.zeros((n,), bool).at[scat].set(True, mode="drop")
    return PinSet(valid, jnp.where(valid, ids, 0), scat, mask)


def visit_pins(pins, n: int) -> PinSet:
    """The visit's whole demand (``pins`` int32[P], -1 padded) as the pinned set (``pin="visit"``)."""
    return pin_set(pins, pins >= 0, n)


def on_issuing_turn(sparse: bool, flag, batch, carry, ncounts: int):
    """``batch(carry) -> (carry, counts tuple)`` on the turns that carry proposals: every turn
    when not ``sparse`` (``execution="visit"``), else a real branch on the shared ``flag`` (the
    other turns skip the batch and count zeros)."""
    if not sparse:
        return batch(carry)

    def run(c):
        out, cnt = batch(c)
        return out, jnp.stack(cnt).astype(jnp.int32)

    out, cnt = lax.cond(flag, run, lambda c: (c, jnp.zeros((ncounts,), jnp.int32)), carry)
    return out, tuple(cnt[i] for i in range(ncounts))


def turn_compute(comp, visit, c_exp):
    """A turn's share of its layer's compute ``comp`` (``core.timing.turn_share``): the layer's
    ticks (or ``c_exp`` per demanded expert of the visit, when ``c_exp >= 0``) split over the
    visit's turns, the remainder to the first ones. Whole visits (``nturns`` None) keep ``comp``."""
    if visit.nturns is None:
        return comp
    if c_exp is not None:
        comp = jnp.where(c_exp >= 0, c_exp * visit.vdem, comp).astype(jnp.int32)
    n_t = jnp.maximum(visit.nturns, 1)
    return comp // n_t + (visit.turn < comp % n_t).astype(jnp.int32)
