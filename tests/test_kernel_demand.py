"""Every JAX policy equals the pure-Python reference exactly: totals, per-layer counts and the
final resident set, in pinned and sequential modes, global and per-layer partitioned, on random,
synthetic and real traces, for many capacities at once (one vmapped sweep per check)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import REAL, random_trace, trace_named
from specmd_jax import reference
from specmd_jax.core import synthetic
from specmd_jax.core.counters import DEMAND_COUNTERS
from specmd_jax.run.demand import run_configs
from specmd_jax.policies import served_by

POLICIES = served_by("scan")   # the scan kernel's policies (the record kernel's: tests/test_records.py)
from specmd_jax.core.trace import ModelShape, make_trace
from specmd_jax.core.steps import prepare_steps



def check_equal(trace, policy, caps, mode, partitioned, seeds=None, width=None, unroll=False, split=None):
    steps = prepare_steps(trace, mode, width=width if mode == "pinned" else None)
    seeds = list(seeds) if seeds is not None else [7 * i + 1 for i in range(len(caps))]
    r = run_configs(trace, policy, caps, seeds, mode=mode, partitioned=partitioned, steps=steps,
                    unroll_layers=unroll, chunk_steps=4096, split_widths=split)
    for i, c in enumerate(caps):
        ref = reference.simulate(trace, policy, int(c), mode=mode, partitioned=partitioned, seed=seeds[i])
        ctx = f"{trace.source} policy={policy} mode={mode} partitioned={partitioned} cap={c}"
        assert dict(zip(DEMAND_COUNTERS, r.totals[i].tolist())) == ref.totals, ctx
        for k, name in enumerate(DEMAND_COUNTERS):
            assert r.per_layer[i, k].tolist() == ref.per_layer[name], f"{ctx} per-layer {name}"
        assert np.flatnonzero(r.resident[i]).tolist() == ref.resident, f"{ctx} resident set"
        assert r.max_occupancy[i] == ref.max_occupancy, ctx


@pytest.mark.parametrize("partitioned", [False, True])
@pytest.mark.parametrize("mode", ["pinned", "sequential"])
@pytest.mark.parametrize("policy", POLICIES)
def test_random_traces(policy, mode, partitioned):
    caps = [0, 1, 2, 3, 4, 6, 9, 18]
    for seed in range(6):
        t = random_trace(L=3, E=6, K=2, P=10, max_tokens=3, seed=seed)
        check_equal(t, policy, caps, mode, partitioned, width=6)


@pytest.mark.parametrize("policy", POLICIES)
def test_synthetic_olmoe_with_prefill(policy):
    """Prefill passes demand many experts per visit: at 1% they overflow and bypass."""
    t = synthetic.generate("olmoe-1b-7b", num_requests=2, prompt_len=12, gen_len=10, seed=3)
    check_equal(t, policy, [10, 51, 128, 256], "pinned", False)
    check_equal(t, policy, [10, 51, 128, 256], "pinned", False, split=True)  # decode at width K


@pytest.mark.parametrize("policy", POLICIES)
def test_unrolled_layers_equal(policy):
    t = random_trace(L=4, E=5, K=2, P=9, max_tokens=3, seed=11)
    check_equal(t, policy, [0, 2, 5, 9, 20], "pinned", False, unroll=True, width=5)
    check_equal(t, policy, [4, 9, 20], "pinned", True, unroll=True, width=5)


@pytest.mark.parametrize("mode", ["pinned", "sequential"])
@pytest.mark.parametrize("policy", POLICIES)
def test_real_mixtral(mixtral_trace, policy, mode):
    t = mixtral_trace.slice_passes(0, 120)
    check_equal(t, policy, [2, 12, 64, 128], mode, False)
    if mode == "pinned":
        check_equal(t, policy, [32, 64, 128], mode, True)


@pytest.mark.parametrize("name", ["qwen_excerpt", pytest.param("qwen", marks=REAL)])
@pytest.mark.parametrize("policy", POLICIES)
def test_real_qwen(request, name, policy):
    """Qwen3-30B-A3B (48 x 128, top-6): the prefill pass and the first decode passes (16 in the
    committed excerpt, 23 from the full trace)."""
    t = trace_named(request, name).slice_passes(0, 24 if name == "qwen" else 17)
    check_equal(t, policy, [61, 307, 1536], "pinned", False)
    check_equal(t, policy, [61, 307], "sequential", False)
    check_equal(t, policy, [307, 1536], "pinned", True)


@pytest.mark.slow
@pytest.mark.parametrize("policy", POLICIES)
def test_real_qwen_full(qwen_trace, policy):
    for mode in ("pinned", "sequential"):
        check_equal(qwen_trace, policy, [61, 307, 1536], mode, False)
    check_equal(qwen_trace, policy, [307, 1536], "pinned", True)


@pytest.mark.slow
@pytest.mark.parametrize("policy", POLICIES)
def test_real_mixtral_full(mixtral_trace, policy):
    for mode in ("pinned", "sequential"):
        for part in (False, True):
            check_equal(mixtral_trace, policy, [2, 12, 64, 128], mode, part)


# Hypothesis: fixed shapes (one compile per policy/mode), random routing content.
L_H, E_H, K_H, P_H, T_H = 2, 5, 2, 8, 3
CAPS_H = [0, 1, 2, 3, 5, 10]


@st.composite
def small_traces(draw):
    rows, off, phase, toks = [], [0], [], []
    for _ in range(P_H):
        nt = draw(st.integers(1, T_H))
        phase.append(0 if nt > 1 else 1)
        toks.append(nt)
        for _ in range(L_H):
            n = draw(st.integers(0, nt))
            for _ in range(n):
                rows.append(draw(st.permutations(range(E_H)))[:K_H])
            off.append(len(rows))
    if not rows:
        rows, off = [[0, 1]], [0] + [1] * (P_H * L_H)
    w = draw(st.lists(st.integers(0, 8), min_size=len(rows) * K_H, max_size=len(rows) * K_H))
    return make_trace(ModelShape("hyp", L_H, E_H, K_H, 1), np.zeros(P_H), phase, toks, off,
                      np.array(rows), np.array(w, np.float32).reshape(-1, K_H) / 8, source="hypothesis")


@pytest.mark.parametrize("mode", ["pinned", "sequential"])
@pytest.mark.parametrize("policy", POLICIES)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trace=small_traces(), partitioned=st.booleans())
def test_hypothesis_random_small_traces(policy, mode, trace, partitioned):
    check_equal(trace, policy, CAPS_H, mode, partitioned, width=E_H)
