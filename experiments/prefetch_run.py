"""Hydra entry point for prefetch + timing studies (``conf/prefetch_app.yaml``).

Hydra selects (trace, capacities, hardware profiles, a prior system or a prefetch config,
timing; each group names the object it builds with ``_target_``); :func:`specmd_jax.sweep` computes. Writes ``results.csv`` (one row per policy x
capacity x hardware profile) and ``trace.txt`` into the run directory (atomically, then
``manifest.json`` last; :mod:`specmd_jax.core.outputs`), prints a summary. The directory is checked
writable and claimed before any compute and refused if it already holds results; input errors
print one ``error:`` line and exit 2, Ctrl-C exits 130 and SIGTERM 143 (no manifest).

    python experiments/prefetch_run.py
    python experiments/prefetch_run.py system=zhu25 hardware=all timing=instant
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import hydra
import pandas as pd
from omegaconf import DictConfig, OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import specmd_jax as sj  # noqa: E402
from specmd_jax.config import objects  # noqa: E402
from specmd_jax.config.build import (ConfigError, build_trace, enable_compilation_cache,  # noqa: E402
                                   resolve_capacities, resolve_policies)
from specmd_jax.core.outputs import RunDir, guarded, run_job  # noqa: E402
from specmd_jax.core.trace import TraceError  # noqa: E402
from specmd_jax.config.schema import register as register_schemas  # noqa: E402

register_schemas()  # conf/*.yaml extend these typed schemas: typos and wrong types fail at startup

SHOW = ["policy", "prefetch", "miss", "routing", "reading", "capacity_fraction", "below_token_cycle", "hardware",
        "hit_rate", "late_rate", "collision_rate", "ttft_ms", "tpot_ms", "proxy_mass_full_precision"]
OUTPUTS = ("results.csv", "trace.txt")


def run(cfg: dict) -> pd.DataFrame:
    """Run the plain-dict config; write the output files and the manifest; return the results table."""
    return run_job(cfg, OUTPUTS, "experiments/prefetch_run.py", _run, lead="\n")


def _run(cfg: dict, out: RunDir) -> pd.DataFrame:
    trace = build_trace(cfg["trace"])
    sizes = resolve_capacities(trace, cfg["sweep"])
    hws = objects.hardware(cfg.get("hardware"))
    if cfg.get("timing") not in ("async", "instant"):
        raise ConfigError(f"timing must be async or instant, got {cfg.get('timing')!r}")
    system = objects.system(cfg.get("system"))
    pf = objects.prefetch(cfg["prefetch"], system)
    miss, prec = objects.misses(cfg.get("miss"), system), objects.precision(cfg.get("precision"), system)
    routing = objects.routings(cfg.get("routing"), system)
    if pf is not None and pf.predictor == "recorded" and not trace.has_predictions:
        raise ConfigError(f"prefetch.predictor=recorded, but trace {trace.source} has no recorded predictions: "
                          "set trace.pred_noise=1.0 (synthetic) or prefetch.predictor=oracle_degraded "
                          "prefetch.recall=0.8 prefetch.precision=0.8")
    if system is not None:
        runs = [(system.eviction, system)] + ([("ls", system.with_eviction("ls"))]
                                              if cfg.get("ls_dropin") and system.eviction != "ls" else [])
        notes = list(system.run_notes())
    else:
        runs = [(p, None) for p in resolve_policies(cfg.get("policies"), None, "pinned")]
        notes = []
    print(f"trace: {trace.describe()}")
    print(f"prefetch: {pf}; miss: {', '.join(x.label() for x in miss)}; precision: {'/'.join(prec.names)}; "
          f"routing: {', '.join(r.label(trace) for r in routing)}; timing: {cfg['timing']}; reading: "
          f"{cfg['execution']}/{cfg['prefetch_issue']}/{cfg['pin']}; "
          f"hardware: {', '.join(h.name for h in hws)}")
    frames = []
    for pol, s in runs:
        t0 = time.perf_counter()
        try:
            df = sj.sweep(trace, pol, **sizes, prefetch=pf, hardware=hws, timing=cfg["timing"],
                                   miss=miss, precision=prec, routing=routing, engine=cfg.get("engine", "auto"),
                                   progress=bool(cfg.get("progress")), execution=cfg["execution"],
                                   prefetch_issue=cfg["prefetch_issue"], pin=cfg["pin"])
        except ValueError as e:
            raise ConfigError(f"policy {pol}: {e}") from None
        df.insert(0, "system", s.name if s is not None else "")
        frames.append(df)
        print(f"  {pol:>6s}: {time.perf_counter() - t0:6.1f} s ({df['engine'].iloc[0]})", flush=True)
    res = pd.concat(frames, ignore_index=True)
    out.csv("results.csv", res)
    info = [trace.describe(), f"source: {trace.source}", f"prefetch: {pf}", f"timing: {cfg['timing']}",
            f"hardware: {[h for h in hws]}", f"prediction precision/recall: {res['pred_precision'].iloc[0]:.3f} / "
            f"{res['pred_recall'].iloc[0]:.3f}", "notes:"] + [f"  - {n}" for n in (*trace.notes, *notes)]
    out.text("trace.txt", "\n".join(info) + "\n")
    with pd.option_context("display.width", 200):
        print()
        print(res[SHOW].to_string(index=False, max_rows=60, float_format=lambda x: f"{x:.4f}"))
    for n in notes:
        print(f"note: {n}")
    print("\nbest configuration per metric:")
    for metric, how in (("ttft_ms", "min"), ("tpot_ms", "min"), ("hit_rate", "max"), ("collision_rate", "min")):
        col = res[metric].dropna()
        if col.empty:
            continue
        r = res.loc[col.idxmin() if how == "min" else col.idxmax()]
        print(f"  {how} {metric}: {r[metric]:.4f}  ({r['policy']}, {r['prefetch']}, miss {r['miss']}, routing "
              f"{r['routing']}, reading {r['reading']}, capacity {r['capacity_fraction']:.3g}, {r['hardware']})")
    return res


@hydra.main(config_path="../conf", config_name="prefetch_app", version_base="1.3")
def main(cfg: DictConfig) -> None:
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    plain = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    # input errors: one "error:" line, exit 2; Ctrl-C: 130, SIGTERM: 143; bugs keep their traceback
    guarded(lambda: (enable_compilation_cache(plain.get("compilation_cache")), run(plain)),
            (ConfigError, TraceError))


if __name__ == "__main__":
    main()
