"""The batch convention (``convention="bigmoeonedge"``): a trace worked by hand, the JAX engine exact
against the reference, the published curve of BigMoeOnEdge's replayer reproduced to its printed
decimals, and the API and hydra entry points."""

from __future__ import annotations

import csv
import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import specmd_jax as sj
from specmd_jax.api.batches import PEER_POLICIES, curve_text, replay_curve, sweep_batches
from specmd_jax.core import synthetic
from specmd_jax.core.trace import ModelShape, make_trace
from specmd_jax.kernels.batches import BATCH_KERNEL_POLICIES
from specmd_jax.reference.batches import BATCH_COUNTERS, simulate_batches
from specmd_jax.run.batches import run_batches
from conftest import EXCERPT, random_trace

ROOT = Path(__file__).resolve().parents[1]
CURVE = "bigmoeonedge-cache-replay/qwen-curve.csv"
MIB = 2 ** 20


def hand_trace():
    """L=2, E=4, K=2, a layer-0 expert weighs 100 bytes, a layer-1 expert 60. Pass 0 is a prefill
    of two tokens (layer 0 routes [0,1] then [2,0]: expert 0 appears twice), pass 1 a decode."""
    rows = [[0, 1], [2, 0], [3, 0], [0, 1], [0, 3], [1, 2]]
    return make_trace(ModelShape("hand", 2, 4, 2, 100, layer_bytes=(100, 60)), [0, 0], [0, 1], [2, 1],
                      [0, 2, 4, 5, 6], rows, source="hand")


def test_hand_trace_global_lru():
    """Budget 400 bytes, one pool, LRU, worked by hand (global ids: layer * 4 + expert).
    Batch (0, 0): ids 0,1,2 miss (300 B; stamps 1,2,3,4: the repeat of 0 takes stamp 4).
    Batch (0, 1): ids 7,4,5 miss (+180 = 480 B); evict the least recent not in the batch: 1
    (stamp 2; without the repeat's stamp it would be 0), 380 B.
    Batch (1, 0) decode [0, 3]: 0 hits (it survived because of its repeat), 3 misses (480 B);
    evict 2 (stamp 3), 380 B. Batch (1, 1) decode [5, 6]: 5 hits, 6 misses (440 B); evict 7 (stamp 5)."""
    t = hand_trace()
    want = dict(lookups=10, hits=2, misses=8, collisions=0, evictions=3, lookups_decode=4, hits_decode=2,
                read_bytes=640, evicted_bytes=260)
    r = simulate_batches(t, "lru", 400)
    assert r.totals == want and r.resident == [0, 3, 4, 5, 6] and r.max_bytes == 480
    k = run_batches(t, "lru", [400])
    assert dict(zip(BATCH_COUNTERS, k.totals[0].tolist())) == want and k.max_bytes[0] == 480
    assert np.flatnonzero(k.resident[0]).tolist() == [0, 3, 4, 5, 6]


def test_hand_trace_partitioned_overshoot():
    """Partitioned, 400 B: 200 B per layer. Layer 0's prefill loads 300 B and keeps it all (the batch
    is spared: the pool overshoots). Its decode batch [0, 3] reaches 400 B and evicts 1 then 2."""
    t = hand_trace()
    r = simulate_batches(t, "lru", 400, partitioned=True)
    assert r.totals["evictions"] == 3 and r.totals["evicted_bytes"] == 260 and r.max_bytes == 400
    assert r.resident == [0, 3, 4, 5, 6] and r.per_layer["evictions"] == [2, 1]


def _with_layer_bytes(t, sizes):
    return dataclasses.replace(t, shape=dataclasses.replace(t.shape, expert_bytes=max(sizes),
                                                            layer_bytes=tuple(sizes)))


def _traces():
    syn = synthetic.generate("olmoe-1b-7b", num_requests=2, prompt_len=4, gen_len=6, seed=1)
    rnd = random_trace(L=3, E=6, K=2, P=14, seed=3)
    return {"excerpt": (sj.load_trace(EXCERPT), [0, 100 * MIB, 500 * MIB, 1000 * MIB, 3000 * MIB]),
            "synthetic": (syn, [0, syn.shape.expert_bytes * 7, syn.shape.expert_bytes * 50 + 3]),
            "random": (_with_layer_bytes(rnd, [70, 100, 45]), [0, 150, 333, 700, 2000])}


@pytest.fixture(scope="module")
def traces():
    return _traces()


