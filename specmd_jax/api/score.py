"""Sweep a named eviction score (a :class:`~specmd_jax.core.score.ScorePolicy`) over cache sizes."""

from __future__ import annotations

import numpy as np
import pandas as pd

from specmd_jax.core.capacity import capacity_slots
from specmd_jax.core.score import ScorePolicy
from specmd_jax.core.steps import prepare_steps
from specmd_jax.core.trace import Trace
from specmd_jax.learn.soft import sensitivities as sens
from specmd_jax.run.keyed import score_table, times_ms


def sweep_weights(trace: Trace, policy, fractions=None, capacities=None, hardware=None,
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
        rows = sens(trace, pol.weights, (np.asarray(caps) / trace.shape.num_ids).tolist(), hardware, tau=tau)
        for k in ("dttft_dbandwidth_s_per_gbps", "dttft_dcapacity_s_per_gib", "dtpot_dbandwidth_s_per_gbps",
                  "dtpot_dcapacity_s_per_gib"):
            df[k] = [r[k] for r in rows]
    return df
