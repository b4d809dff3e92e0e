"""The rows of a timed sweep (:func:`specmd_jax.api.timed.sweep_timed`): the checked inputs of one
execution reading (:class:`TimedSetup`) and the rows each engine makes of them (the instantaneous
and asynchronous JAX kernels, the exact reference), one row per configuration with its parameters."""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from specmd_jax.core.clock import ClockOverflow, pass_times
from specmd_jax.core.counters import DEMAND_COUNTERS
from specmd_jax.core.miss import NO_DROP, Precision
from specmd_jax.core.prefetch import PrefetchConfig, PrefetchPlan
from specmd_jax.core.timing import Reading
from specmd_jax.core.trace import Trace
from specmd_jax.reference.timed import simulate_timed
from specmd_jax.run.asynchronous import run_async
from specmd_jax.run.instant import run_instant

PF_COLUMNS = ("pf_issued", "pf_resident", "pf_dropped", "pf_useful", "pf_wasted")


@dataclasses.dataclass
class TimedSetup:
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


def rows_instant(s: TimedSetup) -> list:
    """Rows of the instantaneous kernel: one run, timed for every hardware profile from its
    per-pass miss counts."""
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
            rows.append(row_meta(row, i, s.caps[i], s.fr, s.hws, hi, "jax-instant", k, mi, 0))
    return rows


def rows_async(s: TimedSetup, engine: str) -> Optional[list]:
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
        rows.append(row_meta(row, i, s.caps[i], s.fr, s.hws, hi, "jax-async", k, int(r.miss_index[b]),
                          int(r.routing_index[b])))
    return rows


def rows_reference(s: TimedSetup, progress: bool) -> list:
    """Rows of the exact reference, one run per configuration (``progress``: a tqdm bar)."""
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
        rows.append(row_meta(row, i, c, s.fr, s.hws, hi, f"reference-{s.timing}", k, mi, ri))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return rows


def row_meta(row, i, c, fr, hws, hi, engine, setting, miss_index, routing_index):
    """``row`` with the configuration's parameters and the engine that ran it."""
    h = hws[hi]
    row.update(capacity_slots=int(c), capacity_fraction=float(fr[i]), hardware=h.name,
               bandwidth_gbps=h.bandwidth_gbps, latency_us=h.latency_us, engine=engine, setting=setting,
               capacity_index=i, hardware_index=hi, miss_index=miss_index, routing_index=routing_index)
    return row
