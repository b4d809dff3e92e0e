"""SpecMD Figs. 4/8, 5/9 and miss-ratio curves: collision misses by eviction policy, capacity and
model, per layer, and hit rate vs capacity with Belady as the bound.

    python experiments/collisions.py                  # ~5 min on 2 cores (274 s); writes outputs/collisions/
    python experiments/collisions.py --quick --out /tmp/coll

Traces: one synthetic trace per model preset (the calibrated knobs where a fit exists:
OLMoE-1B-7B, Mixtral-8x7B, Qwen3-30B-A3B; the generator's defaults for Qwen1.5-MoE and
Phi-3.5-MoE, labelled so) and the real Qwen3 and Mixtral traces (from ``$SPECMD_TRACES`` or
``../shared/traces``). Demand-only replay (pinned visits, one global cache), every policy vmapped
over the capacities in one program (``sj.sweep``).

Writes ``collisions.csv`` (one row per trace x policy x capacity: misses, collision misses, rates),
``per_layer.csv``, ``mrc.csv``, ``with_prefetch.csv`` (LRU / Least-Stale / FIFO with next-layer
prefetch on the calibrated OLMoE and real Qwen3 traces, where Least-Stale differs from LRU),
``collisions.md`` (collision rates, Least-Stale's reduction vs
LRU and SB beside the paper's numbers), ``collisions.png`` (total vs collision misses, Fig. 4/8),
``per_layer.png`` (Fig. 5/9) and ``mrc.png``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import specmd_jax as sj  # noqa: E402
from specmd_jax.study.calibrate import CALIBRATED, calibrated_knobs  # noqa: E402

MODELS = ("olmoe-1b-7b", "mixtral-8x7b", "qwen1.5-moe-a2.7b", "phi-3.5-moe", "qwen3-30b-a3b")
REAL = {"qwen3-real": "bigmoeonedge-route-trace/qwen.route.csv",
        "mixtral-real": "mixtral8x7b-speculative-moe/routing_data_collected/gsm8k_2_routing.jsonl"}
FIG4 = ("fld", "sb", "lru", "ls")                       # the paper's Fig. 4 policies
POLICIES = FIG4 + ("lfu", "fifo", "belady")
FRACTIONS = (0.01, 0.05, 0.25)
MRC_FRACTIONS = tuple(np.round(np.geomspace(0.005, 0.5, 16), 4))
PAPER = {  # SpecMD §5.2 / Fig. 4 and 8 captions / abstract
    "ls_collision_rate_5pct": "1.6-1.9 %", "lru_collision_rate_5pct": "4.5-12.6 %",
    "sb_collision_rate_5pct": "42.6-60.9 %", "ls_vs_lru_5pct": "2.6-8.6x", "ls_vs_sb_5pct": "58-91x",
    "ls_vs_lru_1pct": "up to 85x", "ls_vs_baselines_all": "10-34x (Fig. 8 caption)",
}


def traces_dir() -> Path:
    return Path(os.environ.get("SPECMD_TRACES", ROOT.parent / "shared" / "traces"))


def build_traces(quick: bool) -> dict:
    """name -> (trace, kind)."""
    size = dict(num_requests=1, prompt_len=8, gen_len=12) if quick else dict(num_requests=2, prompt_len=32, gen_len=64)
    out = {}
    for m in MODELS:
        if m in CALIBRATED:
            out[f"{m} (calibrated)"] = (sj.synthetic.generate(m, seed=0, pred_noise=1.0, **size,
                                                              **calibrated_knobs(m)), "synthetic, calibrated")
        else:
            out[f"{m} (default knobs)"] = (sj.synthetic.generate(m, seed=0, **size), "synthetic, default knobs")
    for name, rel in REAL.items():
        t = sj.load_trace(str(traces_dir() / rel))
        out[name] = (t.slice_passes(0, 24 if quick else t.num_passes), "real")
    return out


PREFETCH_TRACES = {"olmoe-1b-7b (calibrated)": "recorded", "qwen3-real": "reuse"}


def with_prefetch(traces: dict) -> pd.DataFrame:
    """LRU vs Least-Stale (and FIFO) with next-layer top-k prefetch, asynchronous copies on the
    paper's A100 link and on a free link (copies land at once: the policy effect alone), where
    the paper locates Least-Stale's edge (in demand-only replay it decides as LRU)."""
    from specmd_jax.core.prefetch import PrefetchConfig
    from specmd_jax.core.timing import HARDWARE_PRESETS, Hardware
    hws = [HARDWARE_PRESETS["a100-5gbps"], Hardware(math.inf, 0.0, 150.0, 150.0, 5.0, "free-link")]
    rows = []
    for name, pred in PREFETCH_TRACES.items():
        t = traces[name][0]
        for p in ("lru", "ls", "fifo"):
            df = sj.sweep_prefetch(t, p, fractions=list(FRACTIONS), prefetch=PrefetchConfig(pred, "topk"),
                                   hardware=hws, timing="async")
            df["trace"] = name
            rows.append(df[["trace", "policy", "prefetch", "hardware", "capacity_fraction", "below_token_cycle", "engine", "demands",
                            "hits", "late", "misses", "collisions", "hit_rate", "collision_rate", "pf_wasted",
                            "ttft_ms", "tpot_ms"]])
            print(f"  with prefetch: {name} {p} ({df['engine'].iloc[0]})", flush=True)
    return pd.concat(rows, ignore_index=True)


