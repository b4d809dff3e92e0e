"""Invariants and transform checks of the engine (no reference needed)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from conftest import REAL, random_trace, trace_named
from specmd_jax import reference
from specmd_jax.core import synthetic
from specmd_jax.run.mrc import lru_mrc
from specmd_jax.run.demand import run_configs
from specmd_jax.policies import POLICIES, REGISTRY, served_by

SCAN = served_by("scan")
from specmd_jax.run.records import run_records
from specmd_jax.core.steps import prepare_steps


@pytest.fixture(scope="module")
def olmoe():
    return synthetic.generate("olmoe-1b-7b", num_requests=2, prompt_len=10, gen_len=24, seed=5)


def _engine(t, policy, caps, seeds):
    """The JAX engine the registry gives ``policy``: the scan, or the record kernel (decay period 3
    for a decaying policy, so its halving runs)."""
    if policy in SCAN:
        return run_configs(t, policy, caps, seeds=seeds)
    return run_records(t, policy, caps, [3] * len(caps) if REGISTRY[policy].decayed else None)


def max_demand(trace):
    return int((prepare_steps(trace).ids >= 0).sum(1).max())


@pytest.mark.parametrize("policy", POLICIES)
def test_occupancy_and_conservation(olmoe, policy):
    caps = [0, 5, 10, 51, 100, 256, 1024]
    r = _engine(olmoe, policy, caps, seeds=range(len(caps)))
    hits, misses, dem = r.totals[:, 1], r.totals[:, 2], r.totals[:, 0]
    assert np.all(hits + misses == dem)
    assert np.all(r.max_occupancy <= np.array(caps))
    assert np.all(r.resident.sum(1) <= np.array(caps))
    assert np.all(r.totals[:, 3] <= misses)          # collisions are misses
    assert np.all(r.totals[:, 5] <= misses)          # bypass are misses
    # occupancy after every step (single unbatched run of the scan) never exceeds the capacity
    for c in ((10, 51) if policy in SCAN else ()):
        one = run_configs(olmoe, policy, [c], [caps.index(c)], batched=False, record=True)
        assert one.occupancy.shape == (olmoe.num_visits,)
        assert one.occupancy.max() <= c
        assert one.totals[0].tolist() == r.totals[caps.index(c)].tolist()   # vmapped slice == single run


def test_belady_dominates_where_no_visit_overflows(olmoe):
    md = max_demand(olmoe)
    caps = [md, md + 10, 100, 256, 512]
    hits = {p: _engine(olmoe, p, caps, seeds=[3] * len(caps)).totals[:, 1] for p in POLICIES}
    for p in POLICIES:
        assert np.all(hits["belady"] >= hits[p]), p
    # also on random traces with small capacities
    for seed in range(8):
        t = random_trace(seed=seed, P=14)
        md = max_demand(t)
        caps = list(range(md, 19))
        h = {p: _engine(t, p, caps, seeds=[1] * len(caps)).totals[:, 1] for p in POLICIES}
        for p in POLICIES:
            assert np.all(h["belady"] >= h[p]), (seed, p)


@pytest.mark.parametrize("policy", ["lru", "belady", "ls"])
def test_hits_monotone_in_capacity(olmoe, policy):
    caps = list(range(max_demand(olmoe), 1025, 37))
    hits = run_configs(olmoe, policy, caps).totals[:, 1]
    assert np.all(np.diff(hits) >= 0)


@pytest.mark.parametrize("name", ["olmoe", "qwen_excerpt", pytest.param("qwen", marks=REAL)])
def test_mrc_equals_engine_lru_and_ls(request, name):
    t = trace_named(request, name)
    t = t.slice_passes(0, min(30, t.num_passes))
    N = t.shape.num_ids
    md = max_demand(t)
    caps = np.unique(np.linspace(md, N, 9).astype(int))
    df = lru_mrc(t).set_index("capacity_slots")
    for pol in ("lru", "ls"):
        r = run_configs(t, pol, caps)
        assert df.loc[caps, "hits"].tolist() == r.totals[:, 1].tolist()
        assert df.loc[caps, "collisions"].tolist() == r.totals[:, 3].tolist()
    assert df.loc[caps, "exact"].all() and not df.loc[md - 1, "exact"]


def test_mrc_sequential_equals_engine(olmoe):
    seq = lru_mrc(olmoe, mode="sequential").set_index("capacity_slots")
    r = run_configs(olmoe, "lru", [1, 7, 64, 300], mode="sequential")
    assert seq.loc[[1, 7, 64, 300], "hits"].tolist() == r.totals[:, 1].tolist()


def test_least_stale_equals_lru_in_demand_only_reference(mixtral_trace):
    """The reference implements Least-Stale's full key; in demand-only replay it equals LRU."""
    t = mixtral_trace.slice_passes(0, 60)
    for mode in ("pinned", "sequential"):
        for c in (2, 12, 64):
            a = reference.simulate(t, "ls", c, mode=mode)
            b = reference.simulate(t, "lru", c, mode=mode)
            assert a.totals == b.totals and a.per_layer == b.per_layer and a.resident == b.resident


