"""One public entry point, :func:`sweep`: a policy over cache sizes, in any timing mode, as a tidy table.

Example::

    import specmd_jax as sj
    trace = sj.synthetic.generate("olmoe-1b-7b", num_requests=2, prompt_len=32, gen_len=64)
    demand = sj.sweep(trace, "ls", fractions=[0.01, 0.05, 0.25])                     # hit/collision rates
    timed = sj.sweep(trace, "ls", fractions=[0.05], timing="async",                 # + TTFT/TPOT
                     prefetch=sj.PrefetchConfig("oracle"), hardware=[sj.HARDWARE_PRESETS["pcie4-x16"]])

The engine is chosen from the policy registry (:data:`specmd_jax.policies.REGISTRY`): a JAX path
where one serves the policy in that mode, else the exact reference; the ``engine`` column of every
row names the path that ran it. ``sweep_prefetch`` and ``sweep_score`` are the names of earlier
releases, kept as thin aliases for one release.
"""

from __future__ import annotations

from typing import Optional, Sequence

import pandas as pd

from specmd_jax.api.batches import pinned_slots, sweep_batches
from specmd_jax.core.checks import byte_budgets
from specmd_jax.api.demand import sweep_demand
from specmd_jax.api.score import sweep_weights
from specmd_jax.api.timed import sweep_timed
from specmd_jax.core.score import ScorePolicy
from specmd_jax.core.timing import Hardware
from specmd_jax.core.trace import Trace
from specmd_jax.policies import REGISTRY
from specmd_jax.core.conventions import CONVENTIONS

TIMINGS = ("none", "instant", "async")


def sweep(trace: Trace, policy, capacities: Optional[Sequence[int]] = None, *,
          fractions: Optional[Sequence[float]] = None, timing: str = "none", prefetch=None,
          hardware: Optional[Sequence[Hardware]] = None, engine: str = "auto", **options) -> pd.DataFrame:
    """Replay ``trace`` under ``policy`` at every cache size (and every setting of the other axes).

    Args:
        trace: a loaded or generated :class:`~specmd_jax.core.trace.Trace`.
        policy: a registry name (:func:`~specmd_jax.policies.list_policies`), or a learned
            :class:`~specmd_jax.core.score.ScorePolicy` (or the path of one saved as JSON).
        capacities / fractions: cache sizes, in slots or as fractions of all expert bytes (one of them).
        timing: ``"none"``: demand-only replay (hit, miss and collision counts; options ``seeds``,
            ``mode``, ``partitioned``, ``progress``, ``chunk_steps``, ``unroll_layers``);
            ``"instant"``: prefetches land at once, times from the per-pass misses;
            ``"async"``: copies queue on the link (options of the timed sweep: ``miss``,
            ``precision``, ``routing``, ``reading`` or ``execution``/``prefetch_issue``/``pin``,
            ``train``, ``progress``; see :func:`specmd_jax.api.timed.sweep_timed`).
        prefetch: a :class:`~specmd_jax.core.prefetch.PrefetchConfig`, a plan, or a list (timed modes).
        hardware: profiles to time (timed modes, default one :class:`Hardware`); with a
            ``ScorePolicy`` and ``timing="none"``, adds demand-only ``ttft_ms``/``tpot_ms``.
        engine: ``"auto"`` (default), ``"jax"``, ``"reference"``; demand-only replay also takes
            ``"scan"`` and ``"stack"``.
        convention (option): ``"pinned"`` (default; :mod:`specmd_jax.core.semantics`) or
            ``"bigmoeonedge"`` (BigMoeOnEdge's replayer: byte budgets, post-batch eviction;
            :mod:`specmd_jax.api.batches`, demand-only).
        budgets_mib / capacity_bytes (options): byte budgets instead of ``capacities``; under the
            pinned convention they become ``budget // expert_bytes`` slots (refused where layers'
            expert bytes differ).

    Returns:
        One row per configuration; within a timing mode the same columns whatever engine ran.
    """
    if timing not in TIMINGS:
        raise ValueError(f"timing must be one of {', '.join(TIMINGS)}, got {timing!r}")
    convention = options.pop("convention", "pinned")
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {', '.join(CONVENTIONS)}, got {convention!r}")
    mib, nbytes = options.pop("budgets_mib", None), options.pop("capacity_bytes", None)
    if convention == "bigmoeonedge":
        if timing != "none" or prefetch is not None or hardware is not None:
            raise ValueError("convention 'bigmoeonedge' is a demand-only replay (timing='none'); the prefetch "
                             "engines follow the pinned convention")
        if capacities is not None or fractions is not None:
            raise ValueError("convention 'bigmoeonedge' budgets bytes: give budgets_mib= or capacity_bytes=, "
                             "not capacities/fractions")
        return sweep_batches(trace, policy, mib, capacity_bytes=nbytes, engine=engine, **options)
    if mib is not None or nbytes is not None:
        if capacities is not None or fractions is not None:
            raise ValueError("give one of capacities=, fractions=, budgets_mib= or capacity_bytes=")
        capacities = pinned_slots(trace, byte_budgets(mib, nbytes)[0])
    learned = isinstance(policy, ScorePolicy) or (isinstance(policy, str) and policy not in REGISTRY
                                                  and policy.endswith(".json"))
    if learned:
        pol = policy if isinstance(policy, ScorePolicy) else ScorePolicy.load(policy)
        if timing == "none":
            if prefetch is not None:
                raise ValueError("prefetch= needs timing='instant' or 'async'")
            return sweep_weights(trace, pol, fractions=fractions, capacities=capacities, hardware=hardware, **options)
        policy, options = "score", {**options, "score_weights": pol}
    if timing == "none":
        if prefetch is not None or hardware is not None:
            raise ValueError("prefetch= and hardware= time a replay: give timing='instant' or 'async'")
        return sweep_demand(trace, policy, capacities, fractions=fractions, engine=engine, **options)
    return sweep_timed(trace, policy, capacities, fractions=fractions, timing=timing, prefetch=prefetch,
                       hardware=hardware if hardware is not None else (Hardware(),), engine=engine, **options)


def sweep_prefetch(trace: Trace, policy, capacities: Optional[Sequence[int]] = None, *, timing: str = "async",
                   **kw) -> pd.DataFrame:
    """Alias of :func:`sweep` with ``timing="async"`` by default (the name of earlier releases; kept
    for one release)."""
    return sweep(trace, policy, capacities, timing=timing, **kw)


def sweep_score(trace: Trace, policy, fractions=None, capacities=None, hardware=None, sensitivities: bool = False,
                tau: float = 0.1) -> pd.DataFrame:
    """Alias of :func:`sweep` for a learned score in demand-only replay (the name and argument order of
    earlier releases; kept for one release)."""
    pol = policy if isinstance(policy, ScorePolicy) else ScorePolicy.load(policy)
    return sweep(trace, pol, capacities, fractions=fractions, hardware=hardware, sensitivities=sensitivities, tau=tau)
