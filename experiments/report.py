"""The SpecMD study report: run every experiment, then put the paper's quoted numbers beside ours.

    python experiments/report.py              # runs all eight experiments one after another, writes outputs/report/
    python experiments/report.py --no-run     # only rebuild the page from the committed outputs/ tables
    python experiments/report.py --quick --out /tmp/report   # tiny settings, every experiment (a smoke run)

Experiments (each also runs alone, with ``--out`` and ``--quick``): ``calibrate.py`` (synthetic
presets fitted to real routing statistics), ``collisions.py`` (Figs. 4/8, 5/9, miss-ratio
curves; Least-Stale vs LRU with prefetch), ``fig6.py`` (prefetch strategies), ``table2.py``
(Least-Stale as a drop-in), ``table1.py`` (policy tuples), ``prefetch_study.py`` (prefetch x
eviction x timing), ``tune_score.py`` (a tuned eviction score on held-out traces), ``readings.py`` (the
paper's numbers under every execution reading). The page, ``<out>/report.md``, has one row per number the paper quotes
(SpecMD §4.5, §7, §11) with ours on the same setting, their ratio, and a
sentence on why they differ, and links to the experiments' figures.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ("calibrate", "collisions", "fig6", "table2", "table1", "prefetch_study", "tune_score", "readings")
FIGURES = {"calibrate": ["marginals.png"], "collisions": ["collisions.png", "per_layer.png", "mrc.png"],
           "fig6": ["fig6.png"], "table2": ["table2.png"], "table1": ["table1_pareto.png"],
           "prefetch_study": ["collision_ratio_qwen3-real.png", "collision_ratio_synthetic-olmoe.png"],
           "tune_score": ["eval.png", "learning_curve.png", "weights.png"],
           "readings": ["collision_rate_by_reading.png"]}
NOTES = {  # why ours differs, cited by letter in the table
    "a": "we replay the trace with next-layer top-k prefetch on one FIFO copy link under the default reading (one "
         "expert at a time, the plan issued at the router, only the running expert pinned): there Least-Stale cuts "
         "collisions 1.2-1.7x on calibrated OLMoE, not 2.6-8.6x, and on the real Qwen3 trace, whose only predictor "
         "here is previous-pass reuse, it does not; under the whole-visit reading of earlier releases the ratio is "
         "1.0 everywhere (next section). A trace cannot let routing react to the cache as the live model's does",
    "b": "in demand-only replay Least-Stale decides exactly as LRU (a demanded expert's key dominates every "
         "resident's), so the ratio is 1 by construction without prefetch",
    "c": "SB keys by running gate score; our traces carry only the recorded top-k weights, and at 5 % most of "
         "our misses are compulsory or capacity misses on short traces (with prefetch under the default reading "
         "SB reaches 19 % median, up to 51 %: next section)",
    "d": "our hits exclude late prefetches (a copy still in flight when demanded); the paper's hit rates come "
         "from its live prefetcher with QKV-cache timing",
    "e": "our prefill is one pass per request whose demand overflows a 5 % cache; eviction order moves TTFT "
         "only where the tuple prefetches and fetches (Eliseev, HOBBIT, #5 vs #1); Zhu et al.'s substitution "
         "never fetches (the same ~5 ms with either policy), and MixtureCache does not prefetch, where "
         "Least-Stale decides as LRU; under whole visits every change is 0.0 % (next section)",
    "f": "our stall counts every copy queued ahead of a demand miss on one FIFO link; the paper's overhead is "
         "measured on a live GPU with overlapping streams; with a weak predictor (Qwen3: previous-pass reuse) "
         "the strategies barely differ",
    "g": "a trace cannot measure accuracy: the proxy counts routed (token, expert) pairs that ran as routed",
}
OUT_DIR = {"calibrate": "calibration", "collisions": "collisions", "fig6": "fig6", "table2": "table2",
           "table1": "table1", "prefetch_study": "prefetch_study", "tune_score": "tune_score", "readings": "readings"}


def run_all(base: Path, quick: bool) -> dict:
    """Run every experiment into ``base/<name>``; returns seconds per experiment."""
    secs = {}
    for name in EXPERIMENTS:
        out = base / OUT_DIR[name]
        cmd = [sys.executable, str(ROOT / "experiments" / f"{name}.py"), "--out", str(out)] + (["--quick"] if quick else [])
        print(f"[report] {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        p = subprocess.run(cmd, cwd=ROOT)
        secs[name] = time.perf_counter() - t0
        if p.returncode != 0:
            raise SystemExit(f"[report] {name}.py failed (exit {p.returncode}); see its output above")
    return secs


def _fmt(v, pct=False) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "inf" if isinstance(v, float) and v == math.inf else "-"
    return f"{v:.1%}" if pct else f"{v:.3g}"


def _ratio_range(ours: float, lo: float, hi: float) -> str:
    """ours / paper, against both ends of a quoted range."""
    if not (isinstance(ours, (int, float)) and math.isfinite(ours)):
        return "-"
    return f"{ours / lo:.2g}" if lo == hi else f"{ours / hi:.2g}-{ours / lo:.2g}"


def rows_collisions(base: Path) -> list:
    out = []
    summ = pd.read_csv(base / "collisions" / "summary.csv")
    pf = pd.read_csv(base / "collisions" / "with_prefetch_summary.csv")
    for tr in ("olmoe-1b-7b (calibrated)", "qwen3-real"):
        s5 = summ[(summ["trace"] == tr) & np.isclose(summ["capacity_fraction"], 0.05)]
        p5 = pf[(pf["trace"] == tr) & np.isclose(pf["capacity_fraction"], 0.05) & (pf["hardware"] == "a100-5gbps")]
        p1 = pf[(pf["trace"] == tr) & np.isclose(pf["capacity_fraction"], 0.01) & (pf["hardware"] == "a100-5gbps")]
        f5 = pf[(pf["trace"] == tr) & np.isclose(pf["capacity_fraction"], 0.05) & (pf["hardware"] == "free-link")]
        f1 = pf[(pf["trace"] == tr) & np.isclose(pf["capacity_fraction"], 0.01) & (pf["hardware"] == "free-link")]
        if s5.empty or p5.empty:
            continue
        s5, p5, p1, f5, f1 = s5.iloc[0], p5.iloc[0], p1.iloc[0], f5.iloc[0], f1.iloc[0]
        out += [
            ("LS collision rate, 5 %", "1.6-1.9 %", tr + ", prefetch, 5 GB/s", _fmt(p5["ls_collision_rate"], True),
             _ratio_range(p5["ls_collision_rate"], 0.016, 0.019), "a"),
            ("LRU collision rate, 5 %", "4.5-12.6 %", tr + ", prefetch, 5 GB/s", _fmt(p5["lru_collision_rate"], True),
             _ratio_range(p5["lru_collision_rate"], 0.045, 0.126), "a"),
            ("SB collision rate, 5 %", "42.6-60.9 %", tr + ", demand only", _fmt(s5["sb_collision_rate"], True),
             _ratio_range(s5["sb_collision_rate"], 0.426, 0.609), "c"),
            ("LS vs LRU collision misses, 5 %", "2.6-8.6x", tr + ", prefetch, 5 GB/s / free link",
             f"{_fmt(p5['ls_vs_lru'])}x / {_fmt(f5['ls_vs_lru'])}x", _ratio_range(p5["ls_vs_lru"], 2.6, 8.6), "a, b"),
            ("LS vs LRU collision misses, 1 %", "up to 85x", tr + ", prefetch, 5 GB/s / free link",
             f"{_fmt(p1['ls_vs_lru'])}x / {_fmt(f1['ls_vs_lru'])}x", _ratio_range(p1["ls_vs_lru"], 85, 85), "a, b"),
            ("LS vs SB collision misses, 5 %", "58-91x", tr + ", demand only", f"{_fmt(s5['ls_vs_sb'])}x",
             _ratio_range(s5["ls_vs_sb"], 58, 91), "b, c"),
            ("hit rate at 1 % (LS)", "88-92 %", tr + ", prefetch, 5 GB/s / free link",
             f"{_fmt(p1['ls_hit_rate'], True)} / {_fmt(f1['ls_hit_rate'], True)}",
             _ratio_range(p1["ls_hit_rate"], 0.88, 0.92), "d"),
        ]
    return out


def rows_table2(base: Path) -> list:
    t = pd.read_csv(base / "table2" / "table2.csv")
    paper = {"eliseev23": 10.7, "zhu25": 34.7, "hobbit24": 17.7, "mixturecache25": 13.8}
    out = []
    syn = t[t["trace"].str.startswith("synthetic-olmoe")]
    for sys_name, pv in paper.items():
        g = syn[syn["system"] == sys_name]
        if len(g) < 2:
            continue
        own = g[g["eviction"] != "ls"]["ttft_ms"]
        own = float(own.iloc[0]) if len(own) else float(g["ttft_ms"].iloc[0])
        ls = float(g[g["eviction"] == "ls"]["ttft_ms"].iloc[-1])
        ch = 100.0 * (own - ls) / own if own else float("nan")
        out.append((f"Table 2: TTFT cut by LS, {g['label'].iloc[0]}", f"{pv} %", "synthetic OLMoE, 5 %, 5 GB/s",
                    f"{ch:+.1f} %", _ratio_range(ch, pv, pv), "e"))
    return out


def rows_fig6(base: Path) -> list:
    f = pd.read_csv(base / "fig6" / "fig6.csv")
    out = []
    for tr, g in f.groupby("trace", sort=False):
        g = g.set_index("strategy")
        k = [s for s in g.index if s.endswith("topk x1")]
        p = [s for s in g.index if s.endswith("p80")]
        if not k or not p:
            continue
        a, b = g.loc[k[0]], g.loc[p[0]]
        out.append(("Fig. 6: p80 vs top-k x1, served by prefetch", "p80 higher (except Mixtral)", tr,
                    f"{b['served_by_prefetch']:.3f} vs {a['served_by_prefetch']:.3f}",
                    _fmt(b["served_by_prefetch"] / a["served_by_prefetch"]) if a["served_by_prefetch"] else "-", "f"))
        out.append(("Fig. 6: p80 vs top-k x1, stall", "p80 lower (except Mixtral)", tr,
                    f"{b['stall_ms']:.0f} vs {a['stall_ms']:.0f} ms", _fmt(b["stall_ms"] / a["stall_ms"]) if a["stall_ms"] else "-",
                    "f"))
    return out


def rows_table1(base: Path) -> list:
    t = pd.read_csv(base / "table1" / "table1.csv")
    out = []
    for m in ("olmoe-1b-7b", "mixtral-8x7b"):
        g = t[(t["model"] == m) & np.isclose(t["capacity_fraction"], 0.05)].set_index("config")
        if not {"eliseev23", "specmd", "zhu25"} <= set(g.index):
            continue
        ours = g.loc["specmd", "ttft_ms"] / g.loc["eliseev23", "ttft_ms"]
        paper = g.loc["specmd", "paper_ttft_ms"] / g.loc["eliseev23", "paper_ttft_ms"]
        out.append((f"Table 1: TTFT #5 / #1, {m}", f"{paper:.2f}", f"synthetic {m}, 5 %, 4-bit, 5 GB/s",
                    f"{ours:.2f}", _fmt(ours / paper), "e"))
        out.append((f"Table 1: #2 (substitution) quality, {m}", f"GSM8K {g.loc['zhu25', 'paper_gsm8k']:.3f} "
                    f"(vs {g.loc['baseline', 'paper_gsm8k']:.3f})", f"synthetic {m}, 5 %",
                    f"{g.loc['zhu25', 'proxy_served_as_routed']:.3f} of pairs served as routed (proxy)", "-", "g"))
    return out


def readings_lines(base: Path) -> list:
    """The paper-number table under every execution reading (``experiments/readings.py``)."""
    page = (base / "readings" / "readings.md").read_text(encoding="utf-8").splitlines()
    start = next(i for i, ln in enumerate(page) if ln.startswith("| paper claim"))
    end = next(i for i, ln in enumerate(page) if ln.startswith("## The LRU cliff"))
    return page[start:end]


def calibration_lines(base: Path) -> list:
    c = pd.read_csv(base / "calibration" / "calibration.csv")
    fit = c[c["statistic"].isin(["fit_score", "reuse_gap"])]
    lines = ["| model | statistic | default knobs | calibrated |", "|---|---|---|---|"]
    for _, r in fit.iterrows():
        lines.append(f"| {r['model']} | {r['statistic']} | {r['default']:.4f} | {r['calibrated']:.4f} |")
    return lines


def tuned_lines(base: Path) -> list:
    """The tuned score (not in the paper) against Least-Stale and Belady on held-out traces."""
    v = pd.read_csv(base / "tune_score" / "verdict.csv")
    lines = ["| trace | capacity | LS misses | tuned misses | best fixed rule (misses) | Belady misses | tuned vs LS |"
             " gap to Belady |", "|---|---|---|---|---|---|---|---|"]
    for _, r in v.iterrows():
        lines.append(f"| {r['trace']} | {r['capacity_fraction']:.0%} | {r['ls_misses']} | {r['tuned_misses']} | "
                     f"{r['best_fixed']} ({r['best_fixed_misses']}) | {r['belady_misses']} | {r['tuned_vs_ls']} | "
                     f"{r['gap_to_belady']:.3f} |")
    return lines


def build_page(base: Path, out: Path, cmd: str, secs: dict) -> str:
    rows, missing = [], []
    for name, fn in (("collisions", rows_collisions), ("table2", rows_table2), ("fig6", rows_fig6),
                     ("table1", rows_table1)):
        try:
            rows += fn(base)
        except FileNotFoundError as e:
            missing.append(f"{name} ({e.filename})")
    lines = ["# SpecMD, reproduced on traces: the paper's numbers beside ours", "",
             f"- generated {datetime.datetime.now().isoformat(timespec='seconds')} by `{cmd}`"
             + ("; experiment run times: " + ", ".join(f"{k} {v:.0f} s" for k, v in secs.items()) if secs else
                "; from the tables already under `outputs/`"),
             "- paper numbers: `../shared/SPECMD.md` (§4.5, §7, §11). Ours: the experiments below, on the real Qwen3 "
             "trace and the calibrated synthetic OLMoE preset unless the row says otherwise; `ratio` = ours / paper "
             "(against both ends of a quoted range).",
             "- what differs everywhere: we replay recorded or synthetic routing (no live model: routing cannot react "
             "to the cache except through the routing policy we simulate), synthetic traces match summary statistics "
             "only (`outputs/calibration/`), and times come from an analytical model (one FIFO copy link, per-layer "
             "compute constants), not a wall clock on a GPU.", ""]
    if missing:
        lines += [f"- not available (run the experiment first): {', '.join(missing)}", ""]
    lines += ["Under the default execution reading (`expert/at_router/running`: one expert at a time in router "
              "order, the next layer's plan issued when the router runs, only the running expert pinned; "
              "`specmd_jax.core.timing.Reading`). The next section has every reading.", "",
              "| paper claim | paper | our setting | ours | ratio | why (notes) |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append("| " + " | ".join(str(x) for x in r) + " |")
    lines += ["", "Why they differ:", ""] + [f"- **{k}**: {v}." for k, v in NOTES.items()]
    lines += ["", "## Which execution reading reproduces which number", "",
              "How a layer runs decides the answer, so the study ran under all six distinct readings "
              "(`python experiments/readings.py`; `readings/readings.md` has the per-trace tables and the LRU "
              "cliff; `docs/readings.md` the definitions and the choice of the default). Cells: ours (ratio to the "
              "paper's geometric middle); median over five traces, range in brackets.", ""]
    try:
        lines += readings_lines(base)
    except (FileNotFoundError, StopIteration):
        lines += ["not available (run `python experiments/readings.py`)", ""]
    lines += ["", "## Calibration of the synthetic presets", ""]
    try:
        lines += calibration_lines(base)
        lines += ["", "Full table: `calibration/calibration.md`.", ""]
    except FileNotFoundError:
        lines += ["not available (run `python experiments/calibrate.py`)", ""]
    lines += ["## A tuned staleness score (ours, not in the paper)", "",
              "A parametric eviction score over online features, tuned by gradient descent on a soft relaxation "
              "and evaluated with the hard simulator on traces it never saw (`tune_score/summary.md`; demand "
              "misses, one global cache; `gap to Belady` = (Belady hits - tuned hits) / Belady hits):", ""]
    try:
        lines += tuned_lines(base) + [""]
    except FileNotFoundError:
        lines += ["not available (run `python experiments/tune_score.py`)", ""]
    lines += ["## Figures", ""]
    for name, files in FIGURES.items():
        for f in files:
            src = base / OUT_DIR[name] / f
            if src.exists():  # linked where the experiment wrote it (no copies)
                rel = os.path.relpath(src, out).replace(os.sep, "/")
                lines += [f"### {name}: {f}", "", f"![{name} {f}]({rel})", ""]
    lines += ["## Sources", ""] + [f"- `{OUT_DIR[n]}/`: `python experiments/{n}.py`" for n in EXPERIMENTS]
    return "\n".join(lines) + "\n"


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "outputs" / "report"))
    ap.add_argument("--no-run", action="store_true", help="rebuild the page from existing experiment outputs")
    ap.add_argument("--quick", action="store_true", help="run every experiment at its --quick size into --out")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    # the default report reads and writes the committed outputs/<experiment>/ folders; a quick or
    # redirected run keeps its experiments under --out
    base = ROOT / "outputs" if (not a.quick and out.resolve() == (ROOT / "outputs" / "report").resolve()) else out
    secs = {} if a.no_run else run_all(base, a.quick)
    cmd = "python experiments/report.py" + (" " + " ".join(argv) if argv else "")
    page = build_page(base, out, cmd, secs)
    (out / "report.md").write_text(page, encoding="utf-8")
    print(f"[report] wrote {out / 'report.md'}")
    return out / "report.md"


if __name__ == "__main__":
    main()