@pytest.mark.parametrize("policy", BATCH_KERNEL_POLICIES)
@pytest.mark.parametrize("name", ["excerpt", "synthetic", "random"])
def test_jax_engine_equals_reference(traces, name, policy):
    """Every counter, per layer, the final residents and the overshoot, for both pools."""
    t, budgets = traces[name]
    for part in (False, True):
        r = run_batches(t, policy, budgets, partitioned=part)
        for i, b in enumerate(budgets):
            ref = simulate_batches(t, policy, b, partitioned=part)
            ctx = (name, policy, part, b)
            assert dict(zip(BATCH_COUNTERS, r.totals[i].tolist())) == ref.totals, ctx
            for c, k in enumerate(BATCH_COUNTERS):
                assert r.per_layer[i, c].tolist() == ref.per_layer[k], ctx
            assert np.flatnonzero(r.resident[i]).tolist() == ref.resident, ctx
            assert r.max_bytes[i] == ref.max_bytes, ctx


def _gold(traces_dir):
    with open(traces_dir / CURVE) as f:
        return list(csv.DictReader(f))


def test_curve_reproduced_to_the_printed_decimals(traces_dir, qwen_trace):
    """Every lru, lfu (lfu_history), layer, layerlfu and belady cell of BigMoeOnEdge's published curve,
    at its 11 budgets, line for line in its own format (its random rows cannot be reproduced)."""
    lines = (traces_dir / CURVE).read_text().splitlines()
    budgets = sorted({float(r["budget_mib"]) for r in _gold(traces_dir)})
    df = replay_curve(qwen_trace, budgets)
    assert curve_text(df).splitlines() == [ln for ln in lines if ",random," not in ln]
    assert set(df["engine"]) == {"jax-batches"}
    assert (df.loc[df["peer_policy"] == "belady", "belady_gap"] == 0).all()


@pytest.mark.parametrize("budget", [500, 1000, 4000])
def test_reference_reproduces_the_curve(traces_dir, qwen_trace, budget):
    """The pure-Python reference alone gives the published cells (3 budgets here, all 11 under -m slow)."""
    _check_reference_cells(traces_dir, qwen_trace, budget)


@pytest.mark.slow
@pytest.mark.parametrize("budget", [250, 750, 1500, 2000, 2500, 3000, 6000, 8000])
def test_reference_reproduces_the_curve_everywhere(traces_dir, qwen_trace, budget):
    _check_reference_cells(traces_dir, qwen_trace, budget)


def _check_reference_cells(traces_dir, trace, budget):
    for row in _gold(traces_dir):
        if float(row["budget_mib"]) != budget or row["policy"] == "random":
            continue
        pol, part = PEER_POLICIES[row["policy"]]
        r = simulate_batches(trace, pol, int(budget * MIB), partitioned=part).totals
        got = ("%.3f" % (100 * r["hits"] / r["lookups"]), "%.3f" % (100 * r["hits_decode"] / r["lookups_decode"]),
               "%.1f" % (r["read_bytes"] / MIB))
        assert got == (row["hit_pct_cum"], row["hit_pct_decode"], row["read_mib"]), row


def test_sweep_api_and_engines(traces):
    t, _ = traces["excerpt"]
    a = sj.sweep(t, "lfu_history", budgets_mib=[100, 1000], convention="bigmoeonedge")
    b = sweep_batches(t, "lfu_history", capacity_bytes=[100 * MIB, 1000 * MIB], engine="reference")
    cols = list(BATCH_COUNTERS) + ["max_bytes", "capacity_bytes"]
    pd.testing.assert_frame_equal(a[cols], b[cols])
    assert list(a["engine"]) == ["jax-batches"] * 2 and list(b["engine"]) == ["reference"] * 2
    assert (a["lookups_prefill"] + a["lookups_decode"] == a["lookups"]).all()
    assert (a["hit_rate_prefill"] == 0).all()          # the prefill is the first batch of each layer
    pl = a.attrs["per_layer"]
    assert len(pl) == 2 * 48 and (pl.groupby("budget_mib")["hits"].sum().to_numpy() == a["hits"].to_numpy()).all()


def test_sweep_api_errors(traces):
    t, _ = traces["excerpt"]
    with pytest.raises(ValueError, match="random.*cannot be reproduced"):
        sj.sweep(t, "random", budgets_mib=[100], convention="bigmoeonedge")
    with pytest.raises(ValueError, match="expert bytes differ across layers"):
        sj.sweep(t, "lru", budgets_mib=[100])                       # pinned convention counts slots
    with pytest.raises(ValueError, match="demand-only"):
        sj.sweep(t, "lru", budgets_mib=[100], convention="bigmoeonedge", timing="async")
    with pytest.raises(ValueError, match="budgets_mib\\[1\\] must be in"):
        sj.sweep(t, "lru", budgets_mib=[100, -1], convention="bigmoeonedge")
    with pytest.raises(ValueError, match="exactly one of budgets_mib= or capacity_bytes="):
        sweep_batches(t, "lru")
    with pytest.raises(ValueError, match="convention must be one of pinned, bigmoeonedge"):
        sj.sweep(t, "lru", capacities=[8], convention="vllm")
    with pytest.raises(ValueError, match="unknown curve policies \\['random'\\]"):
        replay_curve(t, [100], ["lru", "random"])


