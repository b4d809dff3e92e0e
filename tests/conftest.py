"""Shared fixtures: real traces from ../shared/traces (never copied into the repo) and small
random traces for exhaustive checks against the reference simulator."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from specmd_jax.readers import load_trace
from specmd_jax.trace import ModelShape, make_trace

QWEN = "bigmoeonedge-route-trace/qwen.route.csv"
MIXTRAL = "mixtral8x7b-speculative-moe/routing_data_collected/gsm8k_2_routing.jsonl"


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Free the compiled programs of each test module when it ends: a worker that runs many
    modules otherwise keeps hundreds of executables (memory and memory mappings) alive."""
    yield
    from specmd_jax.runner import clear_compiled
    clear_compiled()


@pytest.fixture(scope="session")
def traces_dir() -> Path:
    env = os.environ.get("SPECMD_TRACES")
    d = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "traces"
    if not d.is_dir():  # a hard failure, not a skip: these tests must run in CI
        pytest.fail(f"real traces not found at {d}; set SPECMD_TRACES to the shared/traces folder")
    return d


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


def hand_plan(t, per_visit):
    """A prefetch plan written by hand: ``per_visit[s]`` = the ids proposed after visit ``s``."""
    from specmd_jax.prefetch import PrefetchConfig, PrefetchPlan
    Q = max(1, max(len(v) for v in per_visit))
    ids = np.full((t.num_visits, Q), -1, np.int32)
    for s, v in enumerate(per_visit):
        ids[s, : len(v)] = v
    return PrefetchPlan(ids=ids, config=PrefetchConfig("oracle", "all"), source="hand")
