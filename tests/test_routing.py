"""Cache-aware routing (specmd_jax.core.routing) and router logits in traces: validation, hand-checked
re-ranking and dual-logit weights, lam = 0 is standard routing exactly, candidates-only traces
never change a set, and the reference's proxies account for rerouted mass."""

from __future__ import annotations

import functools
import numpy as np
import pytest

from specmd_jax.core import synthetic
from specmd_jax.core.miss import MissConfig, proxy_rates
from specmd_jax.core.prefetch import PrefetchConfig, make_plan
from specmd_jax.reference.timed import simulate_timed
from specmd_jax.core.routing import RoutingConfig, gap_means, route_rows
from specmd_jax.core.timing import VISIT_READING, Hardware
from specmd_jax.core.npz import load_npz, save_trace
from specmd_jax.core.trace import ModelShape, TraceError, make_trace

# this module was written for the whole-visit reading; the other readings: tests/test_*readings*.py
simulate_timed = functools.partial(simulate_timed, reading=VISIT_READING)

HW = Hardware(bandwidth_gbps=2.0, latency_us=5.0, decode_layer_us=80.0)


def tiny(logits=True):
    """One layer, E = 4, K = 2, three single-token decode passes."""
    ex = [[0, 1], [2, 0], [1, 3]]
    w = [[0.6, 0.4], [0.7, 0.3], [0.5, 0.5]]
    lg = [[3.0, 2.0, 1.0, 0.0], [2.0, 0.5, 4.0, 1.0], [0.0, 5.0, 1.0, 5.0]]
    return make_trace(ModelShape("tiny", 1, 4, 2, 100), [0, 0, 0], [1, 1, 1], [1, 1, 1], [0, 1, 2, 3], ex, w,
                      logits=lg if logits else None)


def test_config_and_trace_validation(tmp_path):
    with pytest.raises(ValueError, match="unknown routing policy"):
        RoutingConfig("sticky")
    with pytest.raises(ValueError, match="lam"):
        RoutingConfig("cache_aware", lam=-1)
    t = tiny()
    with pytest.raises(TraceError, match="field 'logits'.*shape"):
        make_trace(t.shape, [0] * 3, [1] * 3, [1] * 3, [0, 1, 2, 3], t.experts, t.weights, logits=t.logits[:, :3])
    bad = t.logits.copy()
    bad[1, 3] = np.nan
    with pytest.raises(TraceError, match="row 1 expert 3.*not finite"):
        make_trace(t.shape, [0] * 3, [1] * 3, [1] * 3, [0, 1, 2, 3], t.experts, t.weights, logits=bad)
    bad = t.logits.copy()
    bad[0, 2] = 9.0  # expert 2 would outrank the recorded top-2
    with pytest.raises(TraceError, match="row 0: the recorded experts"):
        make_trace(t.shape, [0] * 3, [1] * 3, [1] * 3, [0, 1, 2, 3], t.experts, t.weights, logits=bad)
    save_trace(t, str(tmp_path / "t.npz"))
    assert np.array_equal(load_npz(str(tmp_path / "t.npz")).logits, t.logits)
    assert t.slice_passes(1, 3).logits.tolist() == t.logits[1:].tolist()


