"""Cost of prefetch + timing vs the demand-only engine, same process.

Workload: synthetic OLMoE decode stream (``--tokens`` passes, recorded predictions with
``pred_noise`` 1.0), ``--configs`` capacities ``linspace(16, N, B)``, top-k x 1.0 next-layer plan.
Rows: the demand-only vmapped scan (``run.demand.run_configs``), the instant-prefetch engine
(``run.instant.run_instant``, which also yields every hardware profile's times from the same
run; the host timing step is timed separately), the asynchronous prefetch + timing engine
(``run.asynchronous.run_async``, lru/fifo, one hardware profile, so the same number of
configurations), the same at mixed precision (fp16/int8/int4/int2 levels, ``fetch_priority`` with
four percentiles x ``configs / 4`` capacities: weighted ranks), and the exact async
reference on one configuration (for scale). ``ratio_vs_demand_only`` = engine time /
demand-only time of the same policy (target: <= 2x at 1024 configurations). These rows
replay the whole-visit reading (``visit/after_use/visit``), the one they were first measured
under; ``--readings`` measures every reading, the default included, against it.

``--readings``: the execution readings (:class:`specmd_jax.core.timing.Reading`) on the asynchronous
engine (and the instantaneous one where it runs them), each at ``--configs`` configurations on
the first ``--reading-tokens`` passes of the same stream, against the whole-visit reading every
earlier release used (``visit/after_use/visit``) in the same process: ``per_visit`` = run time / today's run time (the
cost of replaying the same trace), ``per_step`` = the same per scan step (a per-expert reading
scans one step per expert, ``turns`` of them, instead of one per visit). Writes
``<out>/readings_<backend>.csv`` and ``.md``.

Writes ``<out>/prefetch_<backend>.csv`` and ``.md``. Example::

    .venv/bin/python experiments/bench_prefetch.py --tokens 512 --configs 1024
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from specmd_jax.core import synthetic  # noqa: E402
from specmd_jax.core.prefetch import PrefetchConfig, make_plan  # noqa: E402
from specmd_jax.kernels.asynchronous import ASYNC_POLICIES  # noqa: E402
from specmd_jax.core.miss import PRECISION_PRESETS, MissConfig  # noqa: E402
from specmd_jax.core.clock import pass_times as timing  # noqa: E402
from specmd_jax.run.asynchronous import run_async  # noqa: E402
from specmd_jax.run.instant import run_instant  # noqa: E402
from specmd_jax.reference.timed import simulate_timed  # noqa: E402
from specmd_jax.run.demand import run_configs  # noqa: E402
from specmd_jax.core.timing import HARDWARE_PRESETS, VISIT_READING  # noqa: E402


def _write(a, df: pd.DataFrame, name: str, title: str, notes: list, argv, cols: dict) -> None:
    """Write ``<out>/<name>_<backend>.csv`` and ``.md`` (title, machine, ``notes``, command, then a
    table of ``cols``: header -> ``(column, format)``)."""
    backend = jax.default_backend()
    os.makedirs(a.out, exist_ok=True)
    df.to_csv(os.path.join(a.out, f"{name}_{backend}.csv"), index=False)
    lines = [f"# {title} ({backend})", "",
             f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}; {os.cpu_count()} CPUs, "
             f"{platform.platform()}; jax {jax.__version__}", *notes,
             f"- command: `{' '.join(sys.argv) if argv is None else argv}`", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(format(r[c], f) for c, f in cols.values()) + " |")
    Path(a.out, f"{name}_{backend}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {a.out}/{name}_{backend}.csv and .md")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--configs", type=int, default=1024)
    ap.add_argument("--policies", default="lru,ls,fifo")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default="outputs/bench")
    ap.add_argument("--readings", action="store_true", help="only the execution-readings table")
    ap.add_argument("--reading-tokens", type=int, default=128)
    a = ap.parse_args(argv)
    t = synthetic.decode_stream("olmoe-1b-7b", a.tokens, seed=0, pred_noise=1.0)
    N = t.shape.num_ids
    caps = np.linspace(16, N, a.configs).astype(int)
    plan = make_plan(t, PrefetchConfig("recorded", "topk"))
    acc = int(sum(len(set(t.experts[t.cell_offsets[c]:t.cell_offsets[c + 1]].reshape(-1).tolist()))
                  for c in range(t.num_visits)))
    hws = list(HARDWARE_PRESETS.values())
    if a.readings:
        return readings_table(a, t.slice_passes(0, min(a.reading_tokens, t.num_passes)), caps, argv)
    rows = []

    def best(fn):
        out, b, comp = None, float("inf"), None
        for _ in range(max(1, a.repeats)):
            out = fn()
            comp = out.compile_s if comp is None else comp
            b = min(b, out.run_s)
        return out, comp, b

    for pol in a.policies.split(","):
        d, dc, ds = best(lambda: run_configs(t, pol, caps))
        p, pc, ps = best(lambda: run_instant(t, pol, caps, plan, reading=VISIT_READING))
        t0 = time.perf_counter()
        for h in hws:
            timing(t, p.pass_misses, h)
        th = time.perf_counter() - t0
        t0 = time.perf_counter()
        simulate_timed(t, pol, N // 20, plan=plan, hardware=hws[0], reading=VISIT_READING)
        tr = time.perf_counter() - t0
        engines = [("demand-only scan", a.configs, dc, ds), ("instant prefetch (jax)", a.configs, pc, ps)]
        if pol in ASYNC_POLICIES:
            q, qc, qs = best(lambda: run_async(t, pol, caps, plan, hws[:1], reading=VISIT_READING))
            engines.append(("async prefetch + timing (jax)", a.configs, qc, qs))
            print(f"{pol}: async prefetch + timing {qs:.2f}s ({qs / ds:.2f}x demand-only)", flush=True)
            prec = PRECISION_PRESETS["fp16-int8-int4-int2"]
            misses = [MissConfig("fetch_priority", percentile=p) for p in (20.0, 40.0, 60.0, 80.0)]
            # the same capacity range in bytes, in units, a quarter as many (x 4 percentiles)
            ucaps = np.linspace(16, N, max(1, a.configs // len(misses))).astype(int) * prec.units[0]
            mq, mc, ms = best(lambda: run_async(t, pol, ucaps, plan, hws[:1], misses=misses, precision=prec,
                                                reading=VISIT_READING))
            engines.append(("async + 4 precision levels, fetch_priority (jax)", len(ucaps) * len(misses), mc, ms))
            print(f"{pol}: async at mixed precision {ms:.2f}s ({ms / ds:.2f}x demand-only)", flush=True)
        for engine, B, comp, run in (*engines,
                                     (f"host timing of {len(hws)} hardware profiles", a.configs, float("nan"), th),
                                     ("async reference (1 config)", 1, float("nan"), tr)):
            rows.append({"policy": pol, "engine": engine, "configs": B, "accesses": acc, "compile_s": comp,
                         "run_s": run, "acc_per_s": B * acc / run,
                         "ratio_vs_demand_only": run / ds if B == a.configs else float("nan")})
        print(f"{pol}: demand-only {ds:.2f}s, instant prefetch {ps:.2f}s ({ps / ds:.2f}x), host timing {th * 1e3:.1f} ms, "
              f"async reference {tr:.2f}s/config", flush=True)
    df = pd.DataFrame(rows)
    df["M_acc_per_s"] = df["acc_per_s"] / 1e6
    _write(a, df, "prefetch", "Prefetch + timing cost",
           [f"- trace: {t.describe()}; {acc} demands per configuration; plan: recorded top-k x1.0 "
            f"({plan.num_proposals} proposals); execution reading visit/after_use/visit"], argv,
           {"policy": ("policy", ""), "engine": ("engine", ""), "configs": ("configs", ""),
            "compile_s": ("compile_s", ".2f"), "run_s": ("run_s", ".3f"), "M acc/s": ("M_acc_per_s", ".2f"),
            "ratio_vs_demand_only": ("ratio_vs_demand_only", ".2f")})
    return df


def readings_table(a, t, caps, argv):
    """Cost of every execution reading vs today's, same process (see the module docstring)."""
    from specmd_jax.core.timing import READINGS
    from specmd_jax.core.turns import prepare_turns
    from specmd_jax.core.steps import prepare_steps
    plan = make_plan(t, PrefetchConfig("recorded", "topk"))
    hw = [HARDWARE_PRESETS["a100-5gbps"]]
    steps = prepare_steps(t, "pinned")
    rows = []
    for pol in a.policies.split(","):
        base = {}
        for rd in READINGS:
            nturns = prepare_turns(t, steps, rd.execution).num_turns
            runs = [("async", lambda: run_async(t, pol, caps, plan, hw, reading=rd))]
            if pol in ("lru", "ls", "fifo"):
                runs.append(("instant", lambda: run_instant(t, pol, caps, plan, reading=rd)))
            for engine, fn in runs:
                best, comp = float("inf"), None
                for _ in range(max(1, a.repeats)):
                    out = fn()
                    comp = out.compile_s if comp is None else comp
                    best = min(best, out.run_s)
                if rd == VISIT_READING:
                    base[engine] = (best, nturns)
                b_run, b_steps = base[engine]
                rows.append({"policy": pol, "engine": engine, "reading": rd.label, "configs": len(caps),
                             "visits": steps.num_steps, "steps": nturns, "compile_s": comp, "run_s": best,
                             "M_steps_per_s": len(caps) * nturns / best / 1e6,
                             "per_visit": best / b_run, "per_step": (best / nturns) / (b_run / b_steps)})
                r = rows[-1]
                print(f"{pol:4s} {engine:7s} {rd.label:26s} {best:7.2f} s  per visit {r['per_visit']:.2f}x  "
                      f"per step {r['per_step']:.2f}x", flush=True)
    df = pd.DataFrame(rows)
    _write(a, df, "readings", "Execution readings: cost against the whole-visit reading",
           [f"- trace: {t.describe()}; plan: recorded top-k x1.0; {len(caps)} capacities, one link",
            "- per_visit: run time / the whole-visit reading's (visit/after_use/visit, the only one before) "
            "run time of the same engine and policy; per_step: the same per scan step (per-expert readings "
            "scan one step per expert)"], argv,
           {**{c: (c, "") for c in ("policy", "engine", "reading", "steps")}, "compile_s": ("compile_s", ".2f"),
            "run_s": ("run_s", ".2f"), "M steps/s": ("M_steps_per_s", ".2f"), "per_visit": ("per_visit", ".2f"),
            "per_step": ("per_step", ".2f")})
    return df


if __name__ == "__main__":
    main()
