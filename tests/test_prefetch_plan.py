"""Prefetch plans (predictors + selectors, host side) and trace predictions (format v2,
synthetic ``pred_noise``): definitions, error messages, and that no predictor reads the future
beyond what its definition allows."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from conftest import trace_named

from specmd_jax.core import synthetic
from specmd_jax.core.prefetch import (PREDICTORS, PrefetchConfig, make_plan, prediction_quality, select,
                                 visit_mass)
from specmd_jax.core.npz import load_npz, save_trace
from specmd_jax.core.trace import TraceError, make_trace


@pytest.fixture(scope="module")
def olmoe():
    return synthetic.generate("olmoe-1b-7b", num_requests=2, prompt_len=8, gen_len=20, seed=1, pred_noise=1.0)


@pytest.fixture(scope="module")
def train():
    return synthetic.generate("olmoe-1b-7b", num_requests=2, prompt_len=8, gen_len=40, seed=2)


# ------------------------------------------------------------------------- trace predictions


def test_pred_scores_roundtrip_and_slice(tmp_path, olmoe):
    p = tmp_path / "t.npz"
    save_trace(olmoe, str(p))
    t = load_npz(str(p))
    np.testing.assert_array_equal(t.pred_scores, olmoe.pred_scores)
    L = olmoe.shape.num_layers
    assert np.isnan(t.pred_scores[L - 1::L]).all()           # last layer: no next layer
    assert not np.isnan(t.pred_scores[0]).any()
    s = olmoe.slice_passes(3, 5)
    np.testing.assert_array_equal(s.pred_scores, olmoe.pred_scores[3 * L: 5 * L])


def test_version_1_file_still_loads(tmp_path, olmoe):
    p = tmp_path / "v1.npz"
    t = dataclasses.replace(olmoe, pred_scores=None)
    save_trace(t, str(p))
    z = dict(np.load(p))
    meta = json.loads(str(z.pop("meta")))
    meta["format_version"] = 1
    np.savez(p, meta=np.array(json.dumps(meta)), **z)
    assert load_npz(str(p)).pred_scores is None


@pytest.mark.parametrize("mutate,msg", [
    (lambda ps: ps[:, :3], "shape"),
    (lambda ps: _set(ps, (0, 5), np.nan), "some scores NaN"),
    (lambda ps: _set(ps, (1, 2), -0.5), "-0.5"),
    (lambda ps: _set(ps, (1, 2), np.inf), "inf"),
    (lambda ps: _set(ps, (15, slice(None)), 0.1), "last layer"),
])
def test_pred_scores_validation(olmoe, mutate, msg):
    with pytest.raises(TraceError, match="pred_scores") as e:
        make_trace(olmoe.shape, olmoe.pass_request, olmoe.pass_phase, olmoe.pass_tokens, olmoe.cell_offsets,
                   olmoe.experts, olmoe.weights, source="bad.npz", pred_scores=mutate(olmoe.pred_scores.copy()))
    assert msg in str(e.value) and "bad.npz" in str(e.value)


def _set(a, idx, v):
    a[idx] = v
    return a


def test_synthetic_prediction_quality_follows_noise():
    """Routing does not depend on pred_noise; top-k precision falls as the noise grows."""
    prec = []
    for noise in (0.0, 2.0, 8.0):
        t = synthetic.generate("olmoe-1b-7b", num_requests=1, prompt_len=8, gen_len=40, seed=0, pred_noise=noise)
        base = synthetic.generate("olmoe-1b-7b", num_requests=1, prompt_len=8, gen_len=40, seed=0)
        np.testing.assert_array_equal(t.experts, base.experts)
        prec.append(prediction_quality(t, make_plan(t, PrefetchConfig("recorded", "topk")))["precision"])
    assert prec[0] > 0.8 and prec[0] > prec[1] > prec[2] > 8 / 64  # better than chance (K/E)
    with pytest.raises(ValueError, match="pred_noise"):
        synthetic.generate("olmoe-1b-7b", pred_noise=-1.0)


# ------------------------------------------------------------------------- configs, selectors


@pytest.mark.parametrize("kw,msg", [
    ({"predictor": "magic"}, "unknown predictor"), ({"selector": "best"}, "unknown selector"),
    ({"depth": 0}, "depth"), ({"overfetch": 0.0}, "overfetch"), ({"percentile": 120.0}, "percentile"),
    ({"recall": 0.0, "predictor": "oracle_degraded"}, "recall"), ({"precision": 1.5}, "precision"),
    ({"predictor": "recorded", "depth": 2}, "depth must be 1"),
])
def test_config_errors(kw, msg):
    with pytest.raises(ValueError, match=msg):
        PrefetchConfig(**kw)


def test_selectors():
    s = np.array([0.0, 0.5, 0.9, 0.5, 0.1, 0.2, 0.0, 0.7])
    assert select(s, PrefetchConfig(selector="topk"), 2) == [2, 7]
    assert select(s, PrefetchConfig(selector="topk", overfetch=1.5), 2) == [2, 7, 1]          # tie 1/3: id
    assert select(s, PrefetchConfig(selector="all"), 2) == [2, 7, 1, 3, 5, 4]                 # score > 0
    thr = np.percentile(s, 75)
    assert select(s, PrefetchConfig(selector="percentile", percentile=75), 2) == \
        [i for i in [2, 7, 1, 3, 5, 4] if s[i] >= thr]
    assert select(np.full(8, np.nan), PrefetchConfig(selector="all"), 2) == []


def test_recorded_needs_predictions(train):
    with pytest.raises(ValueError, match="no pred_scores"):
        make_plan(train, PrefetchConfig("recorded"))
    with pytest.raises(ValueError, match="training trace"):
        make_plan(train, PrefetchConfig("transition"))


# ------------------------------------------------------------------------- predictor semantics


@pytest.mark.parametrize("name", ["olmoe", "qwen_excerpt"])   # the excerpt is the real trace's first passes
def test_oracle_is_exact(request, name):
    t = trace_named(request, name).slice_passes(0, 6)
    q = prediction_quality(t, make_plan(t, PrefetchConfig("oracle", "all", depth=2)))
    assert q["precision"] == 1.0 and q["recall"] == 1.0


def test_oracle_topk_counts(olmoe):
    plan = make_plan(olmoe, PrefetchConfig("oracle", "topk", overfetch=0.5))
    L, K = olmoe.shape.num_layers, olmoe.shape.top_k
    n = (plan.ids >= 0).sum(axis=1).reshape(-1, L)
    assert (n[:, -1] == 0).all() and (n[:, :-1] <= round(K * 0.5)).all()
    # targets are always the next layer of the same pass
    s, c = np.nonzero(plan.ids >= 0)
    assert np.array_equal(plan.ids[s, c] // olmoe.shape.num_experts, s % L + 1)


def test_degraded_oracle_hits_its_targets(olmoe):
    for r, p in ((1.0, 0.5), (0.5, 1.0), (0.75, 0.75)):
        q = prediction_quality(olmoe, make_plan(olmoe, PrefetchConfig("oracle_degraded", "all", recall=r,
                                                                      precision=p, seed=3)))
        assert abs(q["recall"] - r) < 0.06 and abs(q["precision"] - p) < 0.06, (r, p, q)
    a = make_plan(olmoe, PrefetchConfig("oracle_degraded", "all", recall=0.5, seed=1)).ids
    b = make_plan(olmoe, PrefetchConfig("oracle_degraded", "all", recall=0.5, seed=2)).ids
    assert not np.array_equal(a, b)                                                       # seeded


def _rerouted_after(t, p_cut, l_cut, seed=9):
    """``t`` with every cell after visit (p_cut, l_cut) re-drawn (same row counts) and the
    predictions after it changed: the future differs, the past is identical."""
    L, E, K = t.shape.num_layers, t.shape.num_experts, t.shape.top_k
    rng = np.random.default_rng(seed)
    ex = t.experts.copy()
    start = int(t.cell_offsets[p_cut * L + l_cut + 1])
    for r in range(start, ex.shape[0]):
        ex[r] = rng.choice(E, K, replace=False)
    ps = t.pred_scores.copy()
    v = p_cut * L + l_cut + 1
    live = ~np.isnan(ps[v:]).any(axis=1)
    ps[v:][live] = rng.random((int(live.sum()), E))
    return make_trace(t.shape, t.pass_request, t.pass_phase, t.pass_tokens, t.cell_offsets, ex, t.weights,
                      source="future-changed", pred_scores=ps)


@pytest.mark.parametrize("predictor", PREDICTORS)
def test_no_predictor_reads_the_future(olmoe, train, predictor):
    """Change everything after visit (p, l): every proposal made at or before it is unchanged,
    except that the oracles may read their own target visits (and only those)."""
    L = olmoe.shape.num_layers
    p_cut, l_cut, depth = 9, 5, 1 if predictor == "recorded" else 2
    b = _rerouted_after(olmoe, p_cut, l_cut)
    assert not np.array_equal(b.experts, olmoe.experts)
    cfg = PrefetchConfig(predictor, "all" if predictor.startswith("oracle") else "topk", depth=depth, seed=4)
    pa, pb = (_rows(make_plan(t, cfg, train=train).ids) for t in (olmoe, b))
    cut = p_cut * L + l_cut                       # last visit whose own data is unchanged
    reach = depth if predictor.startswith("oracle") else 0
    safe = cut - reach                            # its targets (visit + reach) are unchanged too
    assert pa[: safe + 1] == pb[: safe + 1], f"{predictor} read beyond its definition"
    if predictor.startswith("oracle"):  # and the oracle does read its targets
        assert pa[safe + 1: safe + 1 + L] != pb[safe + 1: safe + 1 + L]


def _rows(ids):
    return [r[r >= 0].tolist() for r in ids]


def test_reuse_is_previous_pass_demand(olmoe):
    plan = make_plan(olmoe, PrefetchConfig("reuse", "all"))
    L, E = olmoe.shape.num_layers, olmoe.shape.num_experts
    dem = visit_mass(olmoe) > 0
    assert (plan.ids[:L] < 0).all()                       # pass 0 has no previous pass
    p, l = 4, 3
    got = sorted(plan.ids[p * L + l][plan.ids[p * L + l] >= 0].tolist())
    assert got == [(l + 1) * E + e for e in np.flatnonzero(dem[(p - 1) * L + l + 1])]