def test_gap_means_and_rerank_by_hand():
    t = tiny()
    # gaps (rank-1 minus rank-2 logit): 1.0, 2.0, 0.0 -> delta per visit: 0, 1.0, 1.5
    assert gap_means(t).tolist() == [0.0, 1.0, 1.5]
    # visit 1: logits [2, .5, 4, 1], cached {3}, bias 1.5 -> z' [2, .5, 4, 2.5]: top-2 = 2, 3
    ids, w = route_rows(t, 1, 2, {3}, np.float32(1.5))
    assert ids == [[2, 3]]
    e = np.exp([4.0, 1.0])  # dual-logit: softmax of the original logits over the new set,
    np.testing.assert_allclose(w[0], e / e.sum(), atol=1 / 1024)  # in 1/1024 units (integer rule)
    q = [2 ** 19, round(2 ** 19 * np.exp(-3.0))]  # q relative to the token's largest logit (4)
    assert w[0] == [(2048 * x + sum(q)) // (2 * sum(q)) / 1024 for x in q] == [975 / 1024, 49 / 1024]
    # a tie with a recorded expert keeps the recorded one (bias 1.0: z' of 3 = 2 = z of 0)
    assert route_rows(t, 1, 2, {3}, np.float32(1.0))[0] == [[2, 0]]
    # unchanged set, new order: recorded weights follow their experts
    ids, w = route_rows(t, 2, 3, {3}, np.float32(0.5))
    assert ids == [[3, 1]] and w == [[0.5, 0.5]]
    # without logits only the recorded candidates compete: the set never changes
    c = tiny(logits=False)
    ids, w = route_rows(c, 0, 1, {1}, np.float32(10.0))
    assert ids == [[1, 0]] and np.allclose(w, [[0.4, 0.6]])


def _olmoe():
    return synthetic.generate("olmoe-1b-7b", num_requests=1, prompt_len=6, gen_len=10, seed=7, pred_noise=1.0,
                              with_logits=True)


@pytest.mark.parametrize("policy", ["lru", "ls", "sb"])
def test_lam_zero_is_standard(policy):
    t = _olmoe()
    plan = make_plan(t, PrefetchConfig("recorded", "topk"))
    for miss in (MissConfig(), MissConfig("drop_priority", rank_threshold=2)):
        for cap in (20, 64, 300):
            a = simulate_timed(t, policy, cap, plan=plan, hardware=HW, miss=miss)
            b = simulate_timed(t, policy, cap, plan=plan, hardware=HW, miss=miss,
                               routing=RoutingConfig("cache_aware", lam=0.0))
            assert a.totals == b.totals and a.pass_ticks == b.pass_ticks and a.resident == b.resident


def test_cache_aware_routing_reroutes_and_accounts():
    t = _olmoe()
    for lam in (0.3, 2.0):
        r = simulate_timed(t, "lru", 128, hardware=HW, routing=RoutingConfig("cache_aware", lam=lam))
        tot = r.totals
        assert tot["tokens_changed"] > 0 and tot["units_rerouted"] > 0
        assert tot["pairs_served"] + tot["pairs_rerouted"] + tot["pairs_dropped"] + tot["pairs_substituted"] \
            == tot["pairs"] == t.experts.size
        assert tot["exec_pairs"] == tot["pairs"]  # fetch runs every routed pair
        rates = proxy_rates(tot)
        assert 0 < rates["proxy_mass_rerouted"] < 1 and 0 < rates["proxy_tokens_rerouted"] <= 1
    std = simulate_timed(t, "lru", 128, hardware=HW)
    strong = simulate_timed(t, "lru", 128, hardware=HW, routing=RoutingConfig("cache_aware", lam=2.0))
    # favouring cached experts turns misses into hits (on this trace, not a theorem)
    assert strong.totals["hits"] > std.totals["hits"]


def test_candidates_only_and_refusals():
    t = synthetic.generate("olmoe-1b-7b", num_requests=1, prompt_len=4, gen_len=6, seed=3)
    r = simulate_timed(t, "lru", 64, hardware=HW, routing=RoutingConfig("cache_aware", lam=1.0))
    assert r.totals["tokens_changed"] == 0 and r.totals["pairs_rerouted"] == 0
    assert RoutingConfig("cache_aware", 1.0).label(t).endswith("candidates only)")
    with pytest.raises(ValueError, match="belady"):
        simulate_timed(_olmoe(), "belady", 64, routing=RoutingConfig("cache_aware", lam=1.0))
    now = synthetic.generate("olmoe-1b-7b", num_requests=1, prompt_len=4, gen_len=6, seed=3, with_weights=False)
    with pytest.raises(ValueError, match="neither"):
        simulate_timed(now, "lru", 64, routing=RoutingConfig("cache_aware", lam=1.0))