def test_second_sweep_does_not_recompile(olmoe, caplog):
    """New capacities and seeds with the same shapes reuse the compiled program."""
    import logging

    import jax

    r1 = run_configs(olmoe, "belady", [10, 20, 30, 40])
    caplog.set_level(logging.DEBUG)
    with jax.log_compiles():
        r2 = run_configs(olmoe, "belady", [90, 100, 110, 120], seeds=[1, 2, 3, 4])
    compiles = [m for m in caplog.messages if "Compiling" in m and "run" in m]
    assert not compiles, compiles
    assert not np.array_equal(r1.totals, r2.totals)
    # a new batch size is a new shape: it compiles (the check above can fail)
    with jax.log_compiles():
        run_configs(olmoe, "belady", [90, 100, 110])
    assert any("Compiling" in m and "run" in m for m in caplog.messages)


def test_capacity_zero_bypasses_everything(olmoe):
    r = run_configs(olmoe, "lru", [0])
    assert r.totals[0, 1] == 0 and r.totals[0, 5] == r.totals[0, 2] == r.totals[0, 0]


def test_reference_imports_no_jax():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in ('jax', 'jaxlib'): raise ImportError('jax blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import specmd_jax.reference.demand as r, specmd_jax.core.synthetic as s, specmd_jax.reference.timed as rt\n"
        "from specmd_jax.core.miss import MissConfig, PRECISION_PRESETS\n"
        "t = s.generate(num_requests=1, prompt_len=4, gen_len=4)\n"
        "rt.simulate_timed(t, 'lhu', 50, miss=MissConfig('cascade'), precision=PRECISION_PRESETS['int4-int2'])\n"
        "print(r.simulate(t, 'ls', 50).totals['demands'])\n"
        "assert not any(m.split('.')[0] in ('jax', 'jaxlib') for m in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) > 0


@pytest.mark.parametrize("policy", ["lfu", "lru", "random"])
def test_config_blocks_equal_one_batch(olmoe, policy):
    """Processing configurations in blocks inside a step (padded to whole blocks) changes nothing."""
    caps = [5, 10, 51, 100, 256]
    a = run_configs(olmoe, policy, caps, seeds=range(5), config_block=0)
    b = run_configs(olmoe, policy, caps, seeds=range(5), config_block=2)
    assert np.array_equal(a.totals, b.totals) and np.array_equal(a.per_layer, b.per_layer)
    assert np.array_equal(a.resident, b.resident) and np.array_equal(a.max_occupancy, b.max_occupancy)


@pytest.mark.parametrize("policy", ["lru", "belady", "fifo", "lfu"])
def test_split_widths_equal_one_width(olmoe, policy):
    """Decode passes run at width K, prefill passes at full width: identical results."""
    caps = [5, 51, 256]
    a = run_configs(olmoe, policy, caps, split_widths=False)
    b = run_configs(olmoe, policy, caps, split_widths=True)
    assert np.array_equal(a.totals, b.totals) and np.array_equal(a.per_layer, b.per_layer)
    assert np.array_equal(a.resident, b.resident)
    one = run_configs(olmoe, policy, [51], batched=False, record=True, split_widths=True)
    assert one.occupancy.shape == (olmoe.num_visits,) and one.occupancy.max() <= 51
