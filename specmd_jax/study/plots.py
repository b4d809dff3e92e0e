"""PNG plots of sweep tables (matplotlib, Agg backend; no display needed).

Figures have a bounded size whatever the number of capacities, and are written atomically
(:func:`specmd_jax.core.outputs.atomic_path`); titles are plain text (a ``$`` in a trace path is not
parsed as math)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from specmd_jax.core.outputs import atomic_path

MAX_PANELS = 6  # plot_misses: one bar panel per capacity up to this many, else one line chart


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plain(text: str) -> str:
    """``text`` shown literally: matplotlib reads ``$...$`` as mathtext (and fails on ``\\q``)."""
    return str(text).replace("$", r"\$")


def _save(fig, path: str | Path) -> Path:
    plt = _plt()
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120, format=path.suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
    return path


def plot_hit_rate(res: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Hit rate (solid) and collision rate (dashed) vs cache size, one colour per policy."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    g = res.groupby(["policy", "capacity_fraction"], sort=False)[["hit_rate", "collision_rate"]].mean()
    many = res["capacity_fraction"].nunique() > 30
    for i, p in enumerate(res["policy"].unique()):
        d = g.loc[p].sort_index()
        c = f"C{i % 10}"
        ax.plot(d.index, d["hit_rate"], "-" if many else "o-", color=c, label=f"{_plain(p)} hit rate")
        ax.plot(d.index, d["collision_rate"], "--" if many else "x--", color=c, alpha=0.7,
                label=f"{_plain(p)} collision rate")
    if res["capacity_fraction"].nunique() > 1 and res["capacity_fraction"].min() > 0:
        ax.set_xscale("log")
    ax.set_xlabel("cache capacity (fraction of all expert bytes)")
    ax.set_ylabel("rate (per demand)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(_plain(title) or "hit and collision rate by policy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return _save(fig, path)


def plot_misses(res: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Total misses (grey) and collision misses (red) per policy, one panel per cache size
    (the layout of SpecMD's Fig. 4/8) for up to :data:`MAX_PANELS` sizes; with more, one fixed-size
    chart of both against the cache size (misses solid, collision misses dashed), as the title says."""
    plt = _plt()
    g = res.groupby(["capacity_fraction", "policy"], sort=False)[["misses", "collisions"]].mean()
    fracs = sorted(res["capacity_fraction"].unique())
    pols = list(res["policy"].unique())
    title = _plain(title) or "total vs collision misses"
    if len(fracs) > MAX_PANELS:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for i, p in enumerate(pols):
            d = g.xs(p, level="policy").sort_index()
            ax.plot(d.index, d["misses"], "-", color=f"C{i % 10}", label=f"{_plain(p)} misses")
            ax.plot(d.index, d["collisions"], "--", color=f"C{i % 10}", alpha=0.7, label=f"{_plain(p)} collision misses")
        if fracs[0] > 0:
            ax.set_xscale("log")
        ax.set_xlabel("cache capacity (fraction of all expert bytes)")
        ax.set_ylabel("misses")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        ax.set_title(f"{title}\n(all {len(fracs)} capacities as lines; bar panels need <= {MAX_PANELS})", fontsize=10)
        fig.tight_layout()
        return _save(fig, path)
    fig, axes = plt.subplots(1, len(fracs), figsize=(3.2 * len(fracs) + 1, 3.8), squeeze=False)
    x = np.arange(len(pols))
    for ax, f in zip(axes[0], fracs):
        d = g.loc[f].reindex(pols)
        ax.bar(x, d["misses"], color="0.7", label="misses")
        ax.bar(x, d["collisions"], color="tab:red", label="collision misses")
        ax.set_xticks(x, [_plain(p) for p in pols], rotation=45, fontsize=8)
        ax.set_title(f"{f:.3g} capacity", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("misses")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_curve(res: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Byte-budget hit-rate curve (BigMoeOnEdge's layout): decode-only hit % (solid) and cumulative
    hit % (dotted) against the budget in MiB, one colour per policy (``peer_policy``)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (p, d) in enumerate(res.groupby("peer_policy", sort=False)):
        d = d.sort_values("budget_mib")
        ax.plot(d["budget_mib"], 100 * d["hit_rate_decode"], "o-", color=f"C{i % 10}", label=f"{_plain(p)} decode")
        ax.plot(d["budget_mib"], 100 * d["hit_rate"], ":", color=f"C{i % 10}", alpha=0.7, label=f"{_plain(p)} all")
    ax.set_xlabel("cache budget (MiB)")
    ax.set_ylabel("hit rate (% of lookups)")
    ax.set_ylim(-2, 102)
    ax.set_title(_plain(title) or "hit rate by byte budget")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return _save(fig, path)
