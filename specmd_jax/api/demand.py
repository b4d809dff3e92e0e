"""The Python API: load a trace, run a policy for one configuration or a sweep, get a table.

Example::

    import specmd_jax as sj
    trace = sj.synthetic.generate("olmoe-1b-7b", num_requests=2, prompt_len=32, gen_len=64)
    df = sj.sweep(trace, "ls", fractions=[0.01, 0.05, 0.25])
    print(df[["capacity_fraction", "hit_rate", "collision_rate"]])
"""

from __future__ import annotations

import time
import warnings
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from specmd_jax.core import checks
from specmd_jax.core.capacity import capacity_slots
from specmd_jax.core.counters import DEMAND_COUNTERS
from specmd_jax import reference
from specmd_jax.core.steps import decode_demands, prepare_steps
from specmd_jax.policies import REGISTRY, get, served_by
from specmd_jax.reference.queues import S3FIFO_MIN_POOL
from specmd_jax.run.keyed import run_scores
from specmd_jax.run.demand import RunResult, run_configs
from specmd_jax.run.records import run_records
from specmd_jax.run.stack import run_auto
from specmd_jax.core.trace import DECODE, Trace
from specmd_jax.api.tables import demand_table

ENGINES = ("auto", "jax", "scan", "stack", "keyed", "records", "reference")


def _reference_run(trace, policy, caps, seeds, mode, partitioned, decays) -> RunResult:
    """The jax-free reference, one configuration at a time, as a :class:`RunResult`."""
    L, N = trace.shape.num_layers, trace.shape.num_ids
    tot, per, res, occ, dec = [], [], [], [], []
    t0 = time.perf_counter()
    for c, sd, dc in zip(caps, seeds, decays):
        r = reference.simulate(trace, policy, int(c), mode=mode, partitioned=partitioned, seed=int(sd),
                               decay_period=int(dc))
        tot.append([r.totals[k] for k in DEMAND_COUNTERS])
        per.append([r.per_layer[k] for k in DEMAND_COUNTERS])
        mask = np.zeros(N, bool)
        mask[list(r.resident)] = True
        res.append(mask)
        occ.append(r.max_occupancy)
        dec.append(r.decode_hits)
    n = len(caps)
    return RunResult(totals=np.asarray(tot, np.int64).reshape(n, -1),
                     per_layer=np.asarray(per, np.int64).reshape(n, len(DEMAND_COUNTERS), L),
                     resident=np.asarray(res, bool).reshape(n, N), max_occupancy=np.asarray(occ, np.int64),
                     occupancy=None, compile_s=0.0, run_s=time.perf_counter() - t0,
                     engine=np.full(n, "reference", object), decode_hits=np.asarray(dec, np.int64))


def _keyed_run(trace, policy, caps) -> RunResult:
    """The generic keyed kernel with the policy's feature-score weights: totals, final residents
    and occupancy (no per-layer counts: ``per_layer`` is ``None``)."""
    st = prepare_steps(trace, "pinned")
    q = REGISTRY[policy].score(st.num_steps)
    t0 = time.perf_counter()
    r = run_scores(trace, np.stack([q] * len(caps)), caps, st)
    n = len(caps)
    tot = np.stack([r[k] for k in DEMAND_COUNTERS], axis=1).astype(np.int64)
    occ = np.asarray(r["occ"], np.int64).reshape(n)
    # decode hits: the decode passes' demands less their misses (the kernel counts misses per pass)
    dec_misses = r["pass_misses"][:, np.asarray(trace.pass_phase) == DECODE].sum(axis=1)
    return RunResult(totals=tot, per_layer=None, resident=np.asarray(r["resident"], bool), max_occupancy=occ,
                     occupancy=None, compile_s=0.0, run_s=time.perf_counter() - t0,
                     engine=np.full(n, "jax-keyed", object), decode_hits=decode_demands(trace) - dec_misses)


