"""``sj.sweep_prefetch``: the table, its engines, the equivalences with the demand-only API, and
errors; plus a slow smoke run of ``experiments/prefetch_study.py --quick``."""

from __future__ import annotations

import functools
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import specmd_jax as sj
from specmd_jax.core.prefetch import PrefetchConfig
from specmd_jax.core.timing import HARDWARE_PRESETS, VISIT_READING, Hardware

# this module was written for the whole-visit reading; the other readings: tests/test_*readings*.py
sweep_prefetch = functools.partial(sj.sweep_prefetch, reading=VISIT_READING.label)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trace():
    return sj.synthetic.generate("olmoe-1b-7b", num_requests=1, prompt_len=8, gen_len=12, seed=2, pred_noise=1.0)


def test_table_and_engines(trace):
    hws = [HARDWARE_PRESETS["a100-5gbps"], HARDWARE_PRESETS["pcie5-x16"]]
    pf = PrefetchConfig("recorded", "topk")
    a = sweep_prefetch(trace, "ls", fractions=[0.05, 0.25], prefetch=pf, hardware=hws, timing="async", engine="jax")
    auto = sweep_prefetch(trace, "ls", fractions=[0.05, 0.25], prefetch=pf, hardware=hws, timing="async")
    assert set(auto["engine"]) == {"reference-async"}  # 4 configurations: the reference is faster
    shared = ["hits", "late", "misses", "collisions", "evictions", "pf_issued", "pf_wasted", "ttft_ms", "tpot_ms"]
    pd.testing.assert_frame_equal(auto[shared], a[shared], check_dtype=False)
    i = sweep_prefetch(trace, "ls", fractions=[0.05, 0.25], prefetch=pf, hardware=hws, timing="instant")
    b = sweep_prefetch(trace, "belady", fractions=[0.05], prefetch=pf, hardware=hws[:1], timing="instant")
    s = sweep_prefetch(trace, "sb", fractions=[0.05], prefetch=pf, hardware=hws[:1], timing="async")
    assert len(a) == len(i) == 4 and len(b) == len(s) == 1
    assert set(a["engine"]) == {"jax-async"} and set(i["engine"]) == {"jax-instant"}
    assert set(b["engine"]) == {"reference-instant"} and set(s["engine"]) == {"reference-async"}
    for df in (a, i, b, s):
        assert (df["hits"] + df["late"] + df["misses"] == df["demands"]).all()
        for c in ("hit_rate", "late_rate", "collision_rate"):
            assert df[c].between(0, 1).all()
        assert (df["ttft_ms"] > 0).all() and (df["tpot_ms"] > 0).all()
        assert 0 < df["pred_precision"].iloc[0] <= 1
    assert (i["late"] == 0).all() and (a["late"] > 0).any()
    # instant: hardware changes times, not counts
    g = i.groupby("capacity_slots")
    assert (g["misses"].nunique() == 1).all() and (g["tpot_ms"].nunique() == 2).all()


def test_async_engines_agree(trace):
    """An async lru sweep runs on the JAX engine and equals the reference row by row."""
    from specmd_jax.reference.timed import simulate_timed
    hws = [HARDWARE_PRESETS["a100-5gbps"], HARDWARE_PRESETS["edge-unified"]]
    pf = PrefetchConfig("recorded", "percentile")
    df = sweep_prefetch(trace, "lru", capacities=[10, 51], prefetch=pf, hardware=hws, timing="async", engine="jax")
    assert set(df["engine"]) == {"jax-async"} and len(df) == 4
    plan = sj.make_plan(trace, pf)
    for _, r in df.iterrows():
        h = HARDWARE_PRESETS[r["hardware"]]
        ref = simulate_timed(trace, "lru", int(r["capacity_slots"]), plan=plan, hardware=h, reading=VISIT_READING)
        assert [r[k] for k in ("hits", "late", "misses", "collisions", "pf_wasted")] == \
            [ref.totals[k] for k in ("hits", "late", "misses", "collisions", "pf_wasted")]
        assert r["stall_ms"] == pytest.approx(ref.totals["stall_ticks"] * 1e-4)


def test_no_prefetch_matches_demand_only_sweep(trace):
    caps = [10, 51, 256]
    d = sj.sweep(trace, "lru", capacities=caps)
    for timing in ("async", "instant"):
        p = sweep_prefetch(trace, "lru", capacities=caps, timing=timing,
                              hardware=[Hardware(math.inf, 0.0, 100.0, 100.0, 2.0, "free")])
        assert p["hits"].tolist() == d["hits"].tolist() and p["collisions"].tolist() == d["collisions"].tolist()
        assert (p["stall_ms"] == 0).all() and (p["pf_issued"] == 0).all()


def test_errors(trace):
    with pytest.raises(ValueError, match="timing must be"):
        sweep_prefetch(trace, "lru", capacities=[10], timing="later")
    with pytest.raises(ValueError, match="exactly one"):
        sweep_prefetch(trace, "lru")
    with pytest.raises(TypeError, match="prefetch must be"):
        sweep_prefetch(trace, "lru", capacities=[10], prefetch="topk")
    with pytest.raises(ValueError, match="bandwidth_gbps"):
        Hardware(bandwidth_gbps=0.0)