def prefetch_summary(pf: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (tr, hw, fr), g in pf.groupby(["trace", "hardware", "capacity_fraction"], sort=False):
        c = g.set_index("policy")
        rows.append({"trace": tr, "hardware": hw, "capacity_fraction": fr,
                     "below_token_cycle": bool(c["below_token_cycle"].iloc[0]),
                     "lru_collision_rate": float(c.loc["lru", "collision_rate"]),
                     "ls_collision_rate": float(c.loc["ls", "collision_rate"]),
                     "fifo_collision_rate": float(c.loc["fifo", "collision_rate"]),
                     "ls_vs_lru": ratio(float(c.loc["lru", "collisions"]), float(c.loc["ls", "collisions"])),
                     "lru_hit_rate": float(c.loc["lru", "hit_rate"]), "ls_hit_rate": float(c.loc["ls", "hit_rate"]),
                     "ttft_change_pct": 100.0 * (float(c.loc["ls", "ttft_ms"]) / float(c.loc["lru", "ttft_ms"]) - 1.0)})
    return pd.DataFrame(rows)


def ratio(a: float, b: float) -> float:
    """a / b, inf when only b is 0, NaN when both are."""
    if b == 0:
        return float("nan") if a == 0 else float("inf")
    return a / b


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per trace and capacity: collision rates of LS, LRU, SB and Least-Stale's reductions."""
    rows = []
    for (tr, fr), g in df.groupby(["trace", "capacity_fraction"], sort=False):
        c = g.set_index("policy")
        base = {p: float(c.loc[p, "collisions"]) for p in POLICIES if p in c.index}
        others = [base[p] for p in ("lru", "lfu", "fifo", "fld", "sb") if p in base]
        rows.append({"trace": tr, "capacity_fraction": fr, "capacity_slots": int(c["capacity_slots"].iloc[0]),
                     "below_token_cycle": bool(c["below_token_cycle"].iloc[0]),
                     **{f"{p}_collision_rate": float(c.loc[p, "collision_rate"]) for p in FIG4 + ("belady",)},
                     "ls_vs_lru": ratio(base["lru"], base["ls"]), "ls_vs_sb": ratio(base["sb"], base["ls"]),
                     "ls_vs_baselines_mean": ratio(float(np.mean(others)), base["ls"]),
                     "ls_hit_rate": float(c.loc["ls", "hit_rate"]), "lru_hit_rate": float(c.loc["lru", "hit_rate"]),
                     "belady_hit_rate": float(c.loc["belady", "hit_rate"])})
    return pd.DataFrame(rows)


def plots(df: pd.DataFrame, per: pd.DataFrame, mrc: pd.DataFrame, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    def grid(rows, draw, ylabel, height, name):
        """One panel per (trace, capacity): ``draw(ax, trace, fraction)``, titled and labelled."""
        fig, axes = plt.subplots(len(rows), len(FRACTIONS), figsize=(4.2 * len(FRACTIONS), height * len(rows)),
                                 squeeze=False)
        for i, tr in enumerate(rows):
            for j, fr in enumerate(FRACTIONS):
                ax = axes[i][j]
                draw(ax, tr, fr)
                ax.set_title(f"{tr}, {fr:.0%}", fontsize=8)
                if j == 0:
                    ax.set_ylabel(ylabel)
                if i == 0 and j == 0:
                    ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)

    def bars(ax, tr, fr):
        g = df[(df["trace"] == tr) & np.isclose(df["capacity_fraction"], fr)].set_index("policy").loc[list(POLICIES)]
        x = np.arange(len(POLICIES))
        ax.bar(x, g["misses"] / g["demands"], color="0.7", label="misses")
        ax.bar(x, g["collisions"] / g["demands"], color="C3", label="collision misses")
        ax.set_xticks(x, POLICIES, fontsize=7)
        ax.set_ylim(0, 1)

    def layers(ax, tr, fr):
        for p in FIG4:
            g = per[(per["trace"] == tr) & (per["policy"] == p) & np.isclose(per["capacity_fraction"], fr)]
            ax.plot(g["layer"], g["collision_rate"], "o-", ms=3, label=p)
        ax.set_xlabel("layer")

    names = list(dict.fromkeys(df["trace"]))
    grid(names, bars, "per demand", 2.4, "collisions.png")
    grid([n for n in names if n.startswith("olmoe") or n.endswith("-real")], layers, "collision rate", 2.6,
         "per_layer.png")
    mnames = list(dict.fromkeys(mrc["trace"]))
    fig, axes = plt.subplots(1, len(mnames), figsize=(4.2 * len(mnames), 3.6), squeeze=False)
    for j, tr in enumerate(mnames):
        ax = axes[0][j]
        for p in POLICIES:
            g = mrc[(mrc["trace"] == tr) & (mrc["policy"] == p)]
            ax.plot(g["capacity_fraction"], g["hit_rate"], "k--" if p == "belady" else "-", label=p)
        ax.set_xscale("log")
        ax.set_title(tr, fontsize=9)
        ax.set_xlabel("capacity (fraction of all experts)")
        ax.set_ylabel("hit rate")
        if j == 0:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "mrc.png", dpi=100)
    plt.close(fig)


