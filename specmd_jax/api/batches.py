"""Byte budgets under a named replay convention, and the hit-rate curve other replayers publish.

Example::

    import specmd_jax as sj
    trace = sj.load_trace("qwen.route.csv")
    df = sj.sweep(trace, "lru", budgets_mib=[500, 1000, 2000], convention="bigmoeonedge")
    curve = sj.replay_curve(trace, budgets_mib=[500, 1000, 2000])      # lru, lfu, layer, layerlfu, belady
    sj.api.batches.write_curve(curve, "qwen-curve.csv")                  # BigMoeOnEdge's columns

``convention="bigmoeonedge"`` is :mod:`specmd_jax.reference.batches` (the reference) and
:mod:`specmd_jax.run.batches` (the JAX engine, exact against it); ``docs/semantics.md`` says how it
differs from the pinned convention and when each is right.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import pandas as pd

from specmd_jax.core import checks
from specmd_jax.core.checks import MIB, byte_budgets
from specmd_jax.core.atomic import write_text
from specmd_jax.kernels.batches import BATCH_KERNEL_POLICIES
from specmd_jax.reference.batches import BATCH_COUNTERS, CONVENTIONS, check_policy, simulate_batches
from specmd_jax.run.batches import run_batches

ENGINES = ("auto", "jax", "reference")
# BigMoeOnEdge's policy names -> (registry policy, partitioned); their `random` cannot be reproduced
PEER_POLICIES = {"belady": ("belady", False), "lru": ("lru", False), "lfu": ("lfu_history", False),
                 "layer": ("lru", True), "layerlfu": ("lfu_history", True)}
CURVE_COLUMNS = ("budget_mib", "policy", "hit_pct_cum", "hit_pct_decode", "read_mib")


def pinned_slots(trace, budget_bytes: np.ndarray) -> np.ndarray:
    """Slots of the pinned convention for byte budgets: ``budget // expert_bytes``, exact only where every
    layer's experts weigh the same (the pinned engines count slots); a ValueError otherwise."""
    if trace.shape.layer_bytes is not None and len(set(trace.shape.layer_bytes)) > 1:
        raise ValueError(f"trace {trace.source}: expert bytes differ across layers "
                         f"({sorted(set(trace.shape.layer_bytes))}); the pinned convention's engines count slots "
                         "of one size, so a byte budget is not exact there: use convention='bigmoeonedge' (byte "
                         "budgets, per-layer sizes) or capacities= in slots")
    return checks.capacities(np.asarray(budget_bytes, np.int64) // trace.shape.expert_bytes, name="budget slots")


def sweep_batches(trace, policy: str, budgets_mib=None, *, capacity_bytes=None, partitioned: bool = False,
                  engine: str = "auto", convention: str = "bigmoeonedge") -> pd.DataFrame:
    """Replay ``policy`` under the batch convention at every byte budget: one row per budget.

    Args:
        budgets_mib / capacity_bytes: budgets in MiB or bytes (one of them). Partitioned: each layer
            gets ``budget // L`` bytes.
        engine: ``"auto"``/``"jax"`` (the vmapped kernel, all budgets in one program; ``random`` is
            refused by both) or ``"reference"`` (pure Python, one budget at a time).

    Returns:
        The counters of :data:`~specmd_jax.reference.batches.BATCH_COUNTERS` and ``hit_rate``,
        ``hit_rate_decode``, ``hit_rate_prefill`` (per lookup), ``read_mib``, ``max_bytes``;
        ``df.attrs["resident"]``: bool[B, N] final resident sets.
    """
    checks.trace(trace)
    if convention != "bigmoeonedge":
        raise ValueError(f"sweep_batches replays convention 'bigmoeonedge'; got {convention!r} (known: {CONVENTIONS})")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES} under convention 'bigmoeonedge', got {engine!r}")
    check_policy(policy, trace)
    b, mib = byte_budgets(budgets_mib, capacity_bytes)
    t0 = time.perf_counter()
    if engine == "reference" or policy not in BATCH_KERNEL_POLICIES:
        if engine == "jax":
            raise ValueError(f"no JAX path serves {policy!r} under convention 'bigmoeonedge'")
        rs = [simulate_batches(trace, policy, int(x), partitioned=partitioned) for x in b]
        tot = np.asarray([[r.totals[k] for k in BATCH_COUNTERS] for r in rs], np.int64)
        per = np.asarray([[r.per_layer[k] for k in BATCH_COUNTERS] for r in rs], np.int64)
        res = np.zeros((len(b), trace.shape.num_ids), bool)
        for i, r in enumerate(rs):
            res[i, r.resident] = True
        maxb, eng = np.asarray([r.max_bytes for r in rs], np.int64), "reference"
    else:
        r = run_batches(trace, policy, [int(x) for x in b], partitioned=partitioned)
        tot, per, res, maxb, eng = r.totals, r.per_layer, r.resident, r.max_bytes, "jax-batches"
    df = batch_table(trace, policy, partitioned, b, mib, tot, maxb)
    df["engine"] = eng
    df.attrs = {"resident": res, "per_layer": _per_layer(per, df["budget_mib"].to_numpy()),
                "timing": {"run_s": time.perf_counter() - t0}}
    return df