def _dispatch(trace, policy, pol, caps, seeds, decays, *, mode, partitioned, engine, progress, chunk_steps,
              unroll_layers) -> RunResult:
    """Run configurations ``(caps[i], seeds[i], decays[i])`` on the path ``engine`` picks for ``pol``
    (see :func:`sweep_demand`)."""
    if engine == "records" or (engine in ("auto", "jax") and pol.served("records")
                               and not (pol.served("scan") or pol.served("stack"))):
        if not pol.served("records"):
            raise ValueError(f"the record kernel does not serve policy {policy!r}; it serves {served_by('records')}")
        return run_records(trace, policy, caps, decays, mode=mode, partitioned=partitioned)
    dedicated = pol.served("scan") or pol.served("stack")
    keyed_ok = pol.served("keyed") and mode == "pinned" and not partitioned
    if engine == "keyed" and not keyed_ok:
        raise ValueError(f"the keyed kernel serves policies with feature-score weights in pinned mode on the global "
                         f"pool; policy {policy!r} (score weights: {pol.score is not None}), mode {mode!r}, "
                         f"partitioned={partitioned}")
    if engine == "jax" and not (dedicated or keyed_ok):
        raise ValueError(f"no JAX path serves policy {policy!r} in demand-only replay here; engine='auto' runs it on "
                         "the reference")
    if engine == "reference" or (engine == "auto" and not (dedicated or keyed_ok)):
        return _reference_run(trace, policy, caps, seeds, mode, partitioned, decays)
    if engine == "keyed" or (engine in ("auto", "jax") and not dedicated):
        return _keyed_run(trace, policy, caps)
    return run_auto(trace, policy, caps, seeds, mode=mode, partitioned=partitioned,
                    engine="auto" if engine == "jax" else engine, progress=progress, chunk_steps=chunk_steps,
                    unroll_layers=unroll_layers)


def _per_layer_table(per_layer: np.ndarray, caps: np.ndarray, seeds: np.ndarray, L: int) -> pd.DataFrame:
    """The long table of per-layer counters (int64[B, 6, L]): one row per (configuration, layer)
    with ``hit_rate`` and ``collision_rate`` per demand."""
    pl = pd.DataFrame(per_layer.transpose(0, 2, 1).reshape(-1, len(DEMAND_COUNTERS)), columns=list(DEMAND_COUNTERS))
    pl.insert(0, "config", np.repeat(np.arange(len(caps)), L))
    pl.insert(1, "capacity_slots", np.repeat(caps, L))
    pl.insert(2, "seed", np.repeat(seeds, L))
    pl.insert(3, "layer", np.tile(np.arange(L), len(caps)))
    d = pl["demands"].where(pl["demands"] > 0)
    pl["hit_rate"] = pl["hits"] / d
    pl["collision_rate"] = pl["collisions"] / d
    return pl


