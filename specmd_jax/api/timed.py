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

import dataclasses
from typing import Optional, Sequence, Union

import numpy as np
import pandas as pd

from specmd_jax.core import checks
from specmd_jax.core.capacity import capacity_slots
from specmd_jax.core.counters import DEMAND_COUNTERS
from specmd_jax.policies import REGISTRY
from specmd_jax.core.miss import NO_DROP, MissConfig, Precision, structural_kind
from specmd_jax.core.routing import RoutingConfig
from specmd_jax.core.prefetch import PrefetchConfig, PrefetchPlan, make_plan, prediction_quality, proposal_count
from specmd_jax.reference.timed import simulate_timed
from specmd_jax.core.timing import DEFAULT_READING, Hardware, Reading
from specmd_jax.core.trace import Trace
from specmd_jax.api.tables import timed_table
from specmd_jax.core.clock import ClockOverflow, async_tick_problem, pass_times
from specmd_jax.run.asynchronous import run_async
from specmd_jax.run.instant import run_instant
from specmd_jax.core.score import ScorePolicy
from specmd_jax.core.steps import prepare_steps

TIMINGS = ("instant", "async")
ENGINES = ("auto", "jax", "reference")
# async sweeps smaller than this run on the reference under engine="auto": the JAX kernel pays
# ~40 passes over [configs, N] per visit, which only amortises over many configurations
# (measured on 2 cores, full Qwen3 trace, 12 configurations: Least-Stale 32-57 s in JAX vs
# ~12 s in the reference; at 1024 configurations JAX is 16x faster, outputs/bench/prefetch_cpu.md)
AUTO_ASYNC_MIN_CONFIGS = 32
PF_COLUMNS = ("pf_issued", "pf_resident", "pf_dropped", "pf_useful", "pf_wasted")


def _plan(trace, prefetch, train) -> Optional[PrefetchPlan]:
    if prefetch is None or isinstance(prefetch, PrefetchPlan):
        return prefetch
    if isinstance(prefetch, PrefetchConfig):
        return make_plan(trace, prefetch, train=train)
    raise TypeError(f"prefetch must be None, a PrefetchConfig or a PrefetchPlan, got {type(prefetch).__name__}")


