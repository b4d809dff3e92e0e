"""Compare two runs of the benchmarks (before / after a change): run_s ratio per row.

    python experiments/bench_compare.py BEFORE_DIR AFTER_DIR --out outputs/bench/compare.md

Both directories hold ``throughput_cpu.csv`` and/or ``prefetch_cpu.csv`` written by
``bench_throughput.py`` / ``bench_prefetch.py`` with the same arguments. Rows are matched on
their descriptive columns; ``after / before`` of ``run_s`` (1.00: the same; > 1.10 or < 0.90:
outside the ±10 % band, flagged) is written as a Markdown table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

KEYS = {"throughput": ["backend", "engine", "policy", "configs"], "prefetch": ["policy", "engine", "configs"]}


def compare(before: Path, after: Path, name: str) -> pd.DataFrame | None:
    a, b = before / f"{name}_cpu.csv", after / f"{name}_cpu.csv"
    if not (a.exists() and b.exists()):
        return None
    x, y = pd.read_csv(a), pd.read_csv(b)
    keys = [k for k in KEYS[name] if k in x and k in y]
    m = x[keys + ["run_s"]].merge(y[keys + ["run_s"]], on=keys, suffixes=("_before", "_after"))
    m = m[pd.to_numeric(m["run_s_before"], errors="coerce") > 0].copy()
    m["ratio"] = m["run_s_after"].astype(float) / m["run_s_before"].astype(float)
    m["within_10pct"] = m["ratio"].between(0.9, 1.1)
    m.insert(0, "bench", name)
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--title", default="Benchmarks before and after")
    ap.add_argument("--note", action="append", default=[], help="a line for the header (repeatable)")
    a = ap.parse_args()
    frames = [f for f in (compare(a.before, a.after, n) for n in KEYS) if f is not None]
    if not frames:
        ap.error(f"no matching *_cpu.csv in {a.before} and {a.after}")
    df = pd.concat(frames, ignore_index=True)
    lines = [f"# {a.title}", ""] + [f"- {n}" for n in a.note] + [
        f"- rows within ±10 %: {int(df['within_10pct'].sum())} of {len(df)}; median ratio "
        f"{df['ratio'].median():.3f}", ""]
    cols = list(df.columns)
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in df.itertuples(index=False):
        lines.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r) + " |")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines) + "\n")
    df.to_csv(a.out.with_suffix(".csv"), index=False)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