def _warn_s3fifo(trace, policy: str, caps: np.ndarray, partitioned: bool) -> None:
    """Say so when S3-FIFO will cache nothing: a pool under 20 slots admits nothing (libCacheSim's
    small queue of ``cap // 10`` must hold 2; its S3FIFO aborts under 10)."""
    if policy != "s3fifo":
        return
    L = trace.shape.num_layers
    small = [int(c) for c in caps if (int(c) // L if partitioned else int(c)) < S3FIFO_MIN_POOL]
    if small:
        pools = f"per-layer pools (capacity // {L} or one more)" if partitioned else "the pool"
        verb = "hold" if partitioned else "holds"
        warnings.warn(f"s3fifo: at capacities {small} {pools} {verb} under {S3FIFO_MIN_POOL} slots, and such a pool admits "
                      "nothing (libCacheSim's rule: its small queue of cap // 10 must hold 2): every miss there "
                      "bypasses", stacklevel=3)


def sweep_demand(trace: Trace, policy: str, capacities: Optional[Sequence[int]] = None, *,
          fractions: Optional[Sequence[float]] = None, seeds: Sequence[int] = (0,),
          mode: str = "pinned", partitioned: bool = False, progress: bool = False,
          chunk_steps: int = 8192, unroll_layers: Optional[bool] = None,
          engine: str = "auto", decay_periods: Sequence[int] = (0,)) -> pd.DataFrame:
    """Demand-only replay of ``policy`` over ``trace`` for every (capacity, seed): one jitted vmap
    over one scan (the ``timing="none"`` case of :func:`specmd_jax.api.sweep`).

    Args:
        trace: a loaded or generated :class:`~specmd_jax.core.trace.Trace`.
        policy: a name from :func:`list_policies`.
        capacities: cache sizes in slots (experts), or
        fractions: cache sizes as fractions of all expert bytes (``floor(f * L * E)`` slots).
        seeds: seeds, crossed with the capacities (only ``random`` uses them).
        decay_periods: steps between halvings of the counts, crossed with the capacities and seeds
            (only a decaying policy, ``lfu_decay``, uses them; 0: never; a column of its table).
        mode: ``"pinned"`` (default; one step per (pass, layer) visit) or ``"sequential"``.
        partitioned: one cache per layer (capacity split evenly) instead of one global pool.
        progress: tqdm progress bar over the trace.
        engine: ``"auto"`` (default) and ``"jax"``: the capacities that never bypass of a policy the
            stack path serves come from one stack pass for all of them (:mod:`specmd_jax.run.stack`,
            exact), everything else from the vmapped scan; ``"auto"`` runs a policy no JAX path
            serves on the reference, ``"jax"`` refuses it. ``"scan"``: always the scan;
            ``"stack"``: stack only; ``"reference"``: the jax-free reference, one configuration
            at a time; ``"keyed"``: the generic keyed kernel with the policy's feature-score
            weights (pinned visits, global pool; totals only, no per-layer counts; ``auto`` and
            ``jax`` take it for a policy no dedicated kernel serves); ``"records"``: dense
            per-expert records (:mod:`specmd_jax.kernels.records`; ``auto`` takes it for a policy
            only it serves, e.g. ``lfu_decay``). Which paths serve a
            policy: :data:`specmd_jax.policies.REGISTRY`.

    Returns:
        A tidy table, one row per configuration (columns in ``METRICS`` plus the parameters and
        ``engine``, the path that ran the row). ``df.attrs`` holds ``per_layer`` (long table by
        the visit's layer), ``resident`` (bool[B, N] final resident sets) and ``timing`` (compile
        and run seconds).
    """
    checks.trace(trace)
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    pol = get(policy)
    if "demand" not in pol.modes:
        raise ValueError(f"policy {policy!r} is not defined in demand-only replay (its modes: {', '.join(pol.modes)})")
    if (capacities is None) == (fractions is None):
        raise ValueError("give exactly one of capacities= (slots) or fractions=")
    checks.whole("chunk_steps", chunk_steps, 1)
    fr = None
    if fractions is not None:
        caps = capacity_slots(trace, fractions)
        fr = checks.fractions(fractions)
    else:
        caps = checks.capacities(capacities)
    seeds = checks.seeds(seeds)
    decays = checks.capacities(decay_periods if pol.decayed else 0, name="decay_periods")
    _warn_s3fifo(trace, policy, caps, partitioned)
    C, Sd, Dc = np.meshgrid(np.arange(len(caps)), np.arange(len(seeds)), np.arange(len(decays)), indexing="ij")
    ci, si, di = C.reshape(-1), Sd.reshape(-1), Dc.reshape(-1)
    r = _dispatch(trace, policy, pol, caps[ci], seeds[si], decays[di], mode=mode, partitioned=partitioned,
                  engine=engine, progress=progress, chunk_steps=chunk_steps, unroll_layers=unroll_layers)
    df = demand_table(trace, policy, mode, partitioned, caps[ci], seeds[si], None if fr is None else fr[ci],
                      r.totals, r.max_occupancy, r.decode_hits)
    if pol.decayed:
        df.insert(9, "decay_period", decays[di])
    df["engine"] = r.engine
    L = trace.shape.num_layers
    if r.per_layer is None:    # the keyed kernel counts totals only
        df.attrs = {"per_layer": None, "resident": r.resident, "timing": {"compile_s": r.compile_s, "run_s": r.run_s}}
        return df
    pl = _per_layer_table(r.per_layer, caps[ci], seeds[si], L)
    df.attrs = {"per_layer": pl, "resident": r.resident,
                "timing": {"compile_s": r.compile_s, "run_s": r.run_s}}
    return df


def simulate(trace: Trace, policy: str, capacity: Optional[int] = None, *,
             fraction: Optional[float] = None, seed: int = 0, mode: str = "pinned",
             partitioned: bool = False) -> pd.Series:
    """One configuration, unbatched; returns that configuration's row of the tidy table."""
    checks.trace(trace)
    if (capacity is None) == (fraction is None):
        raise ValueError("give exactly one of capacity= (slots) or fraction=")
    cap = int(capacity_slots(trace, [fraction])[0] if fraction is not None
              else checks.capacities(capacity, name="capacity")[0])
    seed = int(checks.seeds(seed, name="seed")[0])
    r = run_configs(trace, policy, [cap], [seed], mode=mode, partitioned=partitioned, batched=False)
    df = demand_table(trace, policy, mode, partitioned, np.array([cap]), np.array([seed]),
                      None if fraction is None else np.array([fraction]), r.totals, r.max_occupancy, r.decode_hits)
    df["engine"] = r.engine
    return df.iloc[0]
