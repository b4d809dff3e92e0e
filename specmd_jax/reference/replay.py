"""The one entry point of the reference: :func:`replay` takes every setting a kernel can be checked
against and runs the replay that defines it.

Two replays exist and agree where both are defined. The timed replay
(:func:`~specmd_jax.reference.timed.simulate_timed`) is the general one: pinned visits, a prefetch
plan, a hardware link, the execution reading, miss handling, precision levels and cache-aware
routing. The demand replay (:func:`~specmd_jax.reference.demand.simulate`) is its demand-only
case written in its simplest form, and the only one with ``mode="sequential"`` (one step per
distinct access: timing is defined on pinned visits only). Under the whole-visit reading
(:data:`~specmd_jax.core.timing.VISIT_READING`) and with no plan, the timed replay's counts equal
the demand replay's exactly, for every policy, pool and hardware (``tests/test_reference_timed.py``),
so a demand-only setting runs the simpler one. Any other reading (the default of the timed
replay is :data:`~specmd_jax.core.timing.DEFAULT_READING`) is a timed setting.
"""

from __future__ import annotations

from specmd_jax.reference.demand import RefResult, simulate
from specmd_jax.reference.timed import TimedResult, simulate_timed

TIMED_ONLY = ("plan", "hardware", "instant_prefetch", "precision", "miss", "routing", "reading")


def replay(trace, policy: str, capacity: int, *, mode: str = "pinned", partitioned: bool = False, seed: int = 0,
           weights=None, **timed) -> "RefResult | TimedResult":
    """Replay ``trace`` through one cache configuration of ``policy`` with ``capacity`` slots.

    ``mode``, ``partitioned``, ``seed`` and ``weights`` (``policy="score"``) are common to both
    replays; any of ``plan``, ``hardware``, ``instant_prefetch``, ``precision``, ``miss``,
    ``routing``, ``reading`` (:func:`~specmd_jax.reference.timed.simulate_timed`'s settings) makes
    it a timed replay, which returns a :class:`TimedResult` (times and the prefetch counters as
    well); otherwise a :class:`RefResult`. Both carry ``totals``, ``per_layer``, ``resident`` and
    ``max_occupancy``."""
    unknown = sorted(set(timed) - set(TIMED_ONLY))
    if unknown:
        raise TypeError(f"replay() got unknown settings {unknown}; known: mode, partitioned, seed, weights, "
                        f"{', '.join(TIMED_ONLY)}")
    if not timed:
        return simulate(trace, policy, capacity, mode=mode, partitioned=partitioned, seed=seed, weights=weights)
    if mode != "pinned":
        raise ValueError(f"mode {mode!r}: the timed settings {sorted(timed)} are defined on pinned visits only")
    return simulate_timed(trace, policy, capacity, partitioned=partitioned, seed=seed, weights=weights, **timed)
