"""Shared fixtures: real traces from ../shared/traces (never copied into the repo) and small
random traces for exhaustive checks against the reference simulator."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from specmd_jax.core.readers import load_trace
from specmd_jax.core.trace import ModelShape, make_trace

QWEN = "bigmoeonedge-route-trace/qwen.route.csv"
MIXTRAL = "mixtral8x7b-speculative-moe/routing_data_collected/gsm8k_2_routing.jsonl"


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Free the compiled programs of each test module when it ends: a worker that runs many
    modules otherwise keeps hundreds of executables (memory and memory mappings) alive."""
    yield
    from specmd_jax.run.cache import clear
    clear()


@pytest.fixture(autouse=True)
def _relieve_memory_mappings():
    """After each test, clear the compiled programs if this worker holds more than half of
    ``vm.max_map_count``: one module of many compiles (test_kernel_demand.py) otherwise passes the
    limit and the worker dies with a segmentation fault (seen in CI: 65,340 mappings)."""
    yield
    from specmd_jax.run.cache import relieve
    relieve()


EXCERPT = Path(__file__).resolve().parent / "data" / "qwen3_excerpt.route.csv"   # Apache-2.0, see data/README.md
REAL_FIXTURES = {"traces_dir", "qwen_trace", "mixtral_trace"}
_MISSING = "real traces not found at"


def _traces_path() -> Path:
    env = os.environ.get("SPECMD_TRACES")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "traces"


def _traces_required() -> bool:
    return os.environ.get("SPECMD_REQUIRE_TRACES", "") not in ("", "0")


def pytest_collection_modifyitems(config, items):
    """Mark every test that needs the real traces (``-m "not real_traces"`` deselects them)."""
    for item in items:
        if REAL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.real_traces)


def pytest_terminal_summary(terminalreporter):
    """One loud line when real-trace tests were skipped (a lone clone): how many and how to run them."""
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if _MISSING in str(r.longrepr)]
    if skipped:
        terminalreporter.write_line(
            f"SKIPPED {len(skipped)} real-trace tests: {_MISSING} {_traces_path()} (set SPECMD_TRACES to the "
            "shared/traces folder; the excerpt in tests/data still ran; CI sets SPECMD_REQUIRE_TRACES=1 "
            "and fails instead)", red=True, bold=True)


@pytest.fixture(scope="session")
def traces_dir() -> Path:
    """The real traces folder: ``$SPECMD_TRACES`` or ``../shared/traces``. Absent, the test skips
    (a lone clone) or, with ``SPECMD_REQUIRE_TRACES=1`` (CI), fails."""
    d = _traces_path()
    if not d.is_dir():
        msg = f"{_MISSING} {d}; set SPECMD_TRACES to the shared/traces folder"
        if _traces_required():
            pytest.fail(msg + " (SPECMD_REQUIRE_TRACES is set)")
        pytest.skip(msg)
    return d


@pytest.fixture(scope="session")
def qwen_excerpt():
    """The real Qwen3 routing excerpt committed in tests/data (prefill + 16 decode steps)."""
    return load_trace(str(EXCERPT))


@pytest.fixture(scope="session")
def qwen_trace(traces_dir):
    return load_trace(str(traces_dir / QWEN))


@pytest.fixture(scope="session")
def mixtral_trace(traces_dir):
    return load_trace(str(traces_dir / MIXTRAL))


def random_trace(L=3, E=6, K=2, P=12, max_tokens=3, seed=0, weights=True, empty_cells=True):
    """A small random trace: mixed prefill (several tokens) and decode passes, some empty cells."""
    rng = np.random.default_rng(seed)
    rows, off, phase, toks = [], [0], [], []
    for _ in range(P):
        nt = int(rng.integers(1, max_tokens + 1))
        phase.append(0 if nt > 1 else 1)
        toks.append(nt)
        for _ in range(L):
            n = int(rng.integers(0 if empty_cells else 1, nt + 1))
            rows.extend(rng.choice(E, K, replace=False) for _ in range(n))
            off.append(len(rows))
    w = rng.random((len(rows), K)).astype(np.float32) if weights else None
    return make_trace(ModelShape("rand", L, E, K, 100), np.zeros(P), phase, toks, off,
                      np.array(rows).reshape(-1, K), w, source=f"random_trace(seed={seed})")


REAL = pytest.mark.real_traces


def trace_named(request, name: str):
    """A test's trace by name, so one test can run on synthetic, excerpt and full real traces and
    skip only the last on a lone clone: ``olmoe`` (the module's fixture), ``qwen_excerpt``,
    ``qwen`` / ``mixtral`` (full real traces; parametrize them with ``marks=REAL``)."""
    fixture = {"qwen": "qwen_trace", "mixtral": "mixtral_trace"}.get(name, name)
    return request.getfixturevalue(fixture)


def assert_async_row_equals_reference(r, b, ref, ctx, counters):
    """Configuration ``b`` of an asynchronous-engine result ``r`` equals the timed reference's
    ``ref``: totals, per-layer counts, the prefetch ``counters``, resident set, occupancy, every
    pass time and the per-layer stall."""
    import numpy as np
    from specmd_jax.core.counters import DEMAND_COUNTERS
    assert dict(zip(DEMAND_COUNTERS, r.totals[b].tolist())) == {k: ref.totals[k] for k in DEMAND_COUNTERS}, ctx
    for k, name in enumerate(DEMAND_COUNTERS):
        assert r.per_layer[b, k].tolist() == ref.per_layer[name], f"{ctx} per-layer {name}"
    assert {k: int(r.pf_totals[k][b]) for k in counters} == {k: ref.totals[k] for k in counters}, ctx
    assert np.flatnonzero(r.resident[b]).tolist() == ref.resident, ctx
    assert r.max_occupancy[b] == ref.max_occupancy, ctx
    assert r.pass_ticks[b].tolist() == ref.pass_ticks, ctx
    assert r.stall_ticks[b].tolist() == ref.per_layer["stall_ticks"], ctx


def hand_plan(t, per_visit):
    """A prefetch plan written by hand: ``per_visit[s]`` = the ids proposed after visit ``s``."""
    from specmd_jax.core.prefetch import PrefetchConfig, PrefetchPlan
    Q = max(1, max(len(v) for v in per_visit))
    ids = np.full((t.num_visits, Q), -1, np.int32)
    for s, v in enumerate(per_visit):
        ids[s, : len(v)] = v
    return PrefetchPlan(ids=ids, config=PrefetchConfig("oracle", "all"), source="hand")


@pytest.fixture(scope="module")
def traces():
    """Three small traces by name, for kernels checked against the reference case by case: random,
    synthetic (OLMoE-shaped) and the real Qwen3 excerpt."""
    from specmd_jax.core import synthetic
    return {"random": random_trace(L=3, E=6, K=2, P=14, seed=4),
            "synthetic": synthetic.generate("olmoe-1b-7b", num_requests=2, prompt_len=4, gen_len=6, seed=1),
            "excerpt": load_trace(str(EXCERPT))}
