"""The prefetch hydra entry point (experiments/prefetch_run.py, conf/prefetch_app.yaml): a default
run, a prior-system run over every hardware preset, and the startup errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
RUN = str(ROOT / "experiments" / "prefetch_run.py")
TINY = ["trace.num_requests=1", "trace.prompt_len=6", "trace.gen_len=6", "progress=false"]


def _run(args, ok=True, env=None):
    p = subprocess.run([sys.executable, RUN, *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env={**os.environ, **(env or {})})
    if ok:
        assert p.returncode == 0, f"prefetch_run.py {' '.join(args)} failed:\n{p.stdout}\n{p.stderr}"
    return p


def test_default_run(tmp_path):
    out = _run([*TINY, f"hydra.run.dir={tmp_path}"]).stdout
    df = pd.read_csv(tmp_path / "results.csv")
    assert sorted(df["policy"].unique()) == ["lru", "ls"] and len(df) == 2 * 3
    eng = df.groupby("policy")["engine"].first()
    # 3 configurations per policy: engine=auto picks the reference (faster at this size)
    assert eng["lru"] == "reference-async" and eng["ls"] == "reference-async" and (df["hardware"] == "a100-5gbps").all()
    assert (df["hits"] + df["late"] + df["misses"] == df["demands"]).all()
    assert "prediction precision/recall" in (tmp_path / "trace.txt").read_text() and "results.csv" in out


def test_engine_jax_from_the_command_line(tmp_path):
    _run([*TINY, "engine=jax", f"hydra.run.dir={tmp_path}"])
    assert set(pd.read_csv(tmp_path / "results.csv")["engine"]) == {"jax-async"}


def test_execution_reading_from_the_command_line_and_as_a_multirun_axis(tmp_path):
    _run([*TINY, "engine=jax", "execution=expert", "prefetch_issue=at_router", "pin=running",
          f"hydra.run.dir={tmp_path / 'one'}"])
    df = pd.read_csv(tmp_path / "one" / "results.csv")
    assert set(df["reading"]) == {"expert/at_router/running"} and set(df["engine"]) == {"jax-async"}
    assert (df["below_token_cycle"] == (df["capacity_slots"] < 16 * 8)).all()  # OLMoE: L x K = 128 slots
    _run(["-m", *TINY, "execution=visit,expert", "pin=visit,running", "policies=[ls]",
          f"hydra.sweep.dir={tmp_path / 'multi'}"])
    got = sorted(pd.read_csv(f)["reading"].iloc[0] for f in (tmp_path / "multi").glob("*/results.csv"))
    assert got == ["expert/at_router/running", "expert/at_router/visit", "visit/at_router/running",
                   "visit/at_router/visit"]


def test_system_with_ls_dropin_over_all_hardware(tmp_path):
    out = _run([*TINY, "system=zhu25", "timing=instant", "hardware=all", f"hydra.run.dir={tmp_path}"]).stdout
    df = pd.read_csv(tmp_path / "results.csv")
    assert list(df["policy"].unique()) == ["sb", "ls"] and len(df) == 2 * 3 * 5
    assert set(df["system"]) == {"zhu25", "zhu25+ls"} and set(df["prefetch"]) == {"recorded p80"}
    assert set(df["miss"]) == {"substitute"} and set(df["engine"]) == {"reference-instant"}
    assert (df["proxy_mass_substituted"] + df["proxy_mass_dropped"] > 0).all()
    assert "running gate score" in out and "running gate score" in (tmp_path / "trace.txt").read_text()


def test_startup_errors(tmp_path, traces_dir):
    p = _run([*TINY, "hardware.profiles=[warp]", f"hydra.run.dir={tmp_path}"], ok=False)
    assert p.returncode != 0 and "unknown hardware profile 'warp'" in p.stderr + p.stdout
    p = _run(["trace=qwen3_real", "progress=false", f"hydra.run.dir={tmp_path}"], ok=False,
             env={"SPECMD_TRACES": str(traces_dir)})
    assert p.returncode != 0 and "no recorded predictions" in p.stderr + p.stdout
    p = _run([*TINY, "prefetch.selector=best", f"hydra.run.dir={tmp_path}"], ok=False)
    assert p.returncode != 0 and "unknown selector" in p.stderr + p.stdout
    p = _run([*TINY, "miss.policy=skip", f"hydra.run.dir={tmp_path}"], ok=False)
    assert p.returncode != 0 and "unknown miss policy 'skip'" in p.stderr + p.stdout


def test_miss_and_precision_from_the_command_line(tmp_path):
    _run([*TINY, "policies=[lru]", "miss.policy=cascade", "miss.thresholds=[0.3]",
          "precision.level_fractions=[1.0,0.25]", f"hydra.run.dir={tmp_path}"])
    df = pd.read_csv(tmp_path / "results.csv")
    assert set(df["miss"]) == {"cascade(0.3)"} and set(df["precision"]) == {"16bit/4bit"}
    assert set(df["engine"]) == {"reference-async"} and (df["proxy_mean_bits"] < 16).all()


def test_routing_from_the_command_line_and_mixturecache(tmp_path):
    _run([*TINY, "policies=[lru]", "routing.policy=cache_aware", "routing.lam=0.5", f"hydra.run.dir={tmp_path}"])
    df = pd.read_csv(tmp_path / "results.csv")
    assert set(df["routing"]) == {"cache_aware(lam=0.5)"} and (df["proxy_tokens_rerouted"] > 0).any()
    _run([*TINY, "system=mixturecache25", "ls_dropin=false", f"hydra.run.dir={tmp_path / 'mc'}"])
    mc = pd.read_csv(tmp_path / "mc" / "results.csv")
    assert set(mc["routing"]) == {"cache_aware(lam=0.3)"} and set(mc["prefetch"]) == {"none"}
    # a list of lam values is one vmapped axis of the asynchronous JAX engine (which routes
    # cache-aware under whole-visit execution; per expert such rows run on the reference)
    _run([*TINY, "policies=[ls]", "routing.policy=cache_aware", "routing.lam=[0.0,0.5,2.0]", "engine=jax",
          "execution=visit", "prefetch_issue=after_use", "pin=visit", f"hydra.run.dir={tmp_path / 'lams'}"])
    lams = pd.read_csv(tmp_path / "lams" / "results.csv")
    assert set(lams["engine"]) == {"jax-async"} and len(lams) == 3 * 3
    assert set(lams["routing"]) == {"cache_aware(lam=0)", "cache_aware(lam=0.5)", "cache_aware(lam=2)"}
    assert (lams[lams["routing"] == "cache_aware(lam=0)"]["proxy_tokens_rerouted"] == 0).all()
    p = _run([*TINY, "routing.policy=sticky", f"hydra.run.dir={tmp_path / 'bad'}"], ok=False)
    assert p.returncode != 0 and "unknown routing policy 'sticky'" in p.stderr + p.stdout


def test_drop_thresholds_list_from_the_command_line(tmp_path):
    _run([*TINY, "policies=[lru]", "miss.policy=drop_priority", "miss.rank_threshold=[1,2,8]", "engine=jax",
          f"hydra.run.dir={tmp_path}"])
    df = pd.read_csv(tmp_path / "results.csv")
    assert set(df["engine"]) == {"jax-async"} and len(df) == 3 * 3
    assert set(df["miss"]) == {"drop_priority(rank>=1)", "drop_priority(rank>=2)", "drop_priority(rank>=8)"}
    d = df.groupby("miss")["proxy_mass_dropped"].mean()
    assert d["drop_priority(rank>=1)"] >= d["drop_priority(rank>=2)"] >= d["drop_priority(rank>=8)"] == 0


def test_percentiles_at_mixed_precision_from_the_command_line(tmp_path):
    _run([*TINY, "policies=[lru]", "miss.policy=fetch_priority", "miss.percentile=[20,80]",
          "precision.level_fractions=[1.0,0.5,0.25]", "engine=jax", f"hydra.run.dir={tmp_path}"])
    df = pd.read_csv(tmp_path / "results.csv")
    assert set(df["engine"]) == {"jax-async"} and len(df) == 3 * 2 and set(df["precision"]) == {"16bit/8bit/4bit"}
    bits = df.groupby("miss")["proxy_mean_bits"].mean()
    assert bits["fetch_priority(p20->L1)"] > bits["fetch_priority(p80->L1)"]
