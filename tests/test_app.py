"""The hydra entry point (experiments/run.py) and its cfg -> library conversion (app_config).

Unit tests of :mod:`specmd_jax.config.build` (plain dicts, every error path) plus three
subprocess runs of the entry point on tiny traces with ``unroll_layers=false`` (fast compiles):
a single run, a ``-m`` multirun, and the real Qwen3 trace.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from specmd_jax.core import synthetic
from specmd_jax.config.build import ConfigError, build_trace, resolve_capacities, resolve_policies
from specmd_jax.core.trace import TraceError

ROOT = Path(__file__).resolve().parents[1]
RUN = str(ROOT / "experiments" / "run.py")
TINY = ["trace.num_requests=1", "trace.prompt_len=8", "trace.gen_len=8", "progress=false",
        "unroll_layers=false"]


@pytest.fixture(scope="module")
def tiny():
    return synthetic.generate("olmoe-1b-7b", num_requests=1, prompt_len=4, gen_len=4)


# ----------------------------------------------------------------------------- build_trace


def test_build_trace_synthetic():
    t = build_trace(dict(kind="synthetic", model="mixtral-8x7b", num_requests=1, prompt_len=4,
                         gen_len=3, skew=1.0, reuse=0.5, cross_layer=0.3, seed=0))
    assert t.shape.name == "mixtral-8x7b" and t.num_passes == 4


def test_build_trace_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown trace.kind 'csv'.*synthetic, file"):
        build_trace(dict(kind="csv", path="x.csv"))
    with pytest.raises(ConfigError, match="unknown trace.kind None"):
        build_trace(dict(model="olmoe-1b-7b"))
    with pytest.raises(ConfigError, match="config group 'trace' is missing"):
        build_trace(None)
    for missing in (dict(kind="file"), dict(kind="file", path=None), dict(kind="file", path="???")):
        with pytest.raises(ConfigError, match=r"trace\.path is required"):
            build_trace(missing)
    with pytest.raises(ConfigError, match=r"trace\.bogus"):
        build_trace(dict(kind="synthetic", bogus=1))
    with pytest.raises(ConfigError, match=r"trace\.model"):
        build_trace(dict(kind="file", path="a.csv", model="x"))
    with pytest.raises(ConfigError, match=r"trace \(synthetic\): skew must be"):
        build_trace(dict(kind="synthetic", skew=-1.0))
    with pytest.raises(ConfigError, match="unknown model preset 'nope'"):
        build_trace(dict(kind="synthetic", model="nope"))


def test_build_trace_file_errors_surface_trace_error(tmp_path):
    bad = tmp_path / "bad.route.csv"
    bad.write_text("hello\n")
    with pytest.raises(TraceError, match=r"bad\.route\.csv:1: field 'version'.*missing version line"):
        build_trace(dict(kind="file", path=str(bad)))
    with pytest.raises(TraceError, match=r"no such file.*trace\.path="):
        build_trace(dict(kind="file", path=str(tmp_path / "absent.csv")))


# ----------------------------------------------------------------------- resolve_capacities


def test_resolve_capacities(tiny):
    assert resolve_capacities(tiny, dict(fractions=[0.01, 0.25], capacities=None)) == {"fractions": [0.01, 0.25]}
    assert resolve_capacities(tiny, dict(capacities=[16, 64], fractions=None)) == {"capacities": [16, 64]}
    assert resolve_capacities(tiny, dict(capacities=8)) == {"capacities": [8]}
    g = resolve_capacities(tiny, dict(grid=dict(start=0.005, stop=0.5, num=64), fractions=None, capacities=None))
    assert len(g["fractions"]) == 64 and np.isclose(g["fractions"][0], 0.005) and np.isclose(g["fractions"][-1], 0.5)


@pytest.mark.parametrize("cfg, msg", [
    (dict(fractions=None, capacities=None), "exactly one of.*none is set"),
    (dict(), "exactly one of.*none is set"),
    (dict(fractions=[0.1], capacities=[4]), r"exactly one of.*sweep\.capacities and sweep\.fractions are set"),
    (dict(grid=dict(start=0, stop=1, num=2), fractions=[0.1]), "exactly one of"),
    (dict(fractions=[]), r"sweep\.fractions is empty"),
    (dict(fractions=[0.1, 1.5]), r"sweep\.fractions: capacity fractions\[1\] must be in \[0, 1\], got 1.5"),
    (dict(fractions=["a"]), r"sweep\.fractions"),
    (dict(capacities=[4, -1]), r"sweep\.capacities must be integers >= 0"),
    (dict(capacities=[2.5]), r"sweep\.capacities must be integers"),
    (dict(grid=dict(start=0.1, stop=0.2)), r"sweep\.grid must be \{start, stop, num\}"),
    (dict(grid=dict(start=0.1, stop=0.2, num=0)), r"sweep\.grid\.num must be an integer >= 1"),
    (dict(grid=dict(start=0.1, stop=2.0, num=3)), r"sweep\.grid: capacity fractions\[1\] must be in \[0, 1\], got 1.05"),
    (dict(fractions=[0.1], step=2), r"unknown key\(s\) sweep\.step"),
    (None, "config group 'sweep' is missing"),
])
def test_resolve_capacities_errors(tiny, cfg, msg):
    with pytest.raises(ConfigError, match=msg):
        resolve_capacities(tiny, cfg)


def test_resolve_policies():
    assert resolve_policies(["lru", "LS", "lru"]) == ["lru", "ls"]
    assert resolve_policies(["lru", "fifo"], policy="belady") == ["belady"]  # shortcut wins
    assert resolve_policies("fifo") == ["fifo"]
    with pytest.raises(ConfigError, match="unknown policy 'lur'; valid: .*lru"):
        resolve_policies(["lur"])
    with pytest.raises(ConfigError, match="policies is empty"):
        resolve_policies([])
    with pytest.raises(ConfigError, match="mode must be one of pinned, sequential"):
        resolve_policies(["lru"], mode="parallel")


# --------------------------------------------------------------------------- entry point


def _run(args, env=None, timeout=120):
    p = subprocess.run([sys.executable, RUN, *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=timeout, env={**os.environ, **(env or {})})
    assert p.returncode == 0, f"run.py {' '.join(args)} failed (rc={p.returncode}):\n{p.stdout}\n{p.stderr}"
    return p.stdout


def test_run_single(tmp_path):
    out = _run([*TINY, "policies=[lru,ls]", f"hydra.run.dir={tmp_path}"])
    df = pd.read_csv(tmp_path / "results.csv")
    assert len(df) == 6 and sorted(df["policy"].unique()) == ["lru", "ls"]
    assert sorted(df["capacity_fraction"].unique()) == [0.01, 0.05, 0.25]
    assert df["hit_rate"].between(0, 1).all()
    assert (df["hits"] + df["misses"] == df["demands"]).all()
    pl = pd.read_csv(tmp_path / "per_layer.csv")
    assert len(pl) == 6 * 16 and set(pl["policy"]) == {"lru", "ls"}
    # per-layer counters add up to the totals of each (policy, config)
    by_layer = pl.groupby(["policy", "capacity_slots"])[["demands", "hits"]].sum()
    totals = df.set_index(["policy", "capacity_slots"])[["demands", "hits"]]
    pd.testing.assert_frame_equal(by_layer.sort_index(), totals.sort_index(), check_dtype=False)
    assert "olmoe-1b-7b" in (tmp_path / "trace.txt").read_text()
    assert "best policy per capacity" in out and "results.csv" in out
    for png in ("hit_rate.png", "misses.png"):  # plots are real PNG files
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_multirun_policy_axis(tmp_path):
    _run(["-m", "policy=lru,fifo", *TINY, f"hydra.sweep.dir={tmp_path}"])
    files = sorted(tmp_path.glob("*/results.csv"))
    assert len(files) == 2, f"expected 2 results.csv under {tmp_path}, found {files}"
    assert sorted(pd.read_csv(f)["policy"].iloc[0] for f in files) == ["fifo", "lru"]


def test_multirun_joblib_launcher(tmp_path):
    """The same multirun on the joblib launcher (jobs in parallel processes)."""
    _run(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "policy=lru,ls", *TINY,
          f"hydra.sweep.dir={tmp_path}"])
    files = sorted(tmp_path.glob("*/results.csv"))
    assert sorted(pd.read_csv(f)["policy"].iloc[0] for f in files) == ["lru", "ls"]


def test_run_engine_choice(tmp_path):
    """engine=scan and the default (auto: stack path for lru) write the same table; a bad
    engine name fails at startup with the valid names."""
    _run([*TINY, "policies=[lru,fifo]", "engine=scan", f"hydra.run.dir={tmp_path / 'scan'}"])
    _run([*TINY, "policies=[lru,fifo]", f"hydra.run.dir={tmp_path / 'auto'}"])
    a, b = (pd.read_csv(tmp_path / d / "results.csv") for d in ("scan", "auto"))
    pd.testing.assert_frame_equal(a.drop(columns="engine"), b.drop(columns="engine"))
    assert set(a["engine"]) == {"jax-scan"}                      # the engine column names the path
    assert set(b.loc[b["policy"] == "fifo", "engine"]) == {"jax-scan"} and "jax-stack" in set(b["engine"])
    p = subprocess.run([sys.executable, RUN, *TINY, "engine=fast", f"hydra.run.dir={tmp_path / 'bad'}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "Invalid value 'fast', expected one of [auto, scan, stack]" in p.stderr + p.stdout


def test_run_real_qwen3(tmp_path, traces_dir):
    # traces_dir (conftest): $SPECMD_TRACES or ../shared/traces; a clear failure when missing.
    _run(["trace=qwen3_real", "sweep=slots", "policies=[lru]", "progress=false", "unroll_layers=false",
          f"hydra.run.dir={tmp_path}"], env={"SPECMD_TRACES": str(traces_dir)})
    df = pd.read_csv(tmp_path / "results.csv")
    assert df["capacity_slots"].tolist() == [16, 64, 256]
    assert df["model"].iloc[0].lower().startswith("qwen3")
    assert df["hit_rate"].between(0, 1).all()
    assert "top_k K=6" in (tmp_path / "trace.txt").read_text()  # reader notes are kept


def test_run_learned_score_policy(tmp_path):
    """policies=[lru,score] with a saved ScorePolicy: the LRU-like score replays exactly as LRU;
    a missing or malformed policy file is a startup error naming score_policy."""
    from specmd_jax.core.score import ScorePolicy
    f = ScorePolicy("lru-like", (-1.0,) + (0.0,) * 8).save(tmp_path / "p.json")
    _run([*TINY, "policies=[lru,score]", f"score_policy={f}", "score_sensitivity=a100-5gbps",
          f"hydra.run.dir={tmp_path / 'ok'}"])
    df = pd.read_csv(tmp_path / "ok" / "results.csv")
    assert df.loc[df["policy"] == "score:lru-like", "dtpot_dbandwidth_s_per_gbps"].lt(0).all()
    assert list(df["policy"].unique()) == ["lru", "score:lru-like"]
    a, b = (df[df["policy"] == p].sort_values("capacity_slots") for p in ("lru", "score:lru-like"))
    assert a["misses"].tolist() == b["misses"].tolist() and a["collisions"].tolist() == b["collisions"].tolist()
    for args, msg in ((["policies=[score]"], "policy 'score' needs score_policy="),
                      (["policies=[score]", f"score_policy={tmp_path / 'nope.json'}"], "score_policy: "),
                      (["policies=[score]", f"score_policy={f}", "mode=sequential"], "pinned visits"),
                      (["policies=[score]", f"score_policy={f}", "score_sensitivity=warp"], "unknown hardware preset")):
        p = subprocess.run([sys.executable, RUN, *TINY, *args, f"hydra.run.dir={tmp_path / 'bad'}"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
        assert p.returncode != 0 and msg in p.stderr + p.stdout, p.stderr + p.stdout
