"""Python API for prefetch + timing studies: one call, a tidy table over capacity x hardware.

Example::

    import specmd_jax as sj
    from specmd_jax.core.prefetch import PrefetchConfig
    from specmd_jax.core.timing import HARDWARE_PRESETS
    t = sj.synthetic.generate("olmoe-1b-7b", num_requests=1, prompt_len=16, gen_len=32, pred_noise=1.0)
    df = sj.sweep_prefetch(t, "ls", fractions=[0.05], prefetch=PrefetchConfig("recorded", "topk"),
                           hardware=[HARDWARE_PRESETS["a100-5gbps"]], timing="async")

Engines: ``timing="instant"`` (prefetches land at once; times follow from miss counts) runs the
JAX engine (:mod:`specmd_jax.kernels.instant`) for ``lru``/``ls``/``fifo`` - every capacity in one
vmapped scan and every hardware profile from the same run - and the pure-Python reference for
other policies. ``timing="async"`` (copies complete on a FIFO copy engine; late prefetches) runs
the JAX asynchronous engine (:mod:`specmd_jax.kernels.asynchronous`) for ``lru``/``ls``/``fifo`` - every
(capacity, hardware) pair in one vmapped scan - and the exact reference
(:mod:`specmd_jax.reference.timed`) once per configuration for the other policies (about a
second per configuration on the real Qwen3 trace). Each row names the engine that produced it.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import pandas as pd

from specmd_jax.core import checks
from specmd_jax.core.capacity import capacity_slots
from specmd_jax.policies import REGISTRY
from specmd_jax.core.miss import MissConfig, Precision, structural_kind
from specmd_jax.core.routing import RoutingConfig
from specmd_jax.core.prefetch import PrefetchConfig, PrefetchPlan, make_plan, prediction_quality, proposal_count
from specmd_jax.core.timing import DEFAULT_READING, Hardware, Reading
from specmd_jax.core.trace import Trace
from specmd_jax.api.tables import timed_table
from specmd_jax.api.timed_rows import TimedSetup, rows_async, rows_instant, rows_reference
from specmd_jax.core.clock import async_tick_problem
from specmd_jax.core.score import ScorePolicy
from specmd_jax.core.steps import prepare_steps

TIMINGS = ("instant", "async")
ENGINES = ("auto", "jax", "reference")
# async sweeps smaller than this run on the reference under engine="auto": the JAX kernel pays
# ~40 passes over [configs, N] per visit, which only amortises over many configurations
# (measured on 2 cores, full Qwen3 trace, 12 configurations: Least-Stale 32-57 s in JAX vs
# ~12 s in the reference; at 1024 configurations JAX is 16x faster, outputs/bench/prefetch_cpu.md)
AUTO_ASYNC_MIN_CONFIGS = 32


def _plan(trace, prefetch, train) -> Optional[PrefetchPlan]:
    if prefetch is None or isinstance(prefetch, PrefetchPlan):
        return prefetch
    if isinstance(prefetch, PrefetchConfig):
        return make_plan(trace, prefetch, train=train)
    raise TypeError(f"prefetch must be None, a PrefetchConfig or a PrefetchPlan, got {type(prefetch).__name__}")


def sweep_timed(trace: Trace, policy: str, capacities: Optional[Sequence[int]] = None, *,
                fractions: Optional[Sequence[float]] = None,
                prefetch: Union[None, PrefetchConfig, PrefetchPlan, Sequence] = None,
                hardware: Sequence[Hardware] = (Hardware(),), timing: str = "async", train: Optional[Trace] = None,
                progress: bool = False, miss: Optional[MissConfig] = None, precision: Optional[Precision] = None,
                routing: Union[None, RoutingConfig, Sequence[RoutingConfig]] = None, engine: str = "auto",
                score_weights=None, execution: Union[None, str, Sequence[str]] = None,
                prefetch_issue: Union[None, str, Sequence[str]] = None, pin: Union[None, str, Sequence[str]] = None,
                reading: Union[None, str, Reading, Sequence] = None) -> pd.DataFrame:
    """Replay ``trace`` with ``policy`` for every prefetch setting x capacity x hardware profile
    (x execution reading).

    Args:
        trace: a trace (pinned mode, global pool).
        policy: eviction policy name.
        capacities / fractions: cache sizes (slots, or fractions of all expert bytes).
        prefetch: ``None`` (demand only), a :class:`PrefetchConfig` (plan made here; ``train``
            is the training trace of the ``transition`` predictor), a ready :class:`PrefetchPlan`,
            or a list of these: on the JAX engines every (setting, capacity, hardware) triple is
            one configuration of the same compiled program.
        hardware: profiles to time (see ``timing.HARDWARE_PRESETS``).
        timing: ``"async"`` or ``"instant"`` (see the module docstring).
        progress: a tqdm bar over reference runs.
        miss: miss policy (:mod:`specmd_jax.core.miss`; default ``fetch``), or a list of them: one
            more configuration axis (on the asynchronous JAX engine, ``drop_priority``
            thresholds are vmapped data next to capacities and hardware).
        precision: precision levels (default: one level, the trace's ``expert_bytes``). With
            levels, ``capacities`` are in units (``Precision.units``) and fractions convert
            through bytes.
        routing: routing policy (:mod:`specmd_jax.core.routing`; default ``standard``), or a list of
            them: one more configuration axis (on the asynchronous JAX engine, cache-aware
            ``lam`` values are vmapped data; not with ``substitute``). The asynchronous kernel
            runs ``lru``, ``ls``, ``fifo`` and ``lhu``; the instantaneous one ``lru``, ``ls``,
            ``fifo`` with standard routing at one precision with fetch/drop_priority. Anything
            else runs on the exact reference.
        score_weights: ``policy="score"`` only: the parametric score's integer weights (NF ints,
            :mod:`specmd_jax.core.score`) or a :class:`~specmd_jax.core.score.ScorePolicy` (quantised for
            this trace). Runs on the exact reference.
        execution, prefetch_issue, pin: the execution reading (:class:`~specmd_jax.core.timing.Reading`):
            ``execution`` ``"expert"`` (default: one expert at a time in router order) or
            ``"visit"`` (the whole demand at once); ``prefetch_issue`` ``"at_router"`` (default)
            or ``"after_use"``; ``pin`` ``"running"`` (default) or ``"visit"``. A field left out
            takes :data:`~specmd_jax.core.timing.DEFAULT_READING`'s. Each may be a list: every
            combination is run (one program per reading on the JAX engines) and labelled by the
            ``execution``, ``prefetch_issue``, ``pin`` and ``reading`` columns.
        reading: instead of the three fields, a :class:`~specmd_jax.core.timing.Reading`, a label
            such as ``"visit/after_use/visit"`` (the whole-visit reading of earlier releases), or
            a list of them. The JAX
            engines run every reading for ``lru``/``ls``/``fifo`` (and ``lhu`` asynchronously);
            per-expert execution with ``substitute`` or cache-aware routing runs on the reference.
        engine: ``"jax"`` (the vmapped kernels where they exist), ``"reference"`` (always the
            exact Python reference) or ``"auto"``: JAX, except asynchronous sweeps of fewer than
            ``AUTO_ASYNC_MIN_CONFIGS`` configurations, where the reference is faster, and
            settings that outlast the asynchronous kernel's int32 clock (214 s per pass:
            :func:`~specmd_jax.core.clock.async_tick_problem` before the run,
            :class:`~specmd_jax.core.clock.ClockOverflow` during it) or its int32 counters,
            where ``"jax"`` raises.
            Every engine gives the same numbers (tested); each row names the one that ran.

    Returns:
        One row per (prefetch setting, capacity, hardware): parameters, ``engine``, the demand
        counters (``demands, hits, late, misses, collisions, evictions, bypass``), prefetch counters
        (``pf_*``), ``hit_rate`` / ``late_rate`` / ``collision_rate`` (per demand), ``stall_ms``,
        ``ttft_ms`` (mean over requests with a prefill pass), ``tpot_ms`` (mean decode pass), and
        the plan's trace-level ``pred_precision`` / ``pred_recall``, ``miss``, ``precision`` and
        the quality *proxies* (``proxy_served_as_routed``, ``proxy_mass_full_precision``,
        ``proxy_mass_dropped``, ``proxy_mass_substituted``, ``proxy_mean_bits``: counted over
        routed (token, expert) pairs; the mass ones weight pairs by router weight, NaN without
        weights). A trace cannot measure model quality: these are proxies, not accuracy.
        ``token_cycle_slots`` and ``below_token_cycle`` mark the LRU cliff (:func:`specmd_jax.api.demand.token_cycle`).
    """
    readings = _readings(execution, prefetch_issue, pin, reading)
    checks.trace(trace)
    hardware = checks.hardware_list(hardware)
    frames = [_sweep_reading(trace, policy, capacities, fractions=fractions, prefetch=prefetch, hardware=hardware,
                             timing=timing, train=train, progress=progress, miss=miss, precision=precision,
                             routing=routing, engine=engine, score_weights=score_weights, reading=rd)
              for rd in readings]
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def _readings(execution, prefetch_issue, pin, reading) -> list:
    """The execution readings of a sweep: ``reading`` (one or a list, labels parsed), or every
    combination of the three fields (a field left out: :data:`~specmd_jax.core.timing.DEFAULT_READING`'s)."""
    def axis(name, v):
        vals = [getattr(DEFAULT_READING, name)] if v is None else [v] if isinstance(v, str) else list(v)
        if not vals:
            raise ValueError(f"{name} must be a value or a non-empty list")
        return vals
    if reading is not None:
        if not (execution is None and prefetch_issue is None and pin is None):
            raise ValueError("give reading= or execution=/prefetch_issue=/pin=, not both")
        items = [reading] if isinstance(reading, (str, Reading)) else list(reading)
        readings = [r if isinstance(r, Reading) else Reading.parse(r) for r in items]
        if not readings:
            raise ValueError("reading must be a value or a non-empty list")
    else:
        readings = [Reading(e, i, p) for e in axis("execution", execution) for i in axis("prefetch_issue", prefetch_issue)
                    for p in axis("pin", pin)]
    return readings


def _setup(trace, policy, capacities, *, fractions, prefetch, hardware, timing, train, miss, precision, routing,
           engine, score_weights, reading) -> TimedSetup:
    if timing not in TIMINGS:
        raise ValueError(f"timing must be one of {TIMINGS}, got {timing!r}")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if (capacities is None) == (fractions is None):
        raise ValueError("give exactly one of capacities= (slots) or fractions=")
    if (policy == "score") != (score_weights is not None):
        raise ValueError("score_weights= goes with policy='score' (and policy 'score' needs it)")
    if policy == "score":
        if isinstance(score_weights, ScorePolicy):
            score_weights = score_weights.q(prepare_steps(trace, "pinned"), trace.shape.num_layers)
        score_weights = [int(x) for x in score_weights]
    misses = list(miss) if isinstance(miss, (list, tuple)) else [miss if miss is not None else MissConfig()]
    if not misses or not all(isinstance(m, MissConfig) for m in misses):
        raise TypeError("miss must be a MissConfig or a non-empty list of them")
    prec = precision if precision is not None else Precision()
    routings = list(routing) if isinstance(routing, (list, tuple)) else [routing if routing is not None
                                                                         else RoutingConfig()]
    if not routings or not all(isinstance(rc, RoutingConfig) for rc in routings):
        raise TypeError("routing must be a RoutingConfig or a non-empty list of them")
    plain = prec.plain and policy != "lhu" and not any(rc.active for rc in routings)
    if fractions is not None and not plain:
        capacity_slots(trace, fractions)  # validates the fractions
        caps = np.array([prec.capacity_units(f * trace.shape.total_expert_bytes, trace.shape.expert_bytes)
                         for f in np.atleast_1d(np.asarray(fractions, np.float64))], np.int64)
    elif fractions is not None:
        caps = capacity_slots(trace, fractions)
    else:
        caps = checks.capacities(capacities)
    fr = checks.fractions(fractions) if fractions is not None else caps / trace.shape.num_ids
    settings = list(prefetch) if isinstance(prefetch, (list, tuple)) else [prefetch]
    plans = [_plan(trace, pf, train) for pf in settings]
    return TimedSetup(trace=trace, policy=policy, timing=timing, reading=reading, caps=caps, fr=fr, hws=list(hardware),
                  plans=plans, labels=["none" if p is None else _describe(p.config) for p in plans],
                  quality=[prediction_quality(trace, p) if p is not None else {"precision": np.nan, "recall": np.nan}
                           for p in plans],
                  misses=misses, prec=prec, routings=routings, score_weights=score_weights)


def _kernel(s: TimedSetup, engine: str) -> Optional[str]:
    """The JAX kernel that runs this sweep (``"instant"`` or ``"async"``), or ``None``: the reference.

    ``auto`` and ``jax`` take a kernel the registry says serves the policy in this mode when it
    runs the sweep's miss, precision, routing and reading settings; ``auto`` also takes the
    reference for small asynchronous sweeps (faster) and past the kernels' int32 bounds
    (``jax`` raises there, naming the bound)."""
    if engine == "reference" or s.policy not in REGISTRY or not REGISTRY[s.policy].served(s.timing):
        return None
    n_cfg = len(s.caps) * len(s.plans) * len(s.misses) * len(s.routings) * (len(s.hws) if s.timing == "async" else 1)
    if engine == "auto" and s.timing == "async" and n_cfg < AUTO_ASYNC_MIN_CONFIGS:
        return None
    substitute = any(m.policy == "substitute" for m in s.misses)
    if s.timing == "instant":
        # fetch and drop_priority (thresholds vmapped), one precision, standard routing
        if not (s.plain and len(s.routings) == 1 and all(m.policy in ("fetch", "drop_priority") for m in s.misses)):
            return None
    else:
        # one structural miss kind (numbers vmapped), precision levels, cache-aware routing, lhu;
        # not substitute with routing, and per-expert execution with neither
        try:
            structural_kind(s.misses)
        except ValueError:
            return None
        if (s.routed and substitute) or (s.reading.execution == "expert" and (s.routed or substitute)):
            return None
        if engine == "auto":   # "jax" raises on it, naming the profile
            if async_tick_problem(s.trace, s.hws, s.prec, [p.ids for p in s.plans if p is not None], s.routed):
                return None
    if engine == "auto":       # counts past int32: the reference ("jax" raises)
        n_prop = proposal_count([p for p in s.plans if p is not None])
        if checks.count_problem(s.trace, n_prop, max(s.prec.bits)) is not None:
            return None
    return s.timing


def _sweep_reading(trace, policy, capacities, *, progress, engine, **kw) -> pd.DataFrame:
    """:func:`sweep_timed` for one execution reading."""
    s = _setup(trace, policy, capacities, engine=engine, **kw)
    kernel = _kernel(s, engine)
    rows = rows_instant(s) if kernel == "instant" else rows_async(s, engine) if kernel == "async" else None
    if rows is None:
        rows = rows_reference(s, progress)
    return timed_table(s, rows)


def _describe(cfg: PrefetchConfig) -> str:
    sel = {"topk": f"topk x{cfg.overfetch:g}", "percentile": f"p{cfg.percentile:g}", "all": "all"}[cfg.selector]
    extra = f" r{cfg.recall:g}/p{cfg.precision:g}" if cfg.predictor == "oracle_degraded" else ""
    return f"{cfg.predictor}{extra} {sel}" + (f" d{cfg.depth}" if cfg.depth != 1 else "")



__all__ = ["sweep_timed", "TIMINGS"]