def test_pinned_convention_takes_byte_budgets_where_sizes_are_equal():
    t = synthetic.generate("olmoe-1b-7b", num_requests=1, prompt_len=4, gen_len=4, seed=2)
    eb = t.shape.expert_bytes
    a = sj.sweep(t, "lru", capacity_bytes=[10 * eb + 1, 64 * eb])
    b = sj.sweep(t, "lru", capacities=[10, 64])
    pd.testing.assert_frame_equal(a, b)


def _run(args, timeout=300):
    p = subprocess.run([sys.executable, str(ROOT / "experiments" / "run.py"), *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=timeout)
    return p


def test_hydra_convention_run(tmp_path, traces):
    """``convention=bigmoeonedge sweep=budgets_mib``: one row per budget x policy in results.csv, the
    same cells as the API, and curve.csv in BigMoeOnEdge's columns."""
    p = _run(["trace=file", f"trace.path={EXCERPT}", "convention=bigmoeonedge", "sweep=budgets_mib",
              "sweep.budgets_mib=[100,1000]", "policy=bigmoeonedge", "progress=false", f"hydra.run.dir={tmp_path}"])
    assert p.returncode == 0, p.stdout + p.stderr
    res = pd.read_csv(tmp_path / "results.csv")
    assert len(res) == 2 * 5 and list(res["peer_policy"][:5]) == ["belady", "lru", "lfu", "layer", "layerlfu"]
    api = sweep_batches(traces["excerpt"][0], "lru", [100, 1000], partitioned=True)
    got = res[res["peer_policy"] == "layer"].reset_index(drop=True)
    assert got["hits"].tolist() == api["hits"].tolist() and got["read_bytes"].tolist() == api["read_bytes"].tolist()
    curve = (tmp_path / "curve.csv").read_text().splitlines()
    assert curve[0] == "budget_mib,policy,hit_pct_cum,hit_pct_decode,read_mib" and len(curve) == 11
    assert (res.loc[res["peer_policy"] == "belady", "belady_gap"] == 0).all() and res["belady_gap"].notna().all()
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"
    bad = _run(["trace=file", f"trace.path={EXCERPT}", "convention=bigmoeonedge", "progress=false",
                f"hydra.run.dir={tmp_path / 'bad'}"])
    assert bad.returncode == 2 and "convention=bigmoeonedge budgets bytes: use sweep=budgets_mib" in bad.stdout + bad.stderr


def test_belady_gap_and_read_mib_columns(traces):
    """The pinned table has read_mib; with_belady_gap puts each policy against Belady at its size."""
    from specmd_jax.api.tables import with_belady_gap
    t = synthetic.generate("olmoe-1b-7b", num_requests=1, prompt_len=4, gen_len=6, seed=4)
    frames = [sj.sweep(t, p, capacities=[16, 64]) for p in ("lru", "belady")]
    for f in frames:
        f.attrs = {}
    df = pd.concat(frames, ignore_index=True)
    assert np.allclose(df["read_mib"], df["misses"] * t.shape.expert_bytes / MIB)
    g = with_belady_gap(df)
    best = df[df["policy"] == "belady"].set_index("capacity_slots")["hits"]
    lru = g[g["policy"] == "lru"]
    want = [(best[c] - h) / best[c] for c, h in zip(lru["capacity_slots"], lru["hits"])]
    assert np.allclose(lru["belady_gap"], want) and (lru["belady_gap"] >= 0).all()
    assert (g.loc[g["policy"] == "belady", "belady_gap"] == 0).all()


def test_lfu_decay_from_hydra(tmp_path):
    """policy=lfu_decay with a decay_periods axis: one row per (capacity, period), on the record kernel;
    period 0 never halves, so it equals lfu_history."""
    p = _run(["trace.num_requests=1", "trace.prompt_len=8", "trace.gen_len=8", "progress=false",
              "policies=[lfu_decay,lfu_history]", "decay_periods=[0,16]", "sweep=slots", f"hydra.run.dir={tmp_path}"])
    assert p.returncode == 0, p.stdout + p.stderr
    df = pd.read_csv(tmp_path / "results.csv")
    dec = df[df["policy"] == "lfu_decay"]
    assert len(dec) == 3 * 2 and set(dec["engine"]) == {"jax-records"} and sorted(set(dec["decay_period"])) == [0, 16]
    hist = df[df["policy"] == "lfu_history"].set_index("capacity_slots")["hits"]
    never = dec[dec["decay_period"] == 0].set_index("capacity_slots")["hits"]
    assert never.to_dict() == hist.to_dict()
