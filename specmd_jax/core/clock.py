"""Host-side clock of the timing model: the pass times of replays that stall ``misses x transfer``
(no prefetch, or instant prefetch) computed from per-pass miss counts, and the bounds the
asynchronous kernel's int32 clock must respect (:func:`async_tick_problem`, :class:`ClockOverflow`).

With instantaneous prefetch the copy engine carries only each visit's own demand misses, so a
visit stalls ``misses x transfer`` and a pass lasts ``sum over its visits of (stall + compute)``
(see :mod:`specmd_jax.core.timing`): :func:`pass_times` evaluates that for a hardware profile from
``pass_misses``, for every configuration at once, without another replay.
"""

from __future__ import annotations

import numpy as np

from specmd_jax.core import checks
from specmd_jax.core.miss import Precision
from specmd_jax.core.steps import prepare_steps
from specmd_jax.core.timing import Hardware
from specmd_jax.core.trace import PREFILL, Trace


def pass_times(trace: Trace, pass_misses: np.ndarray, hardware: Hardware, demands=None) -> dict:
    """Times (ticks) of replays whose turns stall ``misses x transfer`` (no prefetch, or instant
    prefetch, under every execution reading: the copy engine is idle when a turn starts):
    ``pass_ticks`` int64[B, P], ``stall_ticks`` int64[B], ``ttft_ticks`` float[B] (mean over
    requests with a prefill pass), ``tpot_ticks`` float[B] (mean decode pass).

    A pass computes the sum of its layers' :meth:`Hardware.layer_ticks` (how a layer's compute is
    split over its turns does not change the sum). With ``hardware.expert_us`` set that is
    ``n x expert_us`` for ``n`` demanded experts: ``demands`` int[S], the distinct experts of each
    pinned visit (:attr:`specmd_jax.run.instant.PfResult.visit_demands`; default: the trace's recorded demand, which is
    the demand under standard routing)."""
    L = trace.shape.num_layers
    x = hardware.transfer_ticks(trace.shape.expert_bytes)
    pre = trace.pass_phase == PREFILL
    if hardware.expert_us is not None:
        n = (np.asarray(demands, np.int64) if demands is not None
             else (prepare_steps(trace, "pinned").ids >= 0).sum(axis=1).astype(np.int64))
        if n.shape != (trace.num_passes * L,):
            raise ValueError(f"demands must hold one count per visit ({trace.num_passes * L}), got shape {n.shape}")
        comp = [int(c) * hardware.layer_ticks(False, 0, 1) for c in n.reshape(trace.num_passes, L).sum(axis=1)]
    else:
        comp = [L * hardware.compute_ticks(bool(ph), int(n)) for ph, n in zip(pre, trace.pass_tokens)]
    pm = np.asarray(pass_misses, np.int64)
    worst = sum(comp) + int(pm.sum(axis=1).max(initial=0)) * x      # Python ints: exact
    if worst > 2 ** 62:
        raise ValueError(f"hardware {hardware.name!r}: the passes of trace {trace.source} would total {worst} ticks, "
                         "past the timing model's int64 ticks (2**62 of 100 ns, about 14,600 years)")
    comp = np.asarray(comp, np.int64)
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



class ClockOverflow(ValueError):
    """A pass outlasted the asynchronous kernel's int32 clock (2**31 ticks of 100 ns, 214 s)."""



def async_tick_problem(trace: Trace, hardware, precision=None, plan_ids=(), routed: bool = False, steps=None):
    """Why the asynchronous kernel could not even start timing ``trace`` on one of ``hardware``
    without an int32 product wrapping unseen (a message naming the profile and its numbers), or
    ``None``.

    The kernel keeps times in int32 ticks relative to the pass start (2**31 ticks = 214 s). It
    detects a sum that passes that range (the runner raises :class:`ClockOverflow`), but a
    *product* can wrap more than once and come out positive: one batch of copies (a visit's
    demand misses plus its proposals, at the slowest precision level's copy time), a prefill
    layer's compute (fixed + tokens x per token) and per-expert compute (demand x expert_us)
    must each fit, and so must every per-copy and per-layer number."""
    prec = precision if precision is not None else Precision()
    steps = steps if steps is not None else prepare_steps(trace, "pinned")
    E, K = trace.shape.num_experts, trace.shape.top_k
    dem = np.sum(steps.ids >= 0, axis=1).astype(np.int64)
    if routed:      # a routed visit demands at most min(E, tokens x K) experts
        dem = np.maximum(dem, np.minimum(E, np.diff(trace.cell_offsets).astype(np.int64) * K))
    prop = np.zeros(steps.num_steps, np.int64)
    for ids in plan_ids:
        prop = np.maximum(prop, np.sum(np.asarray(ids) >= 0, axis=1))
    batch = int((dem + prop).max(initial=0)) + 1
    tok = int(trace.pass_tokens.max(initial=0))
    eb = trace.shape.expert_bytes
    for h in hardware:
        x = max(h.transfer_ticks(prec.level_bytes(eb, i)) for i in range(len(prec.units)))
        need = {f"a batch of {batch} copies at {x} ticks each": batch * x,
                f"a prefill layer of {tok} tokens": h.compute_ticks(True, tok),
                "a decode layer": h.compute_ticks(False, 0),
                f"a layer of {int(dem.max(initial=0))} experts": h.layer_ticks(False, 0, int(dem.max(initial=0)))}
        for what, v in need.items():
            if v > checks.INT32_MAX:
                return (f"hardware {h.name!r} (bandwidth_gbps={h.bandwidth_gbps!r}, latency_us={h.latency_us!r}, "
                        f"decode_layer_us={h.decode_layer_us!r}, prefill_layer_us={h.prefill_layer_us!r}, "
                        f"prefill_token_us={h.prefill_token_us!r}, expert_us={h.expert_us!r}): {what} takes {v} "
                        f"ticks on trace {trace.source}, past the asynchronous kernel's int32 clock (2**31 ticks, "
                        "214 s per pass); engine='reference' is exact at any scale")
    return None
