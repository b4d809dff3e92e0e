"""The instant prefetch kernel's types: static spec, numeric parameters, state, turn record, its
counter rows and the static :class:`PfLayout` its pieces share (:mod:`specmd_jax.kernels.proposals`,
composed in :mod:`specmd_jax.kernels.instant`)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp

from specmd_jax.core.counters import INSTANT_COUNTERS
from specmd_jax.kernels.pytree import pytree_dataclass


@pytree_dataclass
class PfParams:
    """Numeric parameters of one configuration (vmappable): ``capacity`` slots and ``drop_rank``,
    the ``drop_priority`` threshold (a missing expert whose best router rank in the visit is
    ``>= drop_rank`` is dropped; :mod:`specmd_jax.core.miss`; ``fetch``: a threshold no rank reaches)."""

    capacity: Any
    drop_rank: Any


@pytree_dataclass
class PfState:
    """Per-configuration state.

    Attributes:
        rank: int16[N] protection rank (``GONE``/``ABSENT`` sentinels), as in :mod:`specmd_jax.kernels.demand`.
        occ: int32[] occupancy.
        cur: int32[L] Least-Stale's current tier per layer (it fills the top ``sum(cur)`` ranks,
            layer by layer from the last layer down); zeros for other policies.
        pfu: bool[N] resident, prefetched and not demanded since.
        per_layer: int32[6, L] ``engine.DEMAND_COUNTERS`` by visit layer.
        pf: int32[len(pf_counter_names(spec)), L] :func:`pf_counter_names` by visit layer.
        max_occ: int32[].
    """

    rank: Any
    occ: Any
    cur: Any
    pfu: Any
    per_layer: Any
    pf: Any
    max_occ: Any


@pytree_dataclass
class PfVisit:
    """One turn's inputs (shared by all configurations; a turn is a whole visit under
    ``execution="visit"``): ``ids`` int32[W] demand (ascending, -1 padded), ``pf_ids`` int32[Q]
    proposals in issue order (-1 padded; -1 everywhere on a turn that issues nothing)."""

    layer: Any
    new_pass: Any
    ids: Any
    pf_ids: Any
    rank: Any   # int32[W] best router rank of each demanded id in the visit
    pairs: Any  # int32[W] tokens routing it
    units: Any  # int32[W] its summed quantised router weight
    pin: Any = None    # int32[pin_width] the visit's whole demand (PfSpec.pin_width > 0), else None
    issue: Any = None  # bool[]: this turn carries the visit's proposals (execution="expert"), else None


class PfSpec(NamedTuple):
    """Static structure of a compiled instant-prefetch engine (hashable; one compile per spec).

    The execution reading is static: ``execution``, ``issue`` and the pin (``pin_width``) each
    select a different program (:mod:`specmd_jax.kernels.reading`); the defaults are today's reading.
    """

    policy: str
    num_layers: int
    num_experts: int
    width: int
    prefetch_width: int
    depth: int = 1  # plan lookahead; > 1 needs Least-Stale's per-layer placement (slower)
    full_demand: bool = True  # no drop thresholds: the executed set is the demand (one classification)
    execution: str = "visit"  # "expert": turns of one expert; proposals on one turn (PfVisit.issue)
    issue: str = "after_use"  # "at_router": a turn admits its proposals before its demand arrives
    pin_width: int = 0  # 0: pinned = the turn's executed demand; > 0: width of PfVisit.pin (expert, pin=visit)


def pf_counter_names(spec: PfSpec) -> tuple:
    """Rows of :attr:`PfState.pf` under ``spec``: :data:`INSTANT_COUNTERS`, plus ``pf_pending``
    when proposals are issued at the router (a proposal whose demand copy the turn just queued)."""
    return INSTANT_COUNTERS + (("pf_pending",) if spec.issue == "at_router" else ())


class PfLayout:
    """Static constants of one :class:`PfSpec` (sizes, policy and reading flags, triangular masks)
    and the per-layer helpers, built once per compile."""

    def __init__(self, spec: PfSpec):
        self.spec = spec
        L, E, W, Q = spec.num_layers, spec.num_experts, spec.width, spec.prefetch_width
        self.L, self.E, self.W, self.Q, self.N = L, E, W, Q, L * E
        self.ls, self.fifo = spec.policy == "ls", spec.policy == "fifo"
        self.pre = spec.issue == "at_router"      # proposals admitted before the turn's demand arrives
        self.vpin = spec.pin_width > 0            # the visit's whole demand is pinned (not only the turn's)
        self.sparse = spec.execution == "expert"  # proposals on one turn of a visit: the batch under a cond
        self.general = self.pre or self.vpin      # today's reading is the program it always was
        # with a one-layer lookahead issued after the use every entry lands in the highest current
        # layer, i.e. on top of the whole tier, so the per-layer tables reduce to scalars (saves two
        # [N] passes per visit). At the router, layer l + 1's proposals enter above layer l's block
        # before l's demand is used: per-layer blocks.
        self.deep = self.ls and (spec.depth > 1 or self.pre)
        self.npf = len(pf_counter_names(spec))
        self.earlier = jnp.arange(W)[None, :] < jnp.arange(W)[:, None]     # [W, W]: j' before j
        self.earlierQ = jnp.arange(Q)[None, :] < jnp.arange(Q)[:, None]    # [Q, Q]
        self.laterQ = jnp.arange(Q)[None, :] > jnp.arange(Q)[:, None]

    def per_id(self, table):
        """[L] per-layer values -> [N] per id (ids are layer-major): a broadcast, not a gather
        (a config-dependent gather of N elements is slow on XLA:CPU)."""
        return jnp.broadcast_to(table[:, None], (self.L, self.E)).reshape(self.N)

    def onehot(self, l):
        return (jnp.arange(self.L) == l).astype(jnp.int32)
