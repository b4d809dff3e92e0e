"""Sweeps with instantaneous prefetch: one jitted vmap over one scan (``engine_pf``), and the
timing of any number of hardware profiles from the recorded per-pass miss counts.

With instantaneous prefetch the copy engine carries only each visit's own demand misses, so a
visit stalls ``misses x transfer`` and a pass lasts ``sum over its visits of (stall + compute)``
(see :mod:`specmd_jax.timing`): :func:`timing` evaluates that for a hardware profile from
``pass_misses`` on the host, for every configuration at once, without another replay.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .engine import GONE, Params
from .engine_pf import PF_COUNTER_NAMES, PfSpec, PfVisit, make_pf_policy
from .prefetch import PrefetchPlan
from .timing import Hardware
from .trace import PREFILL, Trace
from .visits import prepare_steps

_COMPILED: dict = {}


@functools.lru_cache(maxsize=None)
def _runner(spec: PfSpec):
    init, step = make_pf_policy(spec)
    vstep = jax.vmap(step, in_axes=(0, None, 0))

    def run(params, states, xs):
        def body(st, x):
            st, nm = vstep(st, x, params)
            return st, nm
        return lax.scan(body, states, xs)

    return jax.jit(jax.vmap(init)), jax.jit(run, donate_argnums=(1,))


@dataclasses.dataclass
class PfResult:
    """Outcome of :func:`run_instant` for ``B`` configurations.

    Attributes:
        totals: int64[B, 6] ``engine.COUNTER_NAMES``; per_layer: int64[B, 6, L].
        pf_totals: dict name -> int64[B]: ``pf_issued`` (= arrived: instant), ``pf_resident``,
            ``pf_dropped``, ``pf_useful``, ``pf_wasted`` (admitted, evicted before any demand),
            ``pf_unused_end`` (admitted, still resident and never demanded at the end).
        resident: bool[B, N]; max_occupancy: int64[B].
        pass_misses: int64[B, P] demand misses per pass.
    """

    totals: np.ndarray
    per_layer: np.ndarray
    pf_totals: dict
    resident: np.ndarray
    max_occupancy: np.ndarray
    pass_misses: np.ndarray
    compile_s: float
    run_s: float


def run_instant(trace: Trace, policy: str, capacities, plan: PrefetchPlan, *,
                chunk_steps: int = 8192) -> PfResult:
    """Replay ``trace`` with ``plan``'s proposals inserted instantly, for every capacity at once."""
    L, E = trace.shape.num_layers, trace.shape.num_experts
    steps = prepare_steps(trace, "pinned")
    if plan.ids.shape[0] != steps.num_steps:
        raise ValueError(f"plan has {plan.ids.shape[0]} visits, trace {trace.source} has {steps.num_steps}")
    if policy == "ls" and plan.config.depth != 1:
        raise ValueError("the prefetch engine runs 'ls' with a lookahead of 1 layer only (deeper: reference)")
    caps = np.atleast_1d(np.asarray(capacities, np.int64))
    if np.any(caps < 0) or np.any(caps > 16000):
        raise ValueError("capacities must be in [0, 16000]")
    spec = PfSpec(policy, L, E, steps.width, int(plan.ids.shape[1]))
    init, run = _runner(spec)
    B, S = caps.shape[0], steps.num_steps
    params = Params(capacity=jnp.asarray(caps, jnp.int32), seed=jnp.zeros(B, jnp.uint32))
    states = init(params)
    chunk = max(1, min(int(chunk_steps), 1 << max(0, (S - 1).bit_length())))

    def xs_of(lo):
        hi = min(S, lo + chunk)
        pad = chunk - (hi - lo)

        def take(a, fill):
            a = a[lo:hi]
            return np.concatenate([a, np.full((pad,) + a.shape[1:], fill, a.dtype)]) if pad else a

        return PfVisit(layer=jnp.asarray(take(steps.layer, 0)), new_pass=jnp.asarray(take(steps.new_pass, False)),
                       ids=jnp.asarray(take(steps.ids, -1)), pf_ids=jnp.asarray(take(plan.ids, -1)))

    key = (spec, B, chunk)
    t0 = time.perf_counter()
    compiled = _COMPILED.get(key)
    if compiled is None:
        compiled = _COMPILED[key] = run.lower(params, states, xs_of(0)).compile()
    compile_s = time.perf_counter() - t0
    misses = []
    t0 = time.perf_counter()
    for lo in range(0, S, chunk):
        states, nm = compiled(params, states, xs_of(lo))
        misses.append(np.asarray(nm)[: min(chunk, S - lo)])
    jax.block_until_ready(states)
    run_s = time.perf_counter() - t0
    per_step = np.concatenate(misses).astype(np.int64)          # [S, B]
    pass_misses = per_step.reshape(trace.num_passes, L, B).sum(axis=1).T
    per = np.asarray(states.per_layer, np.int64)
    pf = np.asarray(states.pf, np.int64).sum(axis=2)
    unused = np.asarray(states.pfu, np.int64).sum(axis=1)
    names = dict(zip(PF_COUNTER_NAMES, pf.T))
    admitted = names["pf_issued"] - names["pf_dropped"]
    names["pf_unused_end"] = unused
    names["pf_wasted"] = admitted - names["pf_useful"] - unused
    return PfResult(totals=per.sum(axis=2), per_layer=per, pf_totals=names,
                    resident=np.asarray(states.rank) < GONE, max_occupancy=np.asarray(states.max_occ, np.int64),
                    pass_misses=pass_misses, compile_s=compile_s, run_s=run_s)


def timing(trace: Trace, pass_misses: np.ndarray, hardware: Hardware) -> dict:
    """Times (ticks) of replays whose visits stall ``misses x transfer`` (no prefetch, or instant
    prefetch): ``pass_ticks`` int64[B, P], ``stall_ticks`` int64[B], ``ttft_ticks`` float[B]
    (mean over requests with a prefill pass), ``tpot_ticks`` float[B] (mean decode pass)."""
    L = trace.shape.num_layers
    x = hardware.transfer_ticks(trace.shape.expert_bytes)
    pre = trace.pass_phase == PREFILL
    comp = np.array([L * hardware.compute_ticks(bool(ph), int(n)) for ph, n in zip(pre, trace.pass_tokens)], np.int64)
    pm = np.asarray(pass_misses, np.int64)
    pass_ticks = comp[None, :] + pm * x
    out = {"pass_ticks": pass_ticks, "stall_ticks": pm.sum(axis=1) * x, "transfer_ticks": x}
    reqs = np.unique(trace.pass_request[pre])
    if len(reqs):
        per_req = np.stack([pass_ticks[:, pre & (trace.pass_request == r)].sum(axis=1) for r in reqs], 1)
        out["ttft_ticks"] = per_req.mean(axis=1)
    else:
        out["ttft_ticks"] = np.full(pm.shape[0], np.nan)
    out["tpot_ticks"] = pass_ticks[:, ~pre].mean(axis=1) if (~pre).any() else np.full(pm.shape[0], np.nan)
    return out
