"""Drivers of the keyed-score kernel (:mod:`specmd_jax.kernels.keyed`): every (weights, capacity)
configuration in one compiled, vmapped scan, as counters or a tidy table."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax import lax

from specmd_jax.core.counters import DEMAND_COUNTERS
from specmd_jax.core import checks
from specmd_jax.kernels import keyed
from specmd_jax.core.clock import pass_times
from specmd_jax.core.score import FEATURES, NF, bounds_of, check_bounds
from specmd_jax.core.timing import TICK_S
from specmd_jax.core.trace import PREFILL, Trace
from specmd_jax.core.steps import StepArrays, prepare_steps


@partial(jax.jit, static_argnames=("L", "E", "P"))
def _run(xs, qs, caps, L, E, P):
    def one(q, cap):
        def body(st, x):
            return keyed.step(st, x, q, cap, L, E), None
        st, _ = lax.scan(body, keyed.init(L * E, P), xs)
        return st["cnt"], st["res"], st["occ"], st["pm"]
    return jax.vmap(one)(qs, caps)


def run_scores(trace: Trace, qs, capacities, steps: StepArrays | None = None) -> dict:
    """Replay ``trace`` under hard score weights ``qs`` (int[C, NF]) at ``capacities`` (int[C]),
    all C configurations in one compiled, vmapped scan.

    Returns:
        ``{counter: int64[C]}`` for ``DEMAND_COUNTERS``; ``pass_misses`` (int64[C, P], what the
        demand-only timing model of :func:`specmd_jax.core.clock.pass_times` turns into pass
        times), ``prefill_misses`` (int64[C], their sum over prefill passes), ``resident``
        (bool[C, N]) and ``occ``.

    Raises:
        ValueError: weights that could overflow int32 on this trace, or mismatched shapes.
    """
    st = steps if steps is not None else prepare_steps(trace, "pinned")
    qs = np.atleast_2d(np.asarray(qs, np.int64))
    caps = checks.capacities(capacities)
    problem = checks.count_problem(trace, bits=1)   # demand-only: no bits-served counter
    if problem:
        raise ValueError(problem)
    if qs.shape[1] != NF or qs.shape[0] != caps.shape[0]:
        raise ValueError(f"qs must be [C, {NF}] ({', '.join(FEATURES)}) and capacities [C]; got {qs.shape}, {caps.shape}")
    b = bounds_of(st)
    for q in qs:
        check_bounds(q, b)
    xs = (jnp.asarray(st.step), jnp.asarray(st.pass_), jnp.asarray(st.layer), jnp.asarray(st.new_pass),
          jnp.asarray(st.ids), jnp.asarray(st.units))
    cnt, res, occ, pm = _run(xs, jnp.asarray(qs, jnp.int32), jnp.asarray(caps, jnp.int32),
                             L=trace.shape.num_layers, E=trace.shape.num_experts, P=trace.num_passes)
    cnt = np.asarray(cnt, np.int64)
    out = {k: cnt[:, i] for i, k in enumerate(DEMAND_COUNTERS)}
    out["pass_misses"] = np.asarray(pm, np.int64)
    out["prefill_misses"] = out["pass_misses"][:, np.asarray(trace.pass_phase) == PREFILL].sum(axis=1)
    out["resident"], out["occ"] = np.asarray(res), np.asarray(occ)
    return out


def score_table(trace: Trace, qs, capacities, labels=None, steps: StepArrays | None = None) -> pd.DataFrame:
    """:func:`run_scores` as a tidy table: one row per configuration with ``label``,
    ``capacity_slots``, the counters, ``prefill_misses``, ``hit_rate`` and ``collision_rate``
    (per demand); ``df.attrs["pass_misses"]`` holds int64[C, P]."""
    r = run_scores(trace, qs, capacities, steps)
    caps = checks.capacities(capacities)
    df = pd.DataFrame({"label": list(labels) if labels is not None else [f"q{i}" for i in range(len(caps))],
                       "capacity_slots": caps, **{k: r[k] for k in DEMAND_COUNTERS}, "prefill_misses": r["prefill_misses"]})
    df.attrs["pass_misses"] = r["pass_misses"]
    df["capacity_fraction"] = df["capacity_slots"] / trace.shape.num_ids
    df["hit_rate"] = df["hits"] / df["demands"].clip(lower=1)
    df["collision_rate"] = df["collisions"] / df["demands"].clip(lower=1)
    return df


def times_ms(trace: Trace, pass_misses, hw) -> dict:
    """Demand-only ``ttft_ms`` and ``tpot_ms`` (float[C]) of replays with per-pass misses
    ``pass_misses`` (int[C, P]): :func:`specmd_jax.core.clock.pass_times` (no prefetch, so a
    visit stalls exactly misses x transfer), in milliseconds."""
    tm = pass_times(trace, pass_misses, hw)
    return {"ttft_ms": tm["ttft_ticks"] * TICK_S * 1e3, "tpot_ms": tm["tpot_ticks"] * TICK_S * 1e3}
