"""PNG plots of sweep tables (matplotlib, Agg backend; no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_hit_rate(res: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Hit rate (solid) and collision rate (dashed) vs cache size, one colour per policy."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    g = res.groupby(["policy", "capacity_fraction"], sort=False)[["hit_rate", "collision_rate"]].mean()
    for i, p in enumerate(res["policy"].unique()):
        d = g.loc[p].sort_index()
        c = f"C{i % 10}"
        ax.plot(d.index, d["hit_rate"], "o-", color=c, label=f"{p} hit rate")
        ax.plot(d.index, d["collision_rate"], "x--", color=c, alpha=0.7, label=f"{p} collision rate")
    if res["capacity_fraction"].nunique() > 1 and res["capacity_fraction"].min() > 0:
        ax.set_xscale("log")
    ax.set_xlabel("cache capacity (fraction of all expert bytes)")
    ax.set_ylabel("rate (per demand)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title or "hit and collision rate by policy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_misses(res: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Total misses (grey) and collision misses (red) per policy, one panel per cache size
    (the layout of SpecMD's Fig. 4/8)."""
    plt = _plt()
    g = res.groupby(["capacity_fraction", "policy"], sort=False)[["misses", "collisions"]].mean()
    fracs = sorted(res["capacity_fraction"].unique())
    pols = list(res["policy"].unique())
    fig, axes = plt.subplots(1, len(fracs), figsize=(3.2 * len(fracs) + 1, 3.8), squeeze=False)
    x = np.arange(len(pols))
    for ax, f in zip(axes[0], fracs):
        d = g.loc[f].reindex(pols)
        ax.bar(x, d["misses"], color="0.7", label="misses")
        ax.bar(x, d["collisions"], color="tab:red", label="collision misses")
        ax.set_xticks(x, pols, rotation=45, fontsize=8)
        ax.set_title(f"{f:.3g} capacity", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("misses")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title or "total vs collision misses", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
