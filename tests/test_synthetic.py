"""Synthetic trace generator: determinism, shapes, knob effects and validation."""

from __future__ import annotations

import numpy as np
import pytest

from specmd_jax.core.presets import MODEL_PRESETS
from specmd_jax.core.synthetic import decode_stream, generate
from specmd_jax.core.trace import DECODE, PREFILL

T = 300  # decode tokens for the knob-effect tests


def _ids(model="olmoe-1b-7b", **kw):
    """Decode-only stream as ids[T, L, K]."""
    t = decode_stream(model, T, **kw)
    s = t.shape
    return t.experts.reshape(T, s.num_layers, s.top_k).astype(np.int64), s


def test_deterministic_and_seeded():
    a = generate("olmoe-1b-7b", num_requests=2, prompt_len=4, gen_len=8, seed=7)
    b = generate("olmoe-1b-7b", num_requests=2, prompt_len=4, gen_len=8, seed=7)
    c = generate("olmoe-1b-7b", num_requests=2, prompt_len=4, gen_len=8, seed=8)
    assert np.array_equal(a.experts, b.experts) and np.array_equal(a.weights, b.weights)
    assert not np.array_equal(a.experts, c.experts)
    assert "seed=7" in a.source and "reuse=0.5" in a.source


@pytest.mark.parametrize("model", sorted(MODEL_PRESETS))
def test_shapes_every_preset(model):
    n, pl, gl = 2, 3, 4
    t = generate(model, num_requests=n, prompt_len=pl, gen_len=gl, seed=1)
    s = t.shape
    L, E, K = s.num_layers, s.num_experts, s.top_k
    assert s == MODEL_PRESETS[model]
    assert t.num_passes == n * (1 + gl)
    assert t.pass_request.tolist() == [r for r in range(n) for _ in range(1 + gl)]
    assert t.pass_phase.tolist() == ([PREFILL] + [DECODE] * gl) * n
    assert t.pass_tokens.tolist() == ([pl] + [1] * gl) * n
    rows = np.diff(t.cell_offsets).reshape(t.num_passes, L)
    assert np.all(rows == t.pass_tokens[:, None])
    assert t.experts.shape == (n * (pl + gl) * L, K) and t.experts.max() < E
    assert t.weights.dtype == np.float32 and np.allclose(t.weights.sum(1), 1.0, atol=1e-5)


def test_prefill_only_decode_only_no_weights():
    t = generate("mixtral-8x7b", num_requests=1, prompt_len=5, gen_len=0, with_weights=False)
    assert t.num_passes == 1 and t.pass_tokens.tolist() == [5] and t.weights is None
    d = decode_stream("mixtral-8x7b", 6)
    assert d.num_passes == 6 and np.all(d.pass_phase == DECODE)


def _reuse_overlap(ids):
    K = ids.shape[2]
    return np.mean([len(set(ids[t, l]) & set(ids[t - 1, l])) / K
                    for t in range(1, ids.shape[0]) for l in range(ids.shape[1])])


def test_reuse_increases_same_layer_overlap():
    lo = _reuse_overlap(_ids(reuse=0.0, cross_layer=0.0)[0])
    hi = _reuse_overlap(_ids(reuse=0.9, cross_layer=0.0)[0])
    assert hi > lo + 0.4, (lo, hi)
    assert hi >= 0.85


def _top_share(ids):
    """Mean over layers of the fraction of tokens whose top-k holds the layer's most used expert."""
    out = []
    for l in range(ids.shape[1]):
        top = np.bincount(ids[:, l].ravel()).argmax()
        out.append(np.mean(np.any(ids[:, l] == top, axis=1)))
    return float(np.mean(out))


def test_skew_increases_top_expert_share():
    flat = _top_share(_ids(skew=0.0, reuse=0.0, cross_layer=0.0)[0])
    steep = _top_share(_ids(skew=2.0, reuse=0.0, cross_layer=0.0)[0])
    assert steep > flat + 0.4, (flat, steep)


def _pair_concentration(ids, E):
    """Mean over (l, a) of max_b C[a, b] / sum_b C[a, b] for experts a at l-1 and b at l, same token."""
    vals = []
    for l in range(1, ids.shape[1]):
        C = np.zeros((E, E))
        a = np.repeat(ids[:, l - 1], ids.shape[2], axis=1).ravel()
        b = np.tile(ids[:, l], (1, ids.shape[2])).ravel()
        np.add.at(C, (a, b), 1)
        tot = C.sum(1)
        vals.append(np.mean(C.max(1)[tot > 0] / tot[tot > 0]))
    return float(np.mean(vals))


def test_cross_layer_changes_pair_structure():
    ids0, s = _ids(skew=0.0, reuse=0.0, cross_layer=0.0)
    ids1, _ = _ids(skew=0.0, reuse=0.0, cross_layer=0.9)
    c0, c1 = _pair_concentration(ids0, s.num_experts), _pair_concentration(ids1, s.num_experts)
    assert c1 > 2 * c0, (c0, c1)


@pytest.mark.parametrize("kw,name", [
    (dict(skew=-0.1), "skew"), (dict(skew=float("nan")), "skew"),
    (dict(reuse=1.5), "reuse"), (dict(reuse=-0.1), "reuse"),
    (dict(cross_layer=2.0), "cross_layer"), (dict(cross_layer=-1e-3), "cross_layer"),
    (dict(prompt_len=-1), "prompt_len"), (dict(gen_len=-2), "gen_len"),
    (dict(num_requests=0), "num_requests"), (dict(prompt_len=0, gen_len=0), "gen_len"),
])
def test_knob_validation(kw, name):
    with pytest.raises(ValueError, match=name):
        generate("olmoe-1b-7b", **kw)


def test_unknown_model():
    with pytest.raises(ValueError, match="valid names"):
        generate("nope")
