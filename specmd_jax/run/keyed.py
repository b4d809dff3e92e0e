"""The hard parametric-score policy in JAX: exact, vmapped over (weights, capacity).

One pure step per (configuration, visit), pinned visits, one global pool, the insert/evict
rules of :mod:`specmd_jax.core.semantics`; the victims are the evictable residents with the lowest
int32 keep score ``sum_i q_i f_i`` (:mod:`specmd_jax.core.score`), lowest id first on ties
(``lax.top_k`` returns equal values in index order). Dense per-expert tables (``N = L * E``): resident, last use,
insertion step, uses, cumulative gate units, evicted-this-pass. Equal to
``reference.simulate(trace, "score", cap, weights=q)`` exactly (tested).

Cost: one ``top_k`` of the ``W`` (widest visit) lowest of ``N`` keys per visit and configuration. This engine is what evaluates a
learned score and what the tuner's early stopping calls; it is not the sweep fast path of the
fixed rules (:mod:`specmd_jax.kernels.demand`).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax import lax

from specmd_jax.core import checks
from specmd_jax.run.timed import timing
from specmd_jax.core.score import FEATURES, NF, bounds_of, check_bounds
from specmd_jax.core.timing import TICK_S
from specmd_jax.core.trace import PREFILL, Trace
from specmd_jax.core.steps import StepArrays, prepare_steps

COUNTERS = ("demands", "hits", "misses", "collisions", "evictions", "bypass")
INT32_MAX = np.iinfo(np.int32).max


def demand_features(s, l, last, uses, ins, gate, L: int, E: int) -> tuple:
    """The demand-only features of :mod:`specmd_jax.core.score` (``DEMAND_FEATURES`` order) for all
    ``N = L * E`` experts at step ``s`` (a visit of layer ``l``), elementwise; the JAX twin of
    :func:`specmd_jax.core.score.features`. ``uses``/``ins`` may be expectations (the relaxation)."""
    layer = jnp.arange(L * E, dtype=jnp.int32) // E
    return (s - last, uses, s - ins, (layer - l - 1) % L, jnp.abs(layer - l), last < s - l, gate)


def _init(N, P):
    z = jnp.zeros(N, jnp.int32)
    return dict(res=jnp.zeros(N, bool), gone=jnp.zeros(N, bool), last=z, ins=z, uses=z, gate=z,
                occ=jnp.int32(0), cnt=jnp.zeros(len(COUNTERS), jnp.int32), pm=jnp.zeros(P, jnp.int32))


def _step(st, x, q, cap, L, E):
    """One visit of one configuration. ``q``: int32[NF]; ``cap``: int32[]."""
    N = L * E
    s, p, l, new_pass, ids, units = x
    W = min(int(ids.shape[-1]), N)
    valid = ids >= 0
    idx = jnp.where(valid, ids, N)
    d = jnp.zeros(N, bool).at[idx].set(True, mode="drop")
    gate = st["gate"].at[idx].add(units, mode="drop")
    res = st["res"]
    gone = jnp.where(new_pass, False, st["gone"])
    hit, miss = d & res, d & ~res
    coll = miss & gone
    nmiss = jnp.sum(miss, dtype=jnp.int32)
    free = cap - st["occ"]
    evictable = res & ~d
    nev = jnp.clip(nmiss - free, 0, jnp.sum(evictable, dtype=jnp.int32))
    f = demand_features(s, l, st["last"], st["uses"], st["ins"], gate, L, E)  # pf, level: 0 here
    score = sum(q[i] * f[i].astype(jnp.int32) for i in range(len(f)))
    key = jnp.where(evictable, score, INT32_MAX)
    # at most W victims (nev <= misses <= W): the W lowest keys; top_k puts equal values in
    # index order, so ties go to the lowest id
    _, low = lax.top_k(-key, W)
    victim = jnp.zeros(N, bool).at[low].set(jnp.arange(W) < nev) & evictable
    na = jnp.minimum(nmiss, free + nev)
    admitted = miss & (jnp.cumsum(miss, dtype=jnp.int32) <= na)  # lowest ids first
    used = hit | admitted
    st = dict(res=(res & ~victim) | admitted, gone=gone | victim,
              last=jnp.where(used, s, st["last"]), ins=jnp.where(admitted, s, st["ins"]),
              uses=jnp.where(hit, st["uses"] + 1, jnp.where(admitted, 1, st["uses"])), gate=gate,
              occ=st["occ"] - nev + na,
              cnt=st["cnt"] + jnp.stack([jnp.sum(d, dtype=jnp.int32), jnp.sum(hit, dtype=jnp.int32), nmiss,
                                         jnp.sum(coll, dtype=jnp.int32), nev, nmiss - na]),
              pm=st["pm"].at[p].add(nmiss))
    return st


@partial(jax.jit, static_argnames=("L", "E", "P"))
def _run(xs, qs, caps, L, E, P):
    def one(q, cap):
        def body(st, x):
            return _step(st, x, q, cap, L, E), None
        st, _ = lax.scan(body, _init(L * E, P), xs)
        return st["cnt"], st["res"], st["occ"], st["pm"]
    return jax.vmap(one)(qs, caps)


def run_scores(trace: Trace, qs, capacities, steps: StepArrays | None = None) -> dict:
    """Replay ``trace`` under hard score weights ``qs`` (int[C, NF]) at ``capacities`` (int[C]),
    all C configurations in one compiled, vmapped scan.

    Returns:
        ``{counter: int64[C]}`` for ``COUNTERS``; ``pass_misses`` (int64[C, P], what the
        demand-only timing model of :func:`specmd_jax.run.timed.timing` turns into pass
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
    out = {k: cnt[:, i] for i, k in enumerate(COUNTERS)}
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
                       "capacity_slots": caps, **{k: r[k] for k in COUNTERS}, "prefill_misses": r["prefill_misses"]})
    df.attrs["pass_misses"] = r["pass_misses"]
    df["capacity_fraction"] = df["capacity_slots"] / trace.shape.num_ids
    df["hit_rate"] = df["hits"] / df["demands"].clip(lower=1)
    df["collision_rate"] = df["collisions"] / df["demands"].clip(lower=1)
    return df


