"""The soft relaxation of the score policy and its tuning.

* temperature -> 0 reaches the hard policy exactly (presets, several capacities);
* gradients w.r.t. weights, capacity and bandwidth are finite, non-zero and agree with
  central finite differences of the soft objective;
* chunked rematerialisation does not change values or gradients;
* the tuning loop compiles once, early-stops on the hard validation objective, and improves on
  its LRU start on held-out data in a tiny setting; the learned policy reloads.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specmd_jax.core import synthetic
from specmd_jax.run.keyed import run_scores
from specmd_jax.core.score import FEATURES, NF, ScorePolicy, preset_weights
from specmd_jax.learn.soft import (SoftParams, preset_real_weights, sensitivities, soft_run, soft_steps,
                             transfer_seconds)
from specmd_jax.core.timing import HARDWARE_PRESETS
from specmd_jax.learn.tune import TuneConfig, hard_miss_rates, tune
from specmd_jax.core.steps import prepare_steps

L, E = 16, 64


@pytest.fixture(scope="module")
def tiny():
    return synthetic.generate("olmoe-1b-7b", num_requests=1, prompt_len=4, gen_len=8, seed=3)


def _soft_misses(trace, chunk=16, iters=40):
    xs = soft_steps(trace, chunk)
    return jax.jit(lambda w, c, tau: soft_run(xs, SoftParams(w, c, tau), L, E, iters=iters,
                                              chunk=chunk)["misses"])


# sb's scores are cumulative gate units (thousands): float32 keeps the id tie-break term
# (tie / N = 5e-4) only down to tau ~ 1e-3 there
@pytest.mark.parametrize("name,tau", [("lru", 1e-5), ("fifo", 1e-5), ("lfu", 1e-5), ("fld", 1e-5), ("sb", 1e-3)])
def test_zero_temperature_is_the_hard_policy(tiny, name, tau):
    st = prepare_steps(tiny)
    q = preset_weights(name, st.num_steps)
    caps = [5, 30, 100, 300]
    hard = run_scores(tiny, np.stack([q] * len(caps)), caps, st)["misses"]
    f = _soft_misses(tiny)
    w = jnp.asarray(preset_real_weights(q, L), jnp.float32)
    errs = {t: max(abs(float(f(w, jnp.float32(c), jnp.float32(t))) - h) for c, h in zip(caps, hard))
            for t in (1.0, tau)}
    assert errs[tau] < 1e-2, errs           # the limit: equal to the hard replay
    assert errs[tau] <= errs[1.0], errs


def _objective(trace, chunk=16):
    xs = soft_steps(trace, chunk)
    B = trace.shape.expert_bytes

    def f(w, cap_bytes, bw):
        out = soft_run(xs, SoftParams(w=w, capacity=cap_bytes / B, tau=jnp.float32(0.3)), L, E, iters=30,
                       chunk=chunk)
        return out["prefill_misses"] * transfer_seconds(B, bw, 10.0) + 1e-3 * out["misses"]
    return f


def test_gradients_match_finite_differences(tiny):
    f = _objective(tiny)
    B = tiny.shape.expert_bytes
    w = jnp.asarray([-1.0, 0.2, -0.1, -0.5, 0.1, 0.3, 0.05, 0.0, 0.0], jnp.float32)
    cap, bw = jnp.float32(60 * B), jnp.float32(5.0)
    g = jax.jit(jax.grad(f, argnums=(0, 1, 2)))(w, cap, bw)
    gw, gc, gb = (np.asarray(x, np.float64) for x in g)
    assert np.all(np.isfinite(gw)) and np.isfinite(gc) and np.isfinite(gb)
    assert np.abs(gw).max() > 0 and gc != 0 and gb != 0
    fj = jax.jit(f)
    # directional derivative along a random direction in weight space, and the two scalars
    d = np.random.default_rng(0).normal(size=NF).astype(np.float32)
    d /= np.linalg.norm(d)
    h = 0.02
    fd_w = (float(fj(w + h * d, cap, bw)) - float(fj(w - h * d, cap, bw))) / (2 * h)
    assert fd_w == pytest.approx(float(gw @ d), rel=0.1, abs=1e-4)
    hc = 2.0 * B
    fd_c = (float(fj(w, cap + hc, bw)) - float(fj(w, cap - hc, bw))) / (2 * hc)
    assert fd_c == pytest.approx(float(gc), rel=0.1)
    hb = 0.05
    fd_b = (float(fj(w, cap, bw + hb)) - float(fj(w, cap, bw - hb))) / (2 * hb)
    assert fd_b == pytest.approx(float(gb), rel=0.05)
    assert gb < 0  # a faster link shortens the stall


def test_chunking_changes_nothing(tiny):
    w = jnp.asarray([-1.0, 0.2, 0.0, -0.5, 0.0, 0.3, 0.0, 0.0, 0.0], jnp.float32)

    def f(chunk):
        xs = soft_steps(tiny, chunk)
        return jax.value_and_grad(lambda w: soft_run(xs, SoftParams(w, jnp.float32(50), jnp.float32(0.2)), L, E,
                                                     chunk=chunk)["misses"])(w)
    (v1, g1), (v2, g2) = f(8), f(72)
    assert float(v1) == pytest.approx(float(v2), rel=1e-5)
    np.testing.assert_allclose(np.asarray(g1), np.asarray(g2), rtol=1e-3, atol=1e-3)


def test_sensitivities(tiny):
    rows = sensitivities(tiny, [-1] + [0] * (NF - 1), [0.05, 0.25], HARDWARE_PRESETS["a100-5gbps"], tau=0.3)
    for r in rows:
        assert r["soft_ttft_s"] > 0 and r["dttft_dbandwidth_s_per_gbps"] < 0 and r["dtpot_dbandwidth_s_per_gbps"] < 0
        assert r["dttft_dcapacity_s_per_gib"] == 0  # one request: its cold prefill misses everything at any size
        assert np.isfinite(r["dtpot_dcapacity_s_per_gib"]) and r["dtpot_dcapacity_s_per_gib"] < 0


def test_tune_compiles_once_and_beats_its_lru_start(tmp_path):
    mk = lambda s: synthetic.generate("olmoe-1b-7b", num_requests=1, prompt_len=4, gen_len=12, seed=s)
    train, val = [mk(0)], [mk(1)]
    cfg = TuneConfig(fractions=(0.05, 0.25), restarts=2, learning_rates=(0.1,), steps_per_eval=4, max_blocks=3,
                     patience=2, chunk=32)
    res = tune(train, val, cfg, name="tiny", log=None)
    assert res.compiles == 1
    assert 2 <= len(res.history) <= 4 and res.history[0]["train_loss"] is None
    lru = np.zeros(NF)
    lru[FEATURES.index("age")] = -1
    start, got = hard_miss_rates(val, np.stack([lru, np.asarray(res.policy.weights)]), cfg.fractions)
    assert res.best_val == pytest.approx(got) and got < start  # improved on held-out data
    f = res.policy.save(tmp_path / "tiny.json")
    assert ScorePolicy.load(f).weights == res.policy.weights
    assert res.policy.meta["best_member"]["learning_rate"] == 0.1