def sweep_timed(trace: Trace, policy: str, capacities: Optional[Sequence[int]] = None, *,
                   fractions: Optional[Sequence[float]] = None,
                   prefetch: Union[None, PrefetchConfig, PrefetchPlan, Sequence] = None,
                   hardware: Sequence[Hardware] = (Hardware(),), timing: str = "async",
                   train: Optional[Trace] = None, progress: bool = False,
                   miss: Optional[MissConfig] = None, precision: Optional[Precision] = None,
                   routing: Union[None, RoutingConfig, Sequence[RoutingConfig]] = None,
                   engine: str = "auto", score_weights=None,
                   execution: Union[None, str, Sequence[str]] = None,
                   prefetch_issue: Union[None, str, Sequence[str]] = None,
                   pin: Union[None, str, Sequence[str]] = None,
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
    checks.trace(trace)
    hardware = checks.hardware_list(hardware)
    frames = [_sweep_reading(trace, policy, capacities, fractions=fractions, prefetch=prefetch, hardware=hardware,
                             timing=timing, train=train, progress=progress, miss=miss, precision=precision,
                             routing=routing, engine=engine, score_weights=score_weights, reading=rd)
              for rd in readings]
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return df


@dataclasses.dataclass
class _Setup:
    """The inputs of one timed sweep (one reading), checked and normalised."""

    trace: Trace
    policy: str
    timing: str
    reading: Reading
    caps: np.ndarray            # slots (units at mixed precision)
    fr: np.ndarray              # capacity fractions of the rows
    hws: list
    plans: list                 # PrefetchPlan or None per prefetch setting
    labels: list
    quality: list
    misses: list
    prec: Precision
    routings: list
    score_weights: Optional[list]

    @property
    def routed(self) -> bool:
        return any(rc.active for rc in self.routings)

    @property
    def plain(self) -> bool:   # one precision level, slot capacities, standard routing
        return self.prec.plain and self.policy != "lhu" and not self.routed

    @property
    def plan_list(self) -> list:
        empty = PrefetchPlan(ids=np.full((self.trace.num_visits, 1), -1, np.int32), config=PrefetchConfig(),
                             source=self.trace.source)
        return [p if p is not None else empty for p in self.plans]


def _setup(trace, policy, capacities, *, fractions, prefetch, hardware, timing, train, miss, precision, routing,
           engine, score_weights, reading) -> _Setup:
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
    return _Setup(trace=trace, policy=policy, timing=timing, reading=reading, caps=caps, fr=fr, hws=list(hardware),
                  plans=plans, labels=["none" if p is None else _describe(p.config) for p in plans],
                  quality=[prediction_quality(trace, p) if p is not None else {"precision": np.nan, "recall": np.nan}
                           for p in plans],
                  misses=misses, prec=prec, routings=routings, score_weights=score_weights)


def _kernel(s: _Setup, engine: str) -> Optional[str]:
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


def _rows_instant(s: _Setup) -> list:
    M = len(s.misses)
    drops = [m.rank_threshold if m.policy == "drop_priority" else NO_DROP for m in s.misses]
    r = run_instant(s.trace, s.policy, s.caps, s.plan_list,
                    drop_ranks=None if all(m.policy == "fetch" for m in s.misses) else drops, reading=s.reading)
    C, rows = len(s.caps), []
    for hi, h in enumerate(s.hws):
        tm = pass_times(s.trace, r.pass_misses, h)
        for b in range(len(r.plan_index)):
            k, i, mi = int(r.plan_index[b]), (b // M) % C, b % M
            row = dict(zip(DEMAND_COUNTERS, r.totals[b].tolist()))
            row.update(late=0, fetched=int(r.pass_misses[b].sum()),
                       **{n: int(r.pf_totals[n][b]) for n in (*PF_COLUMNS, "dropped", "pairs_dropped", "units_dropped")})
            if "pf_pending" in r.pf_totals:   # at_router: a proposal whose demand copy was just queued
                row["pf_pending"] = int(r.pf_totals["pf_pending"][b])
            row.update(stall_ticks=int(tm["stall_ticks"][b]), ttft_ticks=float(tm["ttft_ticks"][b]),
                       tpot_ticks=float(tm["tpot_ticks"][b]))
            rows.append(_meta(row, i, s.caps[i], s.fr, s.hws, hi, "jax-instant", k, mi, 0))
    return rows


def _rows_async(s: _Setup, engine: str) -> Optional[list]:
    """Rows of the asynchronous kernel; ``None`` when a pass outlasts its int32 clock under ``auto``."""
    try:
        r = run_async(s.trace, s.policy, s.caps, s.plan_list, s.hws, misses=s.misses, precision=s.prec,
                      routing=s.routings, reading=s.reading)
    except ClockOverflow:
        if engine != "auto":
            raise
        return None
    H, C, M, R = len(s.hws), len(s.caps), len(s.misses), len(s.routings)
    rows = []
    for b in range(len(r.plan_index)):
        k, i, hi = int(r.plan_index[b]), (b // (H * M * R)) % C, (b // (M * R)) % H
        row = dict(zip(DEMAND_COUNTERS, r.totals[b].tolist()))
        row.update({n: int(v[b]) for n, v in r.pf_totals.items() if n != "pf_unused_end"})
        row.update(stall_ticks=int(r.stall_ticks[b].sum()), ttft_ticks=float(r.ttft_ticks[b]),
                   tpot_ticks=float(r.tpot_ticks[b]))
        rows.append(_meta(row, i, s.caps[i], s.fr, s.hws, hi, "jax-async", k, int(r.miss_index[b]),
                          int(r.routing_index[b])))
    return rows


def _rows_reference(s: _Setup, progress: bool) -> list:
    jobs = [(k, i, c, hi, mi, ri) for k in range(len(s.plans)) for hi in range(len(s.hws)) for i, c in enumerate(s.caps)
            for mi in range(len(s.misses)) for ri in range(len(s.routings))]
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(jobs), desc=f"{s.policy} {s.timing} (reference)", unit="config")
    rows = []
    for k, i, c, hi, mi, ri in jobs:
        ref = simulate_timed(s.trace, s.policy, int(c), plan=s.plans[k], hardware=s.hws[hi],
                             instant_prefetch=s.timing == "instant", miss=s.misses[mi], precision=s.prec,
                             routing=s.routings[ri], weights=s.score_weights, reading=s.reading)
        row = {n: ref.totals[n] for n in ref.totals}
        row["ttft_ticks"] = float(np.mean(list(ref.ttft_ticks.values()))) if ref.ttft_ticks else float("nan")
        row["tpot_ticks"] = float(ref.tpot_ticks)
        rows.append(_meta(row, i, c, s.fr, s.hws, hi, f"reference-{s.timing}", k, mi, ri))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return rows


def _sweep_reading(trace, policy, capacities, *, progress, engine, **kw) -> pd.DataFrame:
    """:func:`sweep_timed` for one execution reading."""
    s = _setup(trace, policy, capacities, engine=engine, **kw)
    kernel = _kernel(s, engine)
    rows = _rows_instant(s) if kernel == "instant" else _rows_async(s, engine) if kernel == "async" else None
    if rows is None:
        rows = _rows_reference(s, progress)
    return timed_table(s, rows)


def _meta(row, i, c, fr, hws, hi, engine, setting, miss_index, routing_index):
    h = hws[hi]
    row.update(capacity_slots=int(c), capacity_fraction=float(fr[i]), hardware=h.name,
               bandwidth_gbps=h.bandwidth_gbps, latency_us=h.latency_us, engine=engine, setting=setting,
               capacity_index=i, hardware_index=hi, miss_index=miss_index, routing_index=routing_index)
    return row


def _describe(cfg: PrefetchConfig) -> str:
    sel = {"topk": f"topk x{cfg.overfetch:g}", "percentile": f"p{cfg.percentile:g}", "all": "all"}[cfg.selector]
    extra = f" r{cfg.recall:g}/p{cfg.precision:g}" if cfg.predictor == "oracle_degraded" else ""
    return f"{cfg.predictor}{extra} {sel}" + (f" d{cfg.depth}" if cfg.depth != 1 else "")



__all__ = ["sweep_timed", "TIMINGS"]
