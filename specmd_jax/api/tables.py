"""The tidy result tables: one row per configuration, the same columns whatever engine ran."""

from __future__ import annotations

import numpy as np
import pandas as pd

from specmd_jax.core import checks
from specmd_jax.core.capacity import token_cycle
from specmd_jax.core.counters import DEMAND_COUNTERS, TIMED_COUNTERS
from specmd_jax.core.miss import proxy_rates
from specmd_jax.core.semantics import SB_SCALE
from specmd_jax.core.steps import decode_demands
from specmd_jax.core.timing import TICK_S


def demand_table(trace, policy, mode, partitioned, caps, seeds, fracs, tot, maxocc, dec_hits) -> pd.DataFrame:
    s = trace.shape
    df = pd.DataFrame(tot, columns=list(DEMAND_COUNTERS))
    df.insert(0, "trace", trace.source)
    df.insert(1, "model", s.name)
    df.insert(2, "policy", policy)
    df.insert(3, "mode", mode)
    df.insert(4, "partitioned", bool(partitioned))
    df.insert(5, "capacity_slots", caps)
    df.insert(6, "capacity_fraction", fracs if fracs is not None else caps / s.num_ids)
    df.insert(7, "capacity_bytes", checks.capacity_bytes(caps, s.expert_bytes))
    df.insert(8, "seed", seeds)
    df["bytes_moved"] = df["misses"] * s.expert_bytes
    df["read_mib"] = df["bytes_moved"] / 2 ** 20
    d = df["demands"].where(df["demands"] > 0)
    df["hit_rate"] = df["hits"] / d
    df["miss_rate"] = df["misses"] / d
    df["collision_rate"] = df["collisions"] / d
    df["collision_share"] = df["collisions"] / df["misses"].where(df["misses"] > 0)
    # by phase: decode passes, and prefill passes (the rest), as other replayers report them
    df["demands_decode"] = decode_demands(trace)
    df["hits_decode"] = np.asarray(dec_hits, np.int64)
    dd, dp = df["demands_decode"], df["demands"] - df["demands_decode"]
    df["hit_rate_decode"] = df["hits_decode"] / dd.where(dd > 0)
    df["hit_rate_prefill"] = (df["hits"] - df["hits_decode"]) / dp.where(dp > 0)
    df["max_occupancy"] = maxocc
    df["token_cycle_slots"] = token_cycle(trace)["slots"]
    df["below_token_cycle"] = df["capacity_bytes"] < token_cycle(trace)["bytes"]
    return df


def with_belady_gap(df: pd.DataFrame, keys=("capacity_slots", "seed")) -> pd.DataFrame:
    """``df`` (a table holding ``belady`` rows) with ``belady_gap`` = (Belady's hits - hits) / Belady's hits
    at the same ``keys`` (NaN where Belady did not run or hit nothing); ``partitioned`` and ``mode`` join
    the keys where present."""
    keys = [k for k in (*keys, "partitioned", "mode", "convention") if k in df.columns]
    best = df[df["policy"] == "belady"].drop_duplicates(keys).set_index(keys)["hits"]
    b = df.join(best.rename("_belady_hits"), on=keys)["_belady_hits"]
    out = df.copy()
    out["belady_gap"] = (b - df["hits"]) / b.where(b > 0)
    return out


def timed_table(s, rows: list) -> pd.DataFrame:
    """The tidy table of a sweep's rows: parameters, rates, times in ms, plan quality, proxies."""
    trace, prec, reading = s.trace, s.prec, s.reading
    df = pd.DataFrame(rows).sort_values(["setting", "hardware_index", "capacity_index", "miss_index",
                                         "routing_index"], kind="stable")
    mi = df.pop("miss_index").to_numpy()
    ri = df.pop("routing_index").to_numpy()
    df = df.drop(columns=["hardware_index", "capacity_index"]).reset_index(drop=True)
    k = df.pop("setting").to_numpy()
    df.insert(0, "trace", trace.source)
    df.insert(1, "model", trace.shape.name)
    df.insert(2, "policy", s.policy)
    df.insert(3, "timing", s.timing)
    df.insert(4, "prefetch", [s.labels[x] for x in k])
    d = df["demands"].where(df["demands"] > 0)
    df["hit_rate"] = df["hits"] / d
    df["late_rate"] = df["late"] / d
    df["collision_rate"] = df["collisions"] / d
    for n in ("stall", "ttft", "tpot"):
        df[f"{n}_ms"] = df.pop(f"{n}_ticks") * TICK_S * 1e3
    df["pred_precision"] = [s.quality[x]["precision"] for x in k]
    df["pred_recall"] = [s.quality[x]["recall"] for x in k]
    df.insert(5, "miss", [s.misses[x].label() for x in mi])
    df.insert(6, "precision", "/".join(prec.names))
    df.insert(7, "routing", [s.routings[x].label(trace) for x in ri])
    df.insert(8, "execution", reading.execution)
    df.insert(9, "prefetch_issue", reading.prefetch_issue)
    df.insert(10, "pin", reading.pin)
    df.insert(11, "reading", reading.label)
    if "pairs" not in df:  # a JAX engine: complete the proxy counters
        pairs = trace.experts.shape[0] * trace.shape.top_k
        units = int(np.rint(trace.weights.astype(np.float64) * SB_SCALE).sum()) if trace.weights is not None else 0
        for c in ("pairs_substituted", "units_substituted", "tokens_changed", "pairs_rerouted", "units_rerouted"):
            df[c] = df[c] if c in df else 0
        for c, v in {"tokens": trace.experts.shape[0], "pairs": pairs, "units_total": units}.items():
            df[c] = v
        df["pairs_served"] = pairs - df["pairs_rerouted"] - df["pairs_dropped"] - df["pairs_substituted"]
        if "units_full" not in df:  # instant engine: one precision, fetch or drop
            df["units_full"] = units - df["units_dropped"]
            df["exec_pairs"] = df["pairs_served"]
            df["bits_served"] = df["exec_pairs"] * prec.bits[0]
            df["units_moved"] = df["fetched"] + df["pf_issued"]
    df["bytes_moved"] = df["units_moved"] * prec.unit_bytes(trace.shape.expert_bytes)
    cyc = token_cycle(trace)
    cap_bytes = df["capacity_slots"] * (trace.shape.expert_bytes if s.plain else prec.unit_bytes(trace.shape.expert_bytes))
    df["token_cycle_slots"] = cyc["slots"]
    df["below_token_cycle"] = cap_bytes < cyc["bytes"]
    rates = [proxy_rates(r) for r in df.to_dict("records")]
    for key in rates[0] if rates else ():
        df[key] = [r[key] for r in rates]
    return _canonical(df)




def _canonical(df: pd.DataFrame) -> pd.DataFrame:
    """The same columns in the same order whatever engine ran: the reference's counters
    (:data:`~specmd_jax.core.counters.TIMED_COUNTERS`), the ones a kernel does not keep filled in."""
    if "pf_arrived" not in df:      # instant prefetch: every issued prefetch arrives at once
        df["pf_arrived"] = df["pf_issued"]
    for c in ("pf_pending", "substituted"):   # the instant kernel neither queues nor substitutes
        if c not in df:
            df[c] = 0
    df = df.drop(columns=["fetched"], errors="ignore")
    lead = list(df.columns[:12])   # trace ... reading
    counters = [c for c in TIMED_COUNTERS if c in df]
    return df[lead + counters + [c for c in df.columns if c not in lead and c not in counters]]