def times_ms(trace: Trace, pass_misses, hw) -> dict:
    """Demand-only ``ttft_ms`` and ``tpot_ms`` (float[C]) of replays with per-pass misses
    ``pass_misses`` (int[C, P]): :func:`specmd_jax.run.timed.timing` (no prefetch, so a
    visit stalls exactly misses x transfer), in milliseconds."""
    tm = timing(trace, pass_misses, hw)
    return {"ttft_ms": tm["ttft_ticks"] * TICK_S * 1e3, "tpot_ms": tm["tpot_ticks"] * TICK_S * 1e3}


def sweep_score(trace: Trace, policy, fractions=None, capacities=None, hardware=None,
                sensitivities: bool = False, tau: float = 0.1) -> pd.DataFrame:
    """Replay ``trace`` under a named score policy at several cache sizes (one compiled vmap).

    Args:
        policy: a :class:`~specmd_jax.core.score.ScorePolicy`, or the path of one saved as JSON.
        fractions / capacities: cache sizes (fractions of all expert bytes, or slots); one of them.
        hardware: optional :class:`~specmd_jax.core.timing.Hardware` for ``ttft_ms`` and ``tpot_ms``.
        sensitivities: with ``hardware``, add the relaxation's gradients per row
            (:func:`specmd_jax.learn.soft.sensitivities` at temperature ``tau``):
            ``dttft_dbandwidth_s_per_gbps``, ``dttft_dcapacity_s_per_gib``,
            ``dtpot_dbandwidth_s_per_gbps``, ``dtpot_dcapacity_s_per_gib``.

    Returns:
        One row per size: ``policy`` (``score:<name>``), ``capacity_slots``,
        ``capacity_fraction``, the counters, ``hit_rate``, ``collision_rate`` (per demand).
    """
    from specmd_jax.core.capacity import capacity_slots
    from specmd_jax.core.score import ScorePolicy
    pol = policy if isinstance(policy, ScorePolicy) else ScorePolicy.load(policy)
    if (fractions is None) == (capacities is None):
        raise ValueError("give exactly one of fractions= or capacities=")
    caps = capacity_slots(trace, fractions) if fractions is not None else np.asarray(capacities, np.int64)
    st = prepare_steps(trace, "pinned")
    q = pol.q(st, trace.shape.num_layers)
    df = score_table(trace, np.stack([q] * len(caps)), caps, labels=[f"score:{pol.name}"] * len(caps), steps=st)
    pass_misses = df.attrs["pass_misses"]
    df = df.rename(columns={"label": "policy"})
    if fractions is not None:  # as requested, like sj.sweep (the slots are floor(f * L * E))
        df["capacity_fraction"] = np.asarray(fractions, np.float64).reshape(-1)
    df["capacity_bytes"] = df["capacity_slots"] * trace.shape.expert_bytes
    if hardware is not None:
        for k, v in times_ms(trace, pass_misses, hardware).items():
            df[k] = v
    if sensitivities:
        if hardware is None:
            raise ValueError("sensitivities=True needs hardware= (the timing model they differentiate)")
        from specmd_jax.learn.soft import sensitivities as sens
        rows = sens(trace, pol.weights, (np.asarray(caps) / trace.shape.num_ids).tolist(), hardware, tau=tau)
        for k in ("dttft_dbandwidth_s_per_gbps", "dttft_dcapacity_s_per_gib", "dtpot_dbandwidth_s_per_gbps",
                  "dtpot_dcapacity_s_per_gib"):
            df[k] = [r[k] for r in rows]
    return df
