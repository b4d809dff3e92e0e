"""Conformance of the policy registry: every policy x mode x engine it claims.

Built from ``specmd_jax.policies.REGISTRY``: every policy runs on the reference in every mode it is
defined in; every JAX fast path an entry claims must run (the ``engine`` column names it) and give
the reference's numbers exactly; a path it does not claim must not be taken. ``conf/policy`` is
checked against the registry.
"""

from pathlib import Path

import numpy as np
import pytest
import yaml

from specmd_jax import reference
from specmd_jax.config.curve import ALIASES
from specmd_jax.api import sweep
from specmd_jax.core import synthetic
from specmd_jax.core.counters import DEMAND_COUNTERS, TIMED_COUNTERS
from specmd_jax.core.prefetch import PrefetchConfig
from specmd_jax.core.score import preset_weights
from specmd_jax.core.steps import prepare_steps
from specmd_jax.core.timing import Hardware
from specmd_jax.policies import MODES, POLICIES, REGISTRY, Policy, get, list_policies, served_by

CONF = Path(__file__).resolve().parents[1] / "conf" / "policy"
CAPS = [10, 51, 256]           # below and above one token cycle (16 x 8 = 128 slots) of OLMoE
STACK_CAPS = [64, 256, 600]    # never below a visit's demand (global pool): the stack path is exact there
STACK_CAPS_PER_LAYER = [512, 768, 1024]   # 32+ slots per layer, the widest visit's demand
HW = Hardware(bandwidth_gbps=8.0, latency_us=5.0)
TIMED = [c for c in TIMED_COUNTERS if c != "stall_ticks"] + ["stall_ms", "ttft_ms", "tpot_ms", "bytes_moved"]


@pytest.fixture(scope="module")
def trace():
    return synthetic.generate("olmoe-1b-7b", num_requests=1, prompt_len=4, gen_len=6, seed=1, pred_noise=1.0)


def _claims():
    return [(n, m) for n, p in REGISTRY.items() for m in p.modes]


@pytest.mark.parametrize("name,mode", _claims())
def test_every_policy_runs_on_the_reference_in_every_mode_it_is_defined_in(trace, name, mode):
    if mode == "demand":
        df = sweep(trace, name, CAPS, engine="reference")
        assert set(df["engine"]) == {"reference"}
    else:
        df = sweep(trace, name, CAPS, timing=mode, prefetch=PrefetchConfig("recorded", "topk"), hardware=[HW],
                   engine="reference")
        assert set(df["engine"]) == {f"reference-{mode}"}
    late = df["late"] if "late" in df else 0      # timed: demanded while its prefetch was in flight
    assert (df["demands"] > 0).all() and (df["hits"] + late + df["misses"] == df["demands"]).all()


@pytest.mark.parametrize("name", [n for n, p in REGISTRY.items() if "demand" in p.modes])
@pytest.mark.parametrize("mode,partitioned", [("pinned", False), ("sequential", False), ("pinned", True)])
def test_demand_fast_paths_equal_the_reference(trace, name, mode, partitioned):
    pol = REGISTRY[name]
    seeds = [0, 7] if pol.seeded else [0]
    kw = dict(mode=mode, partitioned=partitioned, seeds=seeds)
    if pol.decayed:
        kw["decay_periods"] = [0, 3, 40]
    paths = [("scan", CAPS), ("stack", STACK_CAPS_PER_LAYER if partitioned else STACK_CAPS), ("keyed", CAPS),
             ("records", CAPS)]
    for path, caps in paths:
        ref = sweep(trace, name, caps, engine="reference", **kw)
        if path == "keyed" and (mode != "pinned" or partitioned):   # the keyed kernel: pinned, global pool
            if pol.served(path):
                with pytest.raises(ValueError, match="pinned mode on the global pool"):
                    sweep(trace, name, caps, engine=path, **kw)
            continue
        if pol.served(path):
            df = sweep(trace, name, caps, engine=path, **kw)
            assert set(df["engine"]) == {f"jax-{path}"}, (name, path)
            cols = list(DEMAND_COUNTERS) + ["max_occupancy", "hits_decode"]
            assert df[cols].equals(ref[cols]), (name, path, mode, partitioned)
            assert list(df.columns) == list(ref.columns)
            assert np.array_equal(df.attrs["resident"], ref.attrs["resident"]), (name, path)
        else:
            with pytest.raises(ValueError):
                sweep(trace, name, caps, engine=path, **kw)


@pytest.mark.parametrize("name", served_by("keyed"))
def test_the_generic_keyed_kernel_runs_every_policy_with_a_score_preset(trace, name):
    from specmd_jax.run.keyed import run_scores
    st = prepare_steps(trace, "pinned")
    q = REGISTRY[name].score(st.num_steps)
    assert np.array_equal(q, preset_weights(name, st.num_steps))
    r = run_scores(trace, np.stack([q] * len(CAPS)), CAPS, st)
    for i, c in enumerate(CAPS):
        ref = reference.simulate(trace, name, c)
        assert [int(r[k][i]) for k in DEMAND_COUNTERS] == [ref.totals[k] for k in DEMAND_COUNTERS], (name, c)