def markdown(df: pd.DataFrame, summ: pd.DataFrame, psumm: pd.DataFrame, cmd: str, secs: float) -> str:
    lines = ["# Collision misses by eviction policy (SpecMD Figs. 4/8, 5/9)", "",
             f"- command: `{cmd}` ({secs:.0f} s)",
             "- demand-only replay, pinned visits, one global cache; capacities as fractions of all experts "
             "(floor(f x L x E) slots); collision miss = a miss on an expert evicted earlier in the same pass; "
             "rates per demand",
             "- paper (5 %): LS " + PAPER["ls_collision_rate_5pct"] + ", LRU " + PAPER["lru_collision_rate_5pct"]
             + ", SB " + PAPER["sb_collision_rate_5pct"] + " collision rate; LS vs LRU " + PAPER["ls_vs_lru_5pct"]
             + ", vs SB " + PAPER["ls_vs_sb_5pct"] + "; 1 %: " + PAPER["ls_vs_lru_1pct"] + " vs LRU",
             "- `ls_vs_lru` = LRU collision misses / LS collision misses (inf: LS has none); "
             "`ls_vs_baselines_mean` uses the mean over lru, lfu, fifo, fld, sb",
             "- capacity marked **below T**: smaller than one token cycle (T = L x top-k slots; `sj.token_cycle`): "
             "LRU's recency order is then the layer cycle and its decode hit rate collapses to about 0 (a cliff, "
             "not a policy result); `below_token_cycle` in the CSVs", "",
             "| trace | capacity | LS | LRU | SB | FLD | Belady | LS vs LRU | LS vs SB | LS vs baselines | hit LS | hit LRU | hit Belady |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in summ.iterrows():
        lines.append(f"| {r['trace']} | {r['capacity_fraction']:.0%}{' (below T)' if r['below_token_cycle'] else ''} | {r['ls_collision_rate']:.2%} | "
                     f"{r['lru_collision_rate']:.2%} | {r['sb_collision_rate']:.2%} | {r['fld_collision_rate']:.2%} | "
                     f"{r['belady_collision_rate']:.2%} | {r['ls_vs_lru']:.1f}x | {r['ls_vs_sb']:.1f}x | "
                     f"{r['ls_vs_baselines_mean']:.1f}x | {r['ls_hit_rate']:.3f} | {r['lru_hit_rate']:.3f} | "
                     f"{r['belady_hit_rate']:.3f} |")
    lines += ["", "In demand-only replay Least-Stale decides exactly as LRU (a demanded expert's key dominates every "
              "resident's; `specmd_jax/kernels/demand.py`), so `LS vs LRU` is 1.0 by construction there: its edge needs "
              "prefetching, below.", "",
              "## With next-layer prefetch (top-k x1.0)", "",
              "Asynchronous copies (`a100-5gbps`: 5 GB/s FIFO copy engine; `free-link`: copies land at once, the "
              "policy effect alone). Predictor: recorded predictions (synthetic) or previous-pass reuse (Qwen3, "
              "which records none). `ttft_change` = LS vs LRU TTFT.", "",
              "| trace | hardware | capacity | LS | LRU | FIFO | LS vs LRU | hit LS | hit LRU | TTFT change |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in psumm.iterrows():
        lines.append(f"| {r['trace']} | {r['hardware']} | {r['capacity_fraction']:.0%}{' (below T)' if r['below_token_cycle'] else ''} | {r['ls_collision_rate']:.2%} | "
                     f"{r['lru_collision_rate']:.2%} | {r['fifo_collision_rate']:.2%} | {r['ls_vs_lru']:.2f}x | "
                     f"{r['ls_hit_rate']:.3f} | {r['lru_hit_rate']:.3f} | {r['ttft_change_pct']:+.1f} % |")
    lines += ["", "![collisions](collisions.png)", "", "![per layer](per_layer.png)", "", "![MRC](mrc.png)", ""]
    return "\n".join(lines)


def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "outputs" / "collisions"))
    ap.add_argument("--quick", action="store_true", help="small traces (a smoke run)")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    traces = build_traces(a.quick)
    rows, per_rows, mrc_rows = [], [], []
    for name, (t, kind) in traces.items():
        print(f"{name}: {t.describe()}", flush=True)
        with_mrc = name.startswith(("olmoe", "mixtral")) or kind == "real"
        fr = list(FRACTIONS) + (list(MRC_FRACTIONS) if with_mrc else [])
        for p in POLICIES:
            full = sj.sweep(t, p, fractions=fr)       # one vmapped program for every capacity
            per_all = full.attrs["per_layer"]
            full.attrs = {}
            full["trace"] = name
            full.insert(0, "kind", kind)
            head = np.arange(len(full)) < len(FRACTIONS)
            rows.append(full[head])
            pl = per_all[per_all["config"] < len(FRACTIONS)].copy()
            pl["capacity_fraction"] = full["capacity_fraction"].to_numpy()[pl["config"].to_numpy()]
            pl["trace"], pl["policy"] = name, p
            per_rows.append(pl)
            if with_mrc:
                mrc_rows.append(full[~head][["trace", "policy", "capacity_fraction", "capacity_slots", "hit_rate",
                                             "collision_rate"]])
        print(f"  {len(POLICIES)} policies done ({time.perf_counter() - t0:.0f} s)", flush=True)
    df = pd.concat(rows, ignore_index=True)
    per = pd.concat(per_rows, ignore_index=True)
    mrc = pd.concat(mrc_rows, ignore_index=True)
    df.to_csv(out / "collisions.csv", index=False)
    per.to_csv(out / "per_layer.csv", index=False)
    mrc.to_csv(out / "mrc.csv", index=False)
    summ = summary(df)
    summ.to_csv(out / "summary.csv", index=False)
    pf = with_prefetch(traces)
    pf.to_csv(out / "with_prefetch.csv", index=False)
    psumm = prefetch_summary(pf)
    psumm.to_csv(out / "with_prefetch_summary.csv", index=False)
    plots(df, per, mrc, out)
    cmd = "python experiments/collisions.py" + (" " + " ".join(argv) if argv else "")
    (out / "collisions.md").write_text(markdown(df, summ, psumm, cmd, time.perf_counter() - t0), encoding="utf-8")
    with pd.option_context("display.width", 200):
        print(summ[["trace", "capacity_fraction", "ls_collision_rate", "lru_collision_rate", "sb_collision_rate",
                    "ls_vs_lru", "ls_vs_sb"]].to_string(index=False, float_format=lambda x: f"{x:.4f}"))
        print(psumm.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    print(f"wrote {out}/collisions.md, collisions.csv, per_layer.csv, mrc.csv, summary.csv, with_prefetch.csv, "
          f"with_prefetch_summary.csv, collisions.png, per_layer.png, mrc.png ({time.perf_counter() - t0:.0f} s)")
    return df


if __name__ == "__main__":
    main()