def _per_layer(per: np.ndarray, mib: np.ndarray) -> pd.DataFrame:
    """The long per-layer table (int64[B, C, L] counters): one row per (budget, layer)."""
    B, C, L = per.shape
    pl = pd.DataFrame(per.transpose(0, 2, 1).reshape(-1, C), columns=list(BATCH_COUNTERS))
    pl.insert(0, "budget_mib", np.repeat(mib, L))
    pl.insert(1, "layer", np.tile(np.arange(L), B))
    pl["hit_rate"] = pl["hits"] / pl["lookups"].where(pl["lookups"] > 0)
    return pl


def batch_table(trace, policy, partitioned, b, mib, tot, maxb) -> pd.DataFrame:
    """The tidy table of a batch-convention sweep (one row per budget)."""
    df = pd.DataFrame(np.asarray(tot, np.int64), columns=list(BATCH_COUNTERS))
    df.insert(0, "convention", "bigmoeonedge")
    df.insert(1, "policy", policy)
    df.insert(2, "partitioned", bool(partitioned))
    df.insert(3, "budget_mib", mib if mib is not None else np.asarray(b, np.float64) / MIB)
    df.insert(4, "capacity_bytes", np.asarray(b, np.int64))
    df["lookups_prefill"] = df["lookups"] - df["lookups_decode"]
    df["hits_prefill"] = df["hits"] - df["hits_decode"]
    rate = lambda h, n: df[h] / df[n].where(df[n] > 0)  # noqa: E731
    df["hit_rate"], df["hit_rate_decode"] = rate("hits", "lookups"), rate("hits_decode", "lookups_decode")
    df["hit_rate_prefill"] = rate("hits_prefill", "lookups_prefill")
    df["read_mib"] = df["read_bytes"] / MIB
    df["max_bytes"] = np.asarray(maxb, np.int64)
    return df


def replay_curve(trace, budgets_mib: Sequence[float], policies: Sequence[str] = tuple(PEER_POLICIES), *,
                 engine: str = "auto") -> pd.DataFrame:
    """The hit-rate curve BigMoeOnEdge's replayer prints, under its convention: one row per budget x
    policy (their names: :data:`PEER_POLICIES`), with ``hit_pct_cum``, ``hit_pct_decode``, ``read_mib``
    (their columns), our counters, and ``belady_gap`` = (Belady's hits - hits) / Belady's hits."""
    unknown = [p for p in policies if p not in PEER_POLICIES]
    if unknown:
        raise ValueError(f"unknown curve policies {unknown}; known: {list(PEER_POLICIES)} (BigMoeOnEdge's "
                         "'random' draws from CPython's random module and cannot be reproduced)")
    frames = []
    for name in dict.fromkeys(list(policies) + ["belady"]):
        pol, part = PEER_POLICIES[name]
        frames.append(sweep_batches(trace, pol, budgets_mib, partitioned=part, engine=engine))
        frames[-1].insert(1, "peer_policy", name)
    df = curve_table(frames)
    return df[df["peer_policy"].isin(list(policies))].reset_index(drop=True)


def curve_table(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """One curve from per-policy batch tables (each with a ``peer_policy`` column): their percentages
    ``hit_pct_cum`` and ``hit_pct_decode``, ``belady_gap`` against the global pool's Belady at each
    budget when Belady is among them (as BigMoeOnEdge compares), rows by budget in the order given."""
    rows = []
    for f in frames:
        f = f.copy()
        f.attrs = {}
        rows.append(f)
    df = pd.concat(rows, ignore_index=True)
    df["hit_pct_cum"], df["hit_pct_decode"] = 100 * df["hit_rate"], 100 * df["hit_rate_decode"]
    if "belady" in df["peer_policy"].values:
        best = df[df["peer_policy"] == "belady"].drop_duplicates("budget_mib").set_index("budget_mib")["hits"]
        b = df["budget_mib"].map(best)
        df["belady_gap"] = (b - df["hits"]) / b.where(b > 0)
    order = {b: i for i, b in enumerate(dict.fromkeys(df["budget_mib"]))}
    return df.sort_values("budget_mib", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)


def curve_text(df: pd.DataFrame) -> str:
    """The curve as BigMoeOnEdge's CSV: ``budget_mib,policy,hit_pct_cum,hit_pct_decode,read_mib`` with
    their number formats (``%.0f,%s,%.3f,%.3f,%.1f``)."""
    lines = [",".join(CURVE_COLUMNS)]
    for r in df.itertuples(index=False):
        lines.append("%.0f,%s,%.3f,%.3f,%.1f" % (r.budget_mib, r.peer_policy, r.hit_pct_cum, r.hit_pct_decode,
                                                   r.read_mib))
    return "\n".join(lines) + "\n"


def write_curve(df: pd.DataFrame, path) -> None:
    """Write :func:`curve_text` to ``path`` whole or not at all."""
    write_text(path, curve_text(df))
