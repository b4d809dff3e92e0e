"""The parametric eviction score: hard policy, presets, JAX engine vs reference.

Presets must reproduce LRU, LFU, FIFO, FLD, SB and Least-Stale decisions exactly (equal counts
and equal final resident sets) in the reference and in the JAX engine; arbitrary integer
weights must give the same replay in both.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from specmd_jax import reference
from specmd_jax.core import synthetic
from specmd_jax.run.keyed import run_scores, score_table
from specmd_jax.core.score import (FEATURES, NF, PRESETS, ScorePolicy, bounds_of, check_bounds, preset_weights,
                              quantize)
from specmd_jax.core.steps import prepare_steps


@pytest.fixture(scope="module")
def small():
    return synthetic.generate("olmoe-1b-7b", num_requests=2, prompt_len=6, gen_len=10, seed=3)


@pytest.fixture(scope="module")
def qwen_slice(qwen_excerpt):
    return qwen_excerpt.slice_passes(0, 12)  # the 28-token prefill and 11 decode passes


def _check_equal(trace, qs, caps, names=None):
    st = prepare_steps(trace)
    r = run_scores(trace, qs, caps, st)
    for i, (q, c) in enumerate(zip(qs, caps)):
        sc = reference.simulate(trace, "score", int(c), weights=q)
        assert {k: int(r[k][i]) for k in sc.totals} == sc.totals, (i, c)
        assert np.flatnonzero(r["resident"][i]).tolist() == sc.resident
        if names is not None:  # the preset reproduces the fixed rule of the reference
            fixed = reference.simulate(trace, names[i], int(c))
            assert sc.totals == fixed.totals and sc.resident == fixed.resident, (names[i], c)


@pytest.mark.parametrize("name", PRESETS)
def test_presets_reproduce_fixed_rules_synthetic(small, name):
    T = prepare_steps(small).num_steps
    caps = [3, 17, 64, 150, 400]
    _check_equal(small, np.stack([preset_weights(name, T)] * len(caps)), caps, [name] * len(caps))


def test_presets_reproduce_fixed_rules_real_qwen3(qwen_slice):
    T = prepare_steps(qwen_slice).num_steps
    names, caps = [], []
    for name in PRESETS:
        for f in (0.01, 0.05, 0.25):
            names.append(name)
            caps.append(int(f * qwen_slice.shape.num_ids))
    _check_equal(qwen_slice, np.stack([preset_weights(n, T) for n in names]), caps, names)


def test_random_weights_jax_equals_reference(small):
    rng = np.random.default_rng(7)
    qs = rng.integers(-40, 40, size=(8, NF))
    qs[:, FEATURES.index("gate")] = rng.integers(-2, 3, size=8)
    _check_equal(small, qs, [2, 9, 33, 33, 80, 128, 256, 600])


def test_score_table_and_errors(small):
    st = prepare_steps(small)
    df = score_table(small, np.stack([preset_weights("lru", st.num_steps)] * 2), [10, 100], labels=["a", "b"])
    assert list(df["label"]) == ["a", "b"] and df["hit_rate"].between(0, 1).all()
    assert (df["hits"] + df["misses"] == df["demands"]).all()
    with pytest.raises(ValueError, match="overflow int32.*'age'"):
        run_scores(small, np.array([[2 ** 30] + [0] * (NF - 1)]), [10])
    with pytest.raises(ValueError, match=r"qs must be \[C, 9\]"):
        run_scores(small, np.zeros((2, 3)), [1, 2])
    with pytest.raises(ValueError, match="unknown preset 'mru'"):
        preset_weights("mru", 10)
    with pytest.raises(ValueError, match="needs weights="):
        reference.simulate(small, "score", 10)


def test_quantize_and_bounds(small):
    st = prepare_steps(small)
    b = bounds_of(st)
    assert b[FEATURES.index("ahead")] == 16 and b[FEATURES.index("age")] == st.num_steps
    q = quantize([-1, 0, 0, 0.5, 0, 0, 0, 0, 0], 16, b)
    assert q[0] < 0 and q[0] == -2 * q[3]  # both normalised by L: the ratio of the real weights
    check_bounds(q, b)
    with pytest.raises(ValueError, match="9 finite numbers"):
        quantize([1, 2], 16, b)
    # the quantised rule ranks like the real one: same replay as the preset for pure LRU
    lru = quantize([-1, 0, 0, 0, 0, 0, 0, 0, 0], 16, b)
    r1 = run_scores(small, np.stack([lru, preset_weights("lru", st.num_steps)]), [40, 40], st)
    assert r1["misses"][0] == r1["misses"][1]


def test_policy_save_load(tmp_path):
    p = ScorePolicy("mine", (-1.0, 0.1, 0, -0.5, 0, 0.2, 0, -2, 0.5), {"note": "x"})
    f = p.save(tmp_path / "mine.json")
    assert ScorePolicy.load(f) == ScorePolicy("mine", (-1.0, 0.1, 0.0, -0.5, 0.0, 0.2, 0.0, -2.0, 0.5), {"note": "x"})
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "b", "features": ["age"], "weights": [1]}))
    with pytest.raises(ValueError, match=r"bad\.json: field 'features'"):
        ScorePolicy.load(bad)
    bad.write_text(json.dumps({"name": "b", "features": list(FEATURES), "weights": [1, 2]}))
    with pytest.raises(ValueError, match=r"bad\.json: field 'weights' must be 9 numbers"):
        ScorePolicy.load(bad)
    with pytest.raises(ValueError, match=r"missing\.json: cannot read"):
        ScorePolicy.load(tmp_path / "missing.json")


def test_prefill_misses_and_ttft_equal_the_timed_reference(small):
    """Demand-only TTFT and TPOT of the score engine (LRU and LS presets) equals the asynchronous timed
    reference without prefetch, on every hardware preset."""
    import specmd_jax as sj
    from specmd_jax.api import sweep_score
    from specmd_jax.run.keyed import times_ms
    st = prepare_steps(small)
    one = small.slice_passes(0, 1)  # the first prefill pass alone: all its misses are prefill misses
    r1 = run_scores(one, np.stack([preset_weights("lru", st.num_steps)] * 2), [20, 200])
    assert r1["prefill_misses"].tolist() == r1["misses"].tolist()
    hws = list(sj.HARDWARE_PRESETS.values())
    for name in ("lru", "ls"):
        ref = sj.sweep_prefetch(small, name, capacities=[20, 200], prefetch=None, hardware=hws, timing="async",
                                reading="visit/after_use/visit",  # the score engine replays whole visits
                                engine="reference")
        r = run_scores(small, np.stack([preset_weights(name, st.num_steps)] * 2), [20, 200], st)
        for hw in hws:
            want = ref[ref["hardware"] == hw.name].sort_values("capacity_slots")
            got = times_ms(small, r["pass_misses"], hw)
            np.testing.assert_allclose(got["ttft_ms"], want["ttft_ms"], rtol=1e-12)
            np.testing.assert_allclose(got["tpot_ms"], want["tpot_ms"], rtol=1e-12)
    pol = ScorePolicy("lru-like", (-1.0,) + (0.0,) * (NF - 1))
    df = sweep_score(small, pol, fractions=[0.05, 0.25], hardware=hws[0], sensitivities=True)
    assert set(df["policy"]) == {"score:lru-like"} and (df["ttft_ms"] > 0).all()
    assert (df["dtpot_dbandwidth_s_per_gbps"] < 0).all() and np.isfinite(df["dttft_dcapacity_s_per_gib"]).all()
    with pytest.raises(ValueError, match="needs hardware="):
        sweep_score(small, pol, capacities=[10], sensitivities=True)
    lru = sj.sweep(small, "lru", fractions=[0.05, 0.25])
    assert df["misses"].tolist() == lru["misses"].tolist()
    for c in ("capacity_fraction", "capacity_slots", "capacity_bytes"):  # labelled like sj.sweep's rows
        assert df[c].tolist() == lru[c].tolist(), c


# ------------------------------------------------------------- with prefetch: the timed reference

def test_timed_features():
    from specmd_jax.core.score import timed_features
    rec = dict(last=40, ins=10, freq=3, mark=2, pf=True, lvl=1)
    # resident of layer 1 (E = 8, id 12), visit of layer 3 of pass 2, event counter 50, L = 4
    assert timed_features(50, 2, 3, 12, 8, 4, rec, 77) == (10, 3, 40, 1, 2, 0, 77, 1, 1)
    assert timed_features(50, 3, 3, 12, 8, 4, dict(rec, pf=False, lvl=0), 0)[5:] == (1, 0, 0, 0)


@pytest.mark.parametrize("timing", ["async", "instant"])
def test_presets_reproduce_fixed_rules_with_prefetch(timing):
    """With next-layer prefetch on a slow link (late arrivals) and two precision levels, the
    score presets decide exactly as the timed reference's own policies; the prefetch-only
    features (pf, level) are what the presets leave at 0."""
    import specmd_jax as sj
    from specmd_jax.core.miss import MissConfig, Precision
    from specmd_jax.core.prefetch import PrefetchConfig, make_plan
    from specmd_jax.reference.timed import simulate_timed
    t = synthetic.generate("olmoe-1b-7b", num_requests=2, prompt_len=4, gen_len=6, seed=5, pred_noise=1.0)
    plan = make_plan(t, PrefetchConfig("recorded", "topk", overfetch=1.5))
    hw = sj.HARDWARE_PRESETS["a100-5gbps"]
    big = 10 ** 9  # the timed clock is an event counter: Python ints, no int32 bound here
    for name in ("lru", "fifo", "lfu", "fld", "sb"):
        q = preset_weights(name, big)
        for cap, prec, miss in ((24, None, None), (90, None, None),
                                (60, Precision((("16bit", 16), ("4bit", 4))), MissConfig("fetch_lowest"))):
            kw = dict(plan=plan, hardware=hw, instant_prefetch=timing == "instant", precision=prec, miss=miss)
            a = simulate_timed(t, "score", cap, weights=q, **kw)
            b = simulate_timed(t, name, cap, **kw)
            assert a.totals == b.totals and a.resident == b.resident and a.pass_ticks == b.pass_ticks, (name, cap)


def test_prefetch_features_steer_eviction():
    """q_pf < 0 evicts unused prefetches before anything else, q_pf > 0 protects them: the
    number of prefetched experts evicted unused moves accordingly (same trace, plan, size)."""
    import specmd_jax as sj
    from specmd_jax.core.prefetch import PrefetchConfig, make_plan
    from specmd_jax.reference.timed import simulate_timed
    t = synthetic.generate("olmoe-1b-7b", num_requests=1, prompt_len=4, gen_len=10, seed=2, pred_noise=4.0)
    plan = make_plan(t, PrefetchConfig("recorded", "topk", overfetch=2.0))
    base = preset_weights("lru", 10 ** 6)
    i = FEATURES.index("pf")
    wasted = {}
    for label, v in (("evict", -(10 ** 8)), ("lru", 0), ("protect", 10 ** 8)):
        q = base.copy()
        q[i] = v
        wasted[label] = simulate_timed(t, "score", 60, weights=q, plan=plan, hardware=sj.HARDWARE_PRESETS["pcie5-x16"]
                                       ).totals["pf_wasted"]
    assert wasted["evict"] > wasted["lru"] > wasted["protect"], wasted


def test_sweep_prefetch_score_policy(small):
    import specmd_jax as sj
    from specmd_jax.core.prefetch import PrefetchConfig
    t = synthetic.generate("olmoe-1b-7b", num_requests=1, prompt_len=4, gen_len=6, seed=1, pred_noise=1.0)
    pf = PrefetchConfig("recorded", "topk")
    lru = sj.sweep_prefetch(t, "lru", capacities=[20, 80], prefetch=pf, engine="reference")
    pol = ScorePolicy("lru-like", (-1.0,) + (0.0,) * (NF - 1))
    got = sj.sweep_prefetch(t, "score", capacities=[20, 80], prefetch=pf, score_weights=pol)
    assert set(got["engine"]) == {"reference-async"}
    for c in ("hits", "late", "misses", "collisions", "pf_wasted", "ttft_ms", "tpot_ms"):
        assert got[c].tolist() == lru[c].tolist(), c
    with pytest.raises(ValueError, match="score_weights= goes with policy='score'"):
        sj.sweep_prefetch(t, "score", capacities=[20], prefetch=pf)
    with pytest.raises(ValueError, match="needs weights="):
        reference.simulate(small, "score", 10)
