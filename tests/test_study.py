"""The SpecMD-study experiments end to end on tiny settings (slow-marked): their tables have the
expected rows and sane metrics (rates in [0, 1], Belady >= all where no visit overflows)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script, out, timeout=900):
    p = subprocess.run([sys.executable, str(ROOT / "experiments" / script), "--quick", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.slow
def test_calibrate_experiment_quick(tmp_path):
    _run("calibrate.py", tmp_path)
    df = pd.read_csv(tmp_path / "calibration.csv")
    assert set(df["model"]) == {"olmoe-1b-7b", "mixtral-8x7b", "qwen3-30b-a3b"}
    fit = df[df["statistic"] == "fit_score"].set_index("model")
    assert (fit["calibrated"] < fit["default"]).all()
    assert (tmp_path / "marginals.png").stat().st_size > 0 and (tmp_path / "calibrated.json").exists()


@pytest.mark.slow
def test_collisions_experiment_quick(tmp_path):
    """experiments/collisions.py on tiny traces: the expected rows, sane rates, Belady >= every
    policy's hit rate wherever no visit overflows, and Least-Stale = LRU in demand-only replay."""
    _run("collisions.py", tmp_path)
    df = pd.read_csv(tmp_path / "collisions.csv")
    assert df.groupby("trace").size().eq(7 * 3).all() and df["trace"].nunique() == 7
    for c in ("hit_rate", "miss_rate", "collision_rate"):
        assert df[c].between(0, 1).all()
    assert (df["collisions"] <= df["misses"]).all()
    piv = df.pivot_table(index=["trace", "capacity_fraction"], columns="policy", values="hits")
    ok = df.groupby(["trace", "capacity_fraction"])["bypass"].max() == 0      # no visit overflowed
    assert (piv[ok.reindex(piv.index).to_numpy()].max(axis=1) <= piv[ok.reindex(piv.index).to_numpy()]["belady"]).all()
    assert (piv["ls"] == piv["lru"]).all()
    mrc = pd.read_csv(tmp_path / "mrc.csv")
    assert mrc["hit_rate"].between(0, 1).all() and set(mrc["policy"]) == set(df["policy"])
    pf = pd.read_csv(tmp_path / "with_prefetch_summary.csv")
    assert len(pf) == 2 * 2 * 3 and pf["ls_collision_rate"].between(0, 1).all()
    for f in ("collisions.md", "collisions.png", "per_layer.png", "mrc.png"):
        assert (tmp_path / f).stat().st_size > 0


@pytest.mark.slow
def test_tune_score_experiment_quick(tmp_path):
    """experiments/tune_score.py on tiny traces: a reloadable policy, one verdict row per held-out
    trace x capacity, sane rates, Belady >= every online rule (no overflow at these sizes), and the
    fixed rules' presets equal to the demand-only engine's own replay."""
    import numpy as np
    import specmd_jax as sj
    from specmd_jax.study.calibrate import calibrated_knobs
    from specmd_jax.core.score import ScorePolicy
    _run("tune_score.py", tmp_path)
    pol = ScorePolicy.load(tmp_path / "learned.json")
    assert len(pol.weights) == 9 and pol.meta["val_miss_rate"] > 0
    assert pol.weights[7:] == (0.0, 0.0)  # pf, level: 0 in the demand-only relaxation, never moved
    ev = pd.read_csv(tmp_path / "eval.csv")
    vd = pd.read_csv(tmp_path / "verdict.csv")
    assert len(vd) == ev["trace"].nunique() * 3 and set(vd["tuned_vs_ls"]) <= {"better", "equal", "worse"}
    assert ev["hit_rate"].between(0, 1).all() and ev["collision_rate"].between(0, 1).all()
    piv = ev.pivot_table(index=["trace", "capacity_fraction"], columns="policy", values="hits")
    assert (piv.drop(columns="belady").max(axis=1) <= piv["belady"]).all()
    t = sj.synthetic.generate("olmoe-1b-7b", seed=10, num_requests=1, prompt_len=8, gen_len=16,
                              **calibrated_knobs("olmoe-1b-7b"))
    ref = sj.sweep(t, "lru", fractions=[0.01, 0.05, 0.25])
    got = ev[(ev["trace"] == "olmoe-cal-s10") & (ev["policy"] == "lru")].sort_values("capacity_fraction")
    assert got["misses"].tolist() == ref["misses"].tolist()
    assert np.isfinite(pd.read_csv(tmp_path / "sensitivities.csv")["dtpot_dcapacity_s_per_gib"]).all()
    for f in ("summary.md", "learning_curve.png", "weights.png", "eval.png", "history.csv"):
        assert (tmp_path / f).stat().st_size > 0


def test_report_page_from_the_committed_outputs(tmp_path):
    """The report page built from the committed experiment tables: every quoted paper number has
    a row with ours, a ratio and a note, and the figures resolve."""
    sys.path.insert(0, str(ROOT / "experiments"))
    import report
    page = report.build_page(ROOT / "outputs", tmp_path, "test", {})
    lines = page.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("| paper claim"))
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
    table = lines[start + 2:end]
    claims = {ln.split(" | ")[0][2:] for ln in table}
    assert {"LS collision rate, 5 %", "LS vs LRU collision misses, 5 %", "LS vs LRU collision misses, 1 %",
            "Table 2: TTFT cut by LS, Eliseev & Mazur '23", "Fig. 6: p80 vs top-k x1, stall"} <= claims
    for ln in table:
        cells = ln.strip("|").split(" | ")
        assert len(cells) == 6 and cells[3].strip() not in ("", "-") and cells[5].strip()
    assert "qwen3-real" in page and "olmoe-1b-7b (calibrated)" in page and "not available" not in page
    for rel in (ln.split("](")[1].rstrip(")") for ln in page.splitlines() if ln.startswith("![")):
        assert (tmp_path / rel).resolve().is_file(), rel


@pytest.mark.slow
def test_report_quick_runs_every_experiment(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "experiments" / "report.py"), "--quick", "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    page = (tmp_path / "report.md").read_text()
    assert "not available" not in page and page.count("\n| ") > 10
    for d in ("calibration", "collisions", "fig6", "table2", "table1", "prefetch_study", "tune_score"):
        assert any((tmp_path / d).iterdir()), d


@pytest.mark.slow
def test_readings_experiment_quick(tmp_path):
    """experiments/readings.py on tiny traces: every reading's collisions and re-run tables, and a
    paper table with one column per reading and a verdict per claim."""
    _run("readings.py", tmp_path, timeout=1800)
    paper = pd.read_csv(tmp_path / "paper.csv")
    from specmd_jax.core.timing import READINGS
    assert all(r.label in paper.columns for r in READINGS) and len(paper) >= 15
    coll = pd.read_csv(tmp_path / "collisions.csv")
    assert coll["reading"].nunique() == 6 and coll["collision_rate"].between(0, 1).all()
    assert (coll["below_token_cycle"] == (coll["capacity_slots"] < coll["token_cycle_slots"])).all()
    for r in READINGS:
        assert (tmp_path / r.slug / "table2" / "table2.csv").exists()
    text = (tmp_path / "readings.md").read_text()
    assert "What each reading reproduces" in text and "The LRU cliff" in text
