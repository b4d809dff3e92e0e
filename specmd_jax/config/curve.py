"""The run app's job under ``convention=bigmoeonedge``: byte budgets, BigMoeOnEdge's replay rules.

Each policy runs :func:`specmd_jax.api.batches.sweep_batches` over every budget of the ``sweep``
group (``sweep=budgets_mib`` or ``sweep.capacity_bytes=[...]``) in one vmapped program. Policy
names are the registry's, plus BigMoeOnEdge's per-layer names ``layer`` (LRU) and ``layerlfu``
(LFU with history) for the partitioned variants. Writes ``results.csv`` (one row per policy x
budget, every counter), ``per_layer.csv``, ``curve.csv`` (BigMoeOnEdge's own five columns and
number formats, its policy names), ``curve.png`` and ``trace.txt``.
"""

from __future__ import annotations

import time

import pandas as pd

from specmd_jax.api.batches import PEER_POLICIES, curve_table, curve_text, sweep_batches
from specmd_jax.config.build import ConfigError
from specmd_jax.policies import list_policies
from specmd_jax.core.conventions import BATCH_UNSUPPORTED as UNSUPPORTED
from specmd_jax.study.plots import plot_curve

ALIASES = {k: v for k, v in PEER_POLICIES.items() if v[1]}      # layer, layerlfu
PEER_NAME = {v: k for k, v in PEER_POLICIES.items()}


def peer_name(policy: str, partitioned: bool) -> str:
    """BigMoeOnEdge's name of a (policy, pool) where it has one, else ``[layer]<policy>``."""
    return PEER_NAME.get((policy, partitioned), ("layer" if partitioned else "") + policy)


def resolve(names, partitioned: bool) -> list[tuple[str, bool]]:
    """``(registry policy, partitioned)`` per configured name; a ConfigError listing the valid names."""
    known = [p for p in list_policies() if p not in UNSUPPORTED] + list(ALIASES)
    out = []
    for n in names:
        if n in UNSUPPORTED:
            raise ConfigError(f"policy {n!r} under convention=bigmoeonedge: {UNSUPPORTED[n]}")
        if n not in known:
            raise ConfigError(f"unknown policy {n!r} under convention=bigmoeonedge; valid: {', '.join(known)}")
        pc = ALIASES.get(n, (n, partitioned))
        if pc not in out:
            out.append(pc)
    return out


def run_convention(cfg: dict, out, trace, sizes: dict, names: list) -> pd.DataFrame:
    """Sweep every policy over the byte budgets; write the run's files through ``out`` (a RunDir)."""
    if not set(sizes) & {"budgets_mib", "capacity_bytes"}:
        raise ConfigError(f"convention=bigmoeonedge budgets bytes: use sweep=budgets_mib (or sweep.capacity_bytes="
                          f"[...] with the other sweep keys null), not {', '.join('sweep.' + k for k in sizes)}")
    if cfg.get("mode", "pinned") != "pinned":
        raise ConfigError("convention=bigmoeonedge replays one batch per (pass, layer): mode must be pinned")
    pols = resolve(names, bool(cfg.get("partitioned")))
    print(f"trace: {trace.describe()}\nconvention: bigmoeonedge; policies: "
          f"{', '.join(peer_name(*pc) for pc in pols)}; {sizes}")
    tables, layers = [], []
    for pol, part in pols:
        t0 = time.perf_counter()
        try:
            df = sweep_batches(trace, pol, **sizes, partitioned=part)
        except ValueError as e:
            raise ConfigError(f"policy {pol}: {e}") from None
        print(f"  {peer_name(pol, part):>12s}: {time.perf_counter() - t0:6.1f} s ({df['engine'].iloc[0]})", flush=True)
        df.insert(1, "peer_policy", peer_name(pol, part))
        pl = df.attrs["per_layer"].copy()
        pl.insert(0, "peer_policy", peer_name(pol, part))
        layers.append(pl)
        tables.append(df)
    res = curve_table(tables)
    out.csv("results.csv", res)
    out.csv("per_layer.csv", pd.concat(layers, ignore_index=True))
    out.text("curve.csv", curve_text(res))
    out.text("trace.txt", "\n".join([trace.describe(), f"source: {trace.source}", "convention: bigmoeonedge",
                                     f"budgets: {sizes}", "notes:"] + [f"  - {n}" for n in trace.notes]) + "\n")
    out.write("curve.png", lambda p: plot_curve(res, p, f"{trace.shape.name}, convention bigmoeonedge"))
    with pd.option_context("display.width", 200):
        print(res[["budget_mib", "peer_policy", "hit_pct_cum", "hit_pct_decode", "read_mib"]]
              .to_string(index=False, max_rows=80, float_format=lambda x: f"{x:.3f}"))
    return res