def _quick(script: str, out) -> None:
    """Run ``experiments/<script> --quick --out <out>`` and require success."""
    p = subprocess.run([sys.executable, str(ROOT / "experiments" / script), "--quick", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.slow
def test_prefetch_study_quick(tmp_path):
    _quick("prefetch_study.py", tmp_path)
    res = pd.read_csv(tmp_path / "results.csv")
    rat = pd.read_csv(tmp_path / "collision_ratios.csv")
    # (synthetic: none + 4 plans; qwen3: none + 3 plans) x 2 policies x 2 timings x 3 capacities x 4 hardware
    assert len(res) == (5 + 4) * 2 * 2 * 3 * 4
    assert res["hit_rate"].between(0, 1).all() and (res["hits"] + res["late"] + res["misses"] == res["demands"]).all()
    assert len(rat) == len(res) // 2 and np.isfinite(rat["lru_collisions"]).all()
    assert (tmp_path / "summary.md").read_text().count("|") > 100
    assert all((tmp_path / f).read_bytes()[:4] == b"\x89PNG" for f in
               ("collision_ratio_synthetic-olmoe.png", "collision_ratio_qwen3-real.png", "tpot_5pct_5gbps.png"))


def test_system_presets():
    from specmd_jax.study.systems import SYSTEMS, get_system
    assert set(SYSTEMS) == {"eliseev23", "zhu25", "hobbit24", "mixturecache25", "specmd"}
    assert get_system("specmd").prefetch().selector == "percentile" and get_system("specmd").eviction == "ls"
    assert get_system("mixturecache25").prefetch() is None
    h = get_system("hobbit24")
    assert h.eviction == "lhu" and h.miss_config().policy == "cascade" and h.run_notes() == ()
    assert h.precision(4).bits == (4, 2) and h.precision(4).base_bits == 4
    assert get_system("zhu25").miss_config().policy == "substitute"
    assert get_system("mixturecache25").routing_config().lam == 0.3 and get_system("eliseev23").routing_config().lam == 0
    assert h.with_eviction("ls").eviction == "ls" and h.with_eviction("ls").prefetch() == h.prefetch()
    assert get_system("eliseev23").prefetch("oracle_degraded", recall=0.5).recall == 0.5
    with pytest.raises(ValueError, match="unknown system"):
        get_system("moe-infinity")


@pytest.mark.slow
def test_table2_quick(tmp_path):
    _quick("table2.py", tmp_path)
    res = pd.read_csv(tmp_path / "table2.csv")
    assert len(res) == 2 * 4 * 2 and set(res["eviction"]) >= {"ls", "lru", "sb", "lhu"}
    assert set(res["miss"]) >= {"fetch", "substitute", "cascade(0.2,0.1,0.05)"}
    assert res["proxy_mass_full_precision"].between(0, 1).all()
    assert (res["ttft_ms"] > 0).all() and (tmp_path / "table2.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_fig6_quick(tmp_path):
    _quick("fig6.py", tmp_path)
    res = pd.read_csv(tmp_path / "fig6.csv")
    assert len(res) == 2 * 5 and res["precision"].between(0, 1).all() and res["recall"].between(0, 1).all()
    syn = res[res["trace"].str.startswith("synthetic")].set_index("strategy")
    assert syn.loc["recorded topk x2", "recall"] >= syn.loc["recorded topk x1", "recall"]   # overfetch recalls more
    assert syn.loc["recorded topk x2", "precision"] <= syn.loc["recorded topk x1", "precision"]


def test_several_prefetch_settings_in_one_program(trace):
    """A list of prefetch settings is one more vmapped axis on the JAX engines: each setting's
    rows equal a separate sweep with that setting alone (instant: lru/ls; async: lru)."""
    hws = [HARDWARE_PRESETS["a100-5gbps"], HARDWARE_PRESETS["pcie4-x16"]]
    settings = [None, PrefetchConfig("recorded", "topk"), PrefetchConfig("recorded", "topk", overfetch=2.0),
                PrefetchConfig("oracle_degraded", "all", recall=0.8, precision=0.8, depth=2)]
    for policy, timing in (("ls", "instant"), ("lru", "async")):
        many = sweep_prefetch(trace, policy, capacities=[10, 51, 256], prefetch=settings, hardware=hws,
                                 timing=timing)
        assert len(many) == 4 * 3 * 2
        assert list(many["prefetch"].unique()) == ["none", "recorded topk x1", "recorded topk x2",
                                                   "oracle_degraded r0.8/p0.8 all d2"]
        for k, pf in enumerate(settings):
            one = sweep_prefetch(trace, policy, capacities=[10, 51, 256], prefetch=pf, hardware=hws, timing=timing)
            part = many.iloc[k * 6:(k + 1) * 6].reset_index(drop=True)
            pd.testing.assert_frame_equal(part, one, check_dtype=False)