@pytest.mark.parametrize("name,mode", [(n, m) for n, m in _claims() if m != "demand"])
def test_timed_fast_paths_are_taken_when_claimed_and_equal_the_reference(trace, name, mode):
    kw = dict(timing=mode, prefetch=PrefetchConfig("recorded", "topk"), hardware=[HW])
    ref = sweep(trace, name, CAPS, engine="reference", **kw)
    df = sweep(trace, name, CAPS, engine="jax", **kw)
    want = f"jax-{mode}" if REGISTRY[name].served(mode) else f"reference-{mode}"
    assert set(df["engine"]) == {want}, (name, mode)
    bad = [c for c in TIMED if not np.array_equal(df[c].to_numpy(np.float64), ref[c].to_numpy(np.float64),
                                                 equal_nan=True)]
    assert not bad, (name, mode, {c: (df[c].tolist(), ref[c].tolist()) for c in bad})
    assert list(df.columns) == list(ref.columns)


def test_a_new_policy_is_one_registry_entry(trace, monkeypatch):
    """MRU (evict the most recently used), written only as a registry entry: its key for the
    reference and its feature-score weights. It runs in every mode on the reference and, in
    demand-only replay, in JAX on the generic keyed kernel, equal to the reference."""
    from specmd_jax.core.score import FEATURES, NF
    age = FEATURES.index("age")

    def mru_weights(num_steps):
        q = np.zeros(NF, np.int64)
        q[age] = 1                 # keep score = age: the most recent (age 0) is evicted first
        return q

    mru = Policy("mru", "most recently used first", lambda r, g, l, E, score, nextuse: (-r["last"], g),
                 score=mru_weights)
    monkeypatch.setitem(REGISTRY, "mru", mru)
    df = sweep(trace, "mru", CAPS)
    ref = sweep(trace, "mru", CAPS, engine="reference")
    assert set(df["engine"]) == {"jax-keyed"} and set(ref["engine"]) == {"reference"}
    cols = list(DEMAND_COUNTERS) + ["max_occupancy"]
    assert df[cols].equals(ref[cols])
    assert not df["hits"].equals(sweep(trace, "lru", CAPS, engine="reference")["hits"])   # it is not LRU
    for timing in ("instant", "async"):
        t = sweep(trace, "mru", CAPS, timing=timing, prefetch=PrefetchConfig("recorded", "topk"), hardware=[HW])
        assert set(t["engine"]) == {f"reference-{timing}"} and (t["demands"] > 0).all()


def test_the_registry_is_consistent():
    assert set(POLICIES) == {n for n, p in REGISTRY.items() if "demand" in p.modes}
    assert list(list_policies()) == list(POLICIES) and "lhu" in list_policies("async")
    assert served_by("keyed") == tuple(n for n, p in REGISTRY.items() if p.score is not None)
    with pytest.raises(ValueError, match="unknown fast path"):
        served_by("gpu")
    with pytest.raises(ValueError, match="unknown policy 'lrv'; known: lru"):
        get("lrv")
    with pytest.raises(ValueError, match="fast paths .* serve modes it is not defined in"):
        Policy("x", "x", REGISTRY["lru"].key, modes=("async",), fast=frozenset({"scan"}))
    with pytest.raises(ValueError, match="unknown fast paths"):
        Policy("x", "x", REGISTRY["lru"].key, fast=frozenset({"gpu"}))
    assert set(MODES) == {"demand", "instant", "async"}


def test_a_false_claim_is_caught(trace, monkeypatch):
    """The conformance checks can fail: a registry entry claiming the instant kernel for a policy the
    kernel does not implement makes the kernel refuse it (nothing silently falls back)."""
    import dataclasses

    from specmd_jax.kernels import instant
    fake = dataclasses.replace(REGISTRY["sb"], fast=REGISTRY["sb"].fast | {"instant"})
    monkeypatch.setitem(REGISTRY, "sb", fake)
    with pytest.raises(ValueError, match="supports"):
        sweep(trace, "sb", CAPS, timing="instant", prefetch=PrefetchConfig("recorded", "topk"), hardware=[HW],
              engine="jax")
    assert "sb" not in instant.PF_POLICIES


def _conf_policies():
    for f in sorted(CONF.glob("*.yaml")):
        yield f.stem, yaml.safe_load(f.read_text())


def test_conf_policy_names_registry_policies():
    seen = {}
    for stem, cfg in _conf_policies():
        names = cfg["policies"]
        extra = {"score"} if "score_policy" in cfg else set()
        if stem == "bigmoeonedge":           # BigMoeOnEdge's per-layer names (convention=bigmoeonedge only)
            extra = set(ALIASES)
        bad = [n for n in names if n not in POLICIES and n not in extra]
        assert not bad, f"conf/policy/{stem}.yaml: {bad} are not demand-mode policies of the registry"
        seen[stem] = names
    for n in POLICIES:
        assert seen.get(n) == [n], f"conf/policy/{n}.yaml (policies: [{n}]) is missing"
    deterministic = [n for n in POLICIES if not REGISTRY[n].seeded and not REGISTRY[n].decayed]
    assert sorted(seen["all"]) == sorted(deterministic), ("conf/policy/all.yaml must list every deterministic policy "
                                                          "without a parameter axis")
