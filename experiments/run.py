"""Hydra entry point: replay one trace against cache policies over a grid of cache sizes.

Hydra selects (trace, sweep grid, policies, mode); the library computes: each policy is one
jitted, vmapped :func:`specmd_jax.sweep` over every cache size x seed of the ``sweep`` group.

Usage (from the repo root; see conf/config.yaml for more)::

    python experiments/run.py                                    # defaults: 9 policies, 1/5/25%
    python experiments/run.py trace=qwen3_real sweep=slots policies=[lru,ls]
    python experiments/run.py -m policy=lru,ls,belady trace=synthetic,qwen3_real
    python experiments/run.py trace=qwen3_real convention=bigmoeonedge sweep=budgets_mib policy=bigmoeonedge

Writes ``results.csv``, ``per_layer.csv``, ``trace.txt`` and the plots ``hit_rate.png`` and
``misses.png`` (under ``convention=bigmoeonedge``: ``curve.csv`` and ``curve.png`` instead of the
plots; :mod:`specmd_jax.config.curve`) into the hydra output directory, each atomically, then ``manifest.json`` last
(:mod:`specmd_jax.core.outputs`): a directory without a manifest holds no complete run. The directory
is checked writable and claimed before any compute and refused if it already holds results.
Input errors (config, trace, output directory) print one ``error:`` line and exit 2; Ctrl-C
exits 130, SIGTERM 143 (no manifest).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import hydra
import pandas as pd
from omegaconf import DictConfig, OmegaConf

# The repo root first on the path: the script runs this checkout's package, installed or not.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import specmd_jax as sj  # noqa: E402
from specmd_jax.config.build import (ConfigError, build_trace, enable_compilation_cache,  # noqa: E402
                                   resolve_capacities, resolve_policies)
from specmd_jax.core.outputs import RunDir, guarded, run_job  # noqa: E402
from specmd_jax.study.plots import plot_hit_rate, plot_misses  # noqa: E402
from specmd_jax.run.stack import ENGINES, STACK_POLICIES  # noqa: E402
from specmd_jax.core.trace import TraceError  # noqa: E402
from specmd_jax.config.schema import register as register_schemas  # noqa: E402
from specmd_jax.config.curve import run_convention  # noqa: E402
from specmd_jax.api import sweep_score  # noqa: E402
from specmd_jax.api.tables import with_belady_gap  # noqa: E402
from specmd_jax.core.score import FEATURES, ScorePolicy  # noqa: E402

register_schemas()  # conf/*.yaml extend these typed schemas: typos and wrong types fail at startup

SHOW = ["policy", "capacity_fraction", "capacity_slots", "hit_rate", "collision_rate", "misses",
        "collisions", "bypass"]
ORACLES = {"belady"}
SCAN = sj.policies.served_by("scan")
OUTPUTS = ("results.csv", "per_layer.csv", "trace.txt", "hit_rate.png", "misses.png", "curve.csv", "curve.png")


def best_by_capacity(df: pd.DataFrame) -> pd.DataFrame:
    """Best policy per capacity by hit rate (mean over seeds); ties joined with '='.

    When an oracle (belady) ran next to online policies, also the best online policy.
    """
    keys = ["capacity_fraction", "capacity_slots"]
    hr = df.groupby(keys + ["policy"], sort=False)["hit_rate"].mean().unstack("policy")
    hr = hr[[p for p in df["policy"].unique()]]  # policy order as run

    def best(row: pd.Series) -> tuple[str, float]:
        row = row.dropna()
        if row.empty:
            return "-", float("nan")
        m = row.max()
        return "=".join(row.index[(row >= m - 1e-12)]), float(m)

    out = pd.DataFrame(index=hr.index)
    out["best"], out["hit_rate"] = zip(*(best(r) for _, r in hr.iterrows()))
    online = [p for p in hr.columns if p not in ORACLES]
    if online and len(online) < hr.shape[1]:
        out["best_online"], out["online_hit_rate"] = zip(*(best(r) for _, r in hr[online].iterrows()))
    return out.reset_index()


def run(cfg: dict) -> pd.DataFrame:
    """Run the plain-dict config; write the output files and the manifest; return the results table."""
    return run_job(cfg, OUTPUTS, "experiments/run.py", _run)


def _run(cfg: dict, out: RunDir) -> pd.DataFrame:
    if not list(cfg.get("seeds") or []):
        raise ConfigError("seeds is empty: give at least one, e.g. seeds=[0]")
    trace = build_trace(cfg["trace"])
    sizes = resolve_capacities(trace, cfg["sweep"])
    if cfg.get("convention", "pinned") == "bigmoeonedge":     # byte budgets, BigMoeOnEdge's replay rules
        names = [cfg["policy"]] if cfg.get("policy") not in (None, "") else list(cfg.get("policies") or [])
        return run_convention(cfg, out, trace, sizes, names)
    policies = resolve_policies(cfg.get("policies"), cfg.get("policy"), cfg.get("mode", "pinned"), extra=("score",))
    score_pol = None
    if "score" in policies:  # a learned (or hand-written) score policy, specmd_jax.core.score
        path = cfg.get("score_policy")
        if path in (None, ""):
            raise ConfigError("policy 'score' needs score_policy=<file.json> (e.g. outputs/tune_score/learned.json, "
                              "written by experiments/tune_score.py)")
        if cfg.get("mode", "pinned") != "pinned" or cfg.get("partitioned"):
            raise ConfigError("policy 'score' runs pinned visits on the global pool only (mode=pinned partitioned=false)")
        try:
            score_pol = ScorePolicy.load(path)
        except ValueError as e:
            raise ConfigError(f"score_policy: {e}") from None
    if cfg.get("engine", "auto") not in ENGINES:
        raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, got {cfg.get('engine')!r}")
    notes = []
    if "sb" in policies and not trace.has_weights:
        if len(policies) == 1:
            raise ConfigError(f"policy 'sb' needs router weights; trace {trace.source} has none")
        policies.remove("sb")
        notes.append("skipped policy sb: the trace has no router weights")
        print(f"note: {notes[-1]}")
    print(f"trace: {trace.describe()}")
    print(f"source: {trace.source}")
    what = ", ".join(f"{k}={v}" for k, v in sizes.items()) if len(next(iter(sizes.values()))) <= 8 \
        else f"{len(next(iter(sizes.values())))} {next(iter(sizes))}"
    print(f"policies: {', '.join(policies)}; {what}; seeds={list(cfg['seeds'])}; mode={cfg['mode']}"
          f"{'; partitioned' if cfg['partitioned'] else ''}")

    tables, layers = [], []
    for p in policies:
        t0 = time.perf_counter()
        engine = cfg.get("engine", "auto") if p in STACK_POLICIES else ("scan" if p in SCAN else "auto")
        if p == "score":
            hw = cfg.get("score_sensitivity")
            if hw not in (None, "") and hw not in sj.HARDWARE_PRESETS:
                raise ConfigError(f"score_sensitivity: unknown hardware preset {hw!r}; valid: {', '.join(sj.HARDWARE_PRESETS)}")
            hw = sj.HARDWARE_PRESETS[hw] if hw not in (None, "") else None
            df = sweep_score(trace, score_pol, **sizes, hardware=hw, sensitivities=hw is not None)
            df.insert(1, "model", trace.shape.name)
            print(f"  {df['policy'].iloc[0]:>7s}: {time.perf_counter() - t0:6.1f} s (keyed kernel; weights "
                  f"{dict(zip(FEATURES, (round(w, 3) for w in score_pol.weights)))})", flush=True)
            notes.append(f"{df['policy'].iloc[0]}: totals only (no per-layer rows); seeds do not apply")
            tables.append(df)
            continue
        try:
            decay = {"decay_periods": list(cfg.get("decay_periods") or [0])} if sj.policies.get(p).decayed else {}
            df = sj.sweep(trace, p, **sizes, seeds=cfg["seeds"], mode=cfg["mode"], **decay,
                          partitioned=bool(cfg["partitioned"]), progress=bool(cfg["progress"]),
                          unroll_layers=cfg.get("unroll_layers"), engine=engine)
        except ValueError as e:  # e.g. engine=stack at a capacity where LRU bypasses
            raise ConfigError(f"policy {p}: {e}") from None
        tm = df.attrs.get("timing", {})
        print(f"  {p:>7s}: {time.perf_counter() - t0:6.1f} s (compile {tm.get('compile_s', float('nan')):.1f} s,"
              f" run {tm.get('run_s', float('nan')):.2f} s)", flush=True)
        pl = df.attrs["per_layer"].copy()
        pl.insert(0, "policy", p)
        pl.insert(3, "capacity_fraction", df["capacity_fraction"].to_numpy()[pl["config"].to_numpy()])
        layers.append(pl)
        df = df.copy()
        df.attrs = {}  # per_layer etc. are saved separately; concat must not compare them
        tables.append(df)
    res = pd.concat(tables, ignore_index=True)
    if "belady" in policies:          # the share of the oracle's hits each policy misses, per cache size
        res = with_belady_gap(res)
    per_layer = pd.concat(layers, ignore_index=True) if layers else pd.DataFrame()

    out.csv("results.csv", res)
    out.csv("per_layer.csv", per_layer)
    info = [trace.describe(), f"source: {trace.source}", f"policies: {', '.join(policies)}",
            f"mode: {cfg['mode']}  partitioned: {cfg['partitioned']}  seeds: {list(cfg['seeds'])}",
            f"cache sizes: {sizes}",
            "collision_rate = collisions / demands; hit_rate = hits / demands",
            "notes:"] + [f"  - {n}" for n in (*trace.notes, *notes)] + ([] if (trace.notes or notes) else ["  (none)"])
    out.text("trace.txt", "\n".join(info) + "\n")

    show = SHOW + (["seed"] if len(cfg["seeds"]) > 1 else [])
    with pd.option_context("display.width", 200):
        print()
        print(res[show].to_string(index=False, max_rows=60, float_format=lambda x: f"{x:.4f}"))
        print("\nbest policy per capacity (hit rate):")
        print(best_by_capacity(res).to_string(index=False, max_rows=60, float_format=lambda x: f"{x:.4f}"))
    title = f"{trace.shape.name} ({trace.source.split('(')[0]}), {cfg['mode']}"
    out.write("hit_rate.png", lambda p: plot_hit_rate(res, p, title))
    out.write("misses.png", lambda p: plot_misses(res, p, title))
    print()
    return res


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # no "no TPU" chatter
    plain = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)  # only this entry point sees a DictConfig
    # input errors: one "error:" line, exit 2; Ctrl-C: 130, SIGTERM: 143; bugs keep their traceback
    guarded(lambda: (enable_compilation_cache(plain.get("compilation_cache")), run(plain)),
            (ConfigError, TraceError))


if __name__ == "__main__":
    main()
