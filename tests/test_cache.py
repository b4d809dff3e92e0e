"""The compile caches' pressure relief: past half of ``vm.max_map_count`` every compiled program
is dropped before the next compile, so a long process does not die at the mapping limit."""

from __future__ import annotations

import sys

import pytest

from specmd_jax.core import synthetic
from specmd_jax.run import cache
from specmd_jax.run.demand import _COMPILED, run_configs

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (Linux only)")


def _fill():
    t = synthetic.generate("olmoe-1b-7b", num_requests=1, prompt_len=4, gen_len=3, seed=1)
    run_configs(t, "lru", [4, 8], [1, 2], mode="pinned", partitioned=False)
    assert _COMPILED, "the demand engine keeps its executable"


@linux
def test_map_pressure_is_a_fraction_of_the_limit():
    p = cache.map_pressure()
    assert p is not None and 0 < p < 1


@linux
def test_relieve_clears_only_past_the_threshold():
    _fill()
    assert cache.relieve(threshold=1.0) is False and _COMPILED       # below: kept
    assert cache.relieve(threshold=0.0) is True and not _COMPILED    # above: dropped


@linux
def test_compile_goes_through_relief(monkeypatch):
    """Every compile site relieves first: with the threshold forced to zero, a new run leaves only
    its own executable behind."""
    _fill()
    calls = []
    real = cache.relieve
    monkeypatch.setattr(cache, "relieve", lambda threshold=0.5: calls.append(1) or real(0.0))
    t = synthetic.generate("olmoe-1b-7b", num_requests=1, prompt_len=5, gen_len=9, seed=2)
    run_configs(t, "fifo", [4, 8, 16], [1, 2, 3], mode="pinned", partitioned=False)
    assert calls and len(_COMPILED) == 1


def test_cached_builders_cache_and_clear(monkeypatch):
    monkeypatch.setattr(cache, "relieve", lambda threshold=0.5: False)
    f = cache.cached(lambda n: object())
    a = f(1)
    assert f(1) is a and f(2) is not a
    f.cache_clear()
    assert f(1) is not a
