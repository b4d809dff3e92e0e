"""Run the record kernel (:mod:`specmd_jax.kernels.records`) for many configurations in one program.

Configurations are ``(capacity, decay period)`` pairs, ``vmap``ped; the steps are the pinned or
sequential :class:`~specmd_jax.core.steps.StepArrays` every demand engine shares. ``jit``/``vmap``
live here only; one compile per (policy, pool, shapes).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from specmd_jax.core import checks
from specmd_jax.core.steps import prepare_steps
from specmd_jax.kernels.demand import Visit
from specmd_jax.kernels.queues import QUEUE_KERNEL_POLICIES, make_queue_policy
from specmd_jax.kernels.records import RecordParams, RecordSpec, make_record_policy
from specmd_jax.run.cache import cached, compile_lowered
from specmd_jax.run.demand import RunResult


@cached
def _queue_runner(spec: RecordSpec):
    pol = make_queue_policy(spec)
    step = jax.vmap(pol.step, in_axes=(0, None, 0))

    def run(params, xs):
        states, _ = lax.scan(lambda st, x: step(st, x, params), jax.vmap(pol.init)(params), xs)
        return states

    return jax.jit(run)


@cached
def _runner(spec: RecordSpec):
    if spec.policy in QUEUE_KERNEL_POLICIES:
        return _queue_runner(spec)
    pol = make_record_policy(spec)
    step = jax.vmap(pol.step, in_axes=(0, None, None, 0))

    def run(params, xs):
        def body(carry, x):
            shared, states = carry
            shared = pol.shared_step(shared, x)
            states, _ = step(states, x, shared, params)
            return (shared, states), None

        (_, states), _ = lax.scan(body, (pol.shared_init(), jax.vmap(pol.init)(params)), xs)
        return states

    return jax.jit(run)


def run_records(trace, policy: str, capacities, decays=None, *, mode: str = "pinned",
                partitioned: bool = False) -> RunResult:
    """Replay ``trace`` for configurations ``(capacities[i], decays[i])`` (decay periods in steps, 0:
    never; only a decaying policy reads them) on the record kernel."""
    if policy == "sb" and trace.weights is None:
        raise ValueError(f"policy 'sb' needs router weights; trace {trace.source} has none")
    caps = checks.capacities(capacities)
    decays = np.zeros_like(caps) if decays is None else checks.capacities(decays, name="decay_periods")
    if decays.shape != caps.shape:
        raise ValueError(f"decay periods shape {decays.shape} != capacities shape {caps.shape}")
    problem = checks.count_problem(trace, bits=1)
    if problem:
        raise ValueError(problem)
    st = prepare_steps(trace, mode)
    L, E = trace.shape.num_layers, trace.shape.num_experts
    spec = RecordSpec(policy, L, E, st.width, bool(partitioned))
    xs = Visit(step=st.step, pass_=st.pass_, layer=st.layer, new_pass=st.new_pass, ids=st.ids, units=st.units,
               next_use=st.next_use, decode=st.decode)
    params = RecordParams(capacity=jnp.asarray(caps, jnp.int32), decay=jnp.asarray(decays, jnp.int32))
    # ARC's target size is a double (libCacheSim's): the queue kernel traces and runs with 64-bit types on
    with jax.enable_x64(policy in QUEUE_KERNEL_POLICIES):
        t0 = time.perf_counter()
        fn = compile_lowered(_runner(spec).lower(params, xs))
        t1 = time.perf_counter()
        out = jax.device_get(fn(params, xs))
        t2 = time.perf_counter()
    per = np.asarray(out.per_layer, np.int64)
    n = len(caps)
    resident = out.resident if policy not in QUEUE_KERNEL_POLICIES else (out.q == 1) | (out.q == 2)
    return RunResult(totals=per.sum(axis=2), per_layer=per, resident=np.asarray(resident, bool),
                     max_occupancy=np.asarray(out.max_occ, np.int64), occupancy=None, compile_s=t1 - t0,
                     run_s=t2 - t1, engine=np.full(n, "jax-records", object),
                     decode_hits=np.asarray(out.dec_hits, np.int64))
