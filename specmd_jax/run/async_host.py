"""The host side of an asynchronous sweep (:mod:`specmd_jax.run.asynchronous`): each configuration's
vmapped numbers, the per-turn inputs of the scan cut into chunks, and the pass, stall, TTFT and
TPOT ticks that follow from each turn's end time."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from specmd_jax.core import checks
from specmd_jax.core.miss import NO_DROP
from specmd_jax.core.semantics import SB_SCALE
from specmd_jax.core.timing import to_ticks
from specmd_jax.core.trace import PREFILL
from specmd_jax.kernels.asynchronous import AsyncParams, AsyncVisit
from specmd_jax.run.feed import pad_cols, proposal_chunk, take_rows


def hardware_numbers(hws, prec, eb):
    """Per profile: the copy ticks of each precision level (``xlv`` int64[H, NL]) and the compute
    numbers (``hw_num`` int64[H, 4]: decode layer, prefill layer fixed, prefill per token, per
    expert or -1), each checked to fit the kernel's int32."""
    NL = len(prec.units)
    xlv = np.array([[h.transfer_ticks(prec.level_bytes(eb, i)) for i in range(NL)] for h in hws], np.int64)
    hw_num = np.array([[h.compute_ticks(False, 0), h.compute_ticks(True, 0),
                        h.compute_ticks(True, 1) - h.compute_ticks(True, 0),
                        -1 if h.expert_us is None else to_ticks(h.expert_us * 1e-6)] for h in hws], np.int64)
    for hi, h in enumerate(hws):   # every number cast to int32 below (the pass bound above covers most)
        for nm, v in zip(("transfer ticks", "decode layer ticks", "prefill layer ticks", "prefill token ticks",
                          "expert ticks"), (*xlv[hi], *hw_num[hi])):
            checks.int32_fits(f"hardware {h.name!r}: {nm}", v, "ticks of 100 ns")
    return xlv, hw_num


def async_params(caps, H, misses, kind, xlv, hw_num, lams):
    """The vmapped numbers of every configuration (capacity-major, then hardware, miss, routing)
    and each configuration's capacity, hardware, miss and routing index."""
    M, R = len(misses), len(lams)
    cap_b = np.repeat(caps, H * M * R)
    hb = np.tile(np.repeat(np.arange(H), M * R), len(caps))
    mb = np.tile(np.repeat(np.arange(M), R), len(caps) * H)
    rb = np.tile(np.arange(R), len(caps) * H * M)
    drop = np.array([m.rank_threshold if m.policy == "drop_priority" else NO_DROP for m in misses], np.int64)
    ncas = len(misses[0].thresholds) if kind == "cascade" else 0
    cas = np.array([m.threshold_units(SB_SCALE) if kind == "cascade" else () for m in misses], np.int64).reshape(M, ncas)
    params = AsyncParams(capacity=jnp.asarray(cap_b, jnp.int32), xfer=jnp.asarray(xlv[hb, 0], jnp.int32),
                         c_dec=jnp.asarray(hw_num[hb, 0], jnp.int32), c_pre0=jnp.asarray(hw_num[hb, 1], jnp.int32),
                         c_pre1=jnp.asarray(hw_num[hb, 2], jnp.int32),
                         drop_rank=jnp.asarray(np.minimum(drop[mb], NO_DROP), jnp.int32),
                         xfer_lv=jnp.asarray(xlv[hb], jnp.int32),
                         pct_milli=jnp.asarray([misses[i].percentile_milli for i in mb], jnp.int32),
                         degrade=jnp.asarray([misses[i].degrade_level for i in mb], jnp.int32),
                         cas_th=jnp.asarray(cas[mb], jnp.int32), lam=jnp.asarray(lams[rb], jnp.float32),
                         c_exp=jnp.asarray(hw_num[hb, 3], jnp.int32))
    return params, cap_b, hb, mb, rb


def turn_inputs(trace, steps, turns, det: dict, stack, lscore, routed: bool, width: int, pin_sets,
                pin_width: int, issue: str) -> dict:
    """The scan's per-turn inputs, shared by every configuration: the visit fields of each turn
    (demand rows padded to the step's width; a routed step replaces them with its own), the
    proposals on the turns that issue them (``stack``), the pin sets (``pins``) and ``live``."""
    pre = trace.pass_phase == PREFILL
    tv = turns.visit                                                  # each turn's visit
    hw_ = turns.ids.shape[1] if routed else width     # a routed step replaces the host's demand rows
    det = {k: pad_cols(turns.per_turn(v, NO_DROP if k == "rank" else 0), hw_, NO_DROP if k == "rank" else 0)
           for k, v in det.items()}
    return dict(live=np.ones(turns.num_turns, bool), layer=steps.layer[tv], new_pass=turns.new_pass,
                prefill=pre[steps.pass_[tv]], tokens=trace.pass_tokens[steps.pass_[tv]].astype(np.int32),
                ids=pad_cols(turns.ids, hw_, -1), stack=turns.proposals(stack, issue),
                rank=det["rank"], pairs=det["pairs"], units=pad_cols(turns.per_turn(steps.units, 0), hw_, 0),
                lscore=lscore[tv], score=det["score"], spos=det["spos"], turn=turns.index, nturns=turns.count,
                vdem=np.sum(steps.ids >= 0, axis=1).astype(np.int32)[tv],
                pins=pad_cols(pin_sets, pin_width, -1) if pin_sets is not None else None)


def turn_chunk(inp: dict, routing: tuple, reps: int, multi: bool, S: int, chunk: int, lo: int) -> AsyncVisit:
    """Turns ``[lo, lo + chunk)`` of :func:`turn_inputs` (``routing``: each visit's first routed
    row, its number of rows and gap mean, or ``None`` each), padded to ``chunk`` rows."""
    hi = min(S, lo + chunk)
    pad = chunk - (hi - lo)
    row0, nrows, delta = routing
    pins = inp["pins"]
    return AsyncVisit(live=jnp.asarray(take_rows(inp["live"], lo, hi, pad, False)),
                      layer=jnp.asarray(take_rows(inp["layer"], lo, hi, pad, 0)),
                      new_pass=jnp.asarray(take_rows(inp["new_pass"], lo, hi, pad, False)),
                      prefill=jnp.asarray(take_rows(inp["prefill"], lo, hi, pad, False)),
                      tokens=jnp.asarray(take_rows(inp["tokens"], lo, hi, pad, 0)),
                      ids=jnp.asarray(take_rows(inp["ids"], lo, hi, pad, -1)),
                      pf_ids=jnp.asarray(proposal_chunk(inp["stack"], lo, hi, pad, reps, multi)),
                      rank=jnp.asarray(take_rows(inp["rank"], lo, hi, pad, NO_DROP)),
                      pairs=jnp.asarray(take_rows(inp["pairs"], lo, hi, pad, 0)),
                      units=jnp.asarray(take_rows(inp["units"], lo, hi, pad, 0)),
                      lscore=jnp.asarray(take_rows(inp["lscore"], lo, hi, pad, 0)),
                      score=jnp.asarray(take_rows(inp["score"], lo, hi, pad, 0)),
                      spos=jnp.asarray(take_rows(inp["spos"], lo, hi, pad, 0)),
                      row0=None if row0 is None else jnp.asarray(take_rows(row0, lo, hi, pad, 0)),
                      nrows=None if row0 is None else jnp.asarray(take_rows(nrows, lo, hi, pad, 0)),
                      delta=None if row0 is None else jnp.asarray(take_rows(delta, lo, hi, pad, 0.0)),
                      turn=jnp.asarray(take_rows(inp["turn"], lo, hi, pad, 0)),
                      nturns=jnp.asarray(take_rows(inp["nturns"], lo, hi, pad, 1)),
                      vdem=jnp.asarray(take_rows(inp["vdem"], lo, hi, pad, 0)),
                      pins=None if pins is None else jnp.asarray(take_rows(pins, lo, hi, pad, -1)))


def turn_times(trace, turns, ends, hw_num, prefill, tokens, layer_t, vdem):
    """Pass, stall, TTFT and TPOT ticks from each turn's end time relative to its pass start
    (``ends`` [T, B]; ``hw_num`` [B, 4] each configuration's compute numbers)."""
    L = trace.shape.num_layers
    pre = trace.pass_phase == PREFILL
    B = ends.shape[1]
    t_end = ends.astype(np.int64).T                                   # [B, T], relative to pass start
    last = np.flatnonzero(np.r_[turns.new_pass[1:], True])            # last turn of each pass
    pass_ticks = t_end[:, last]
    t_start = np.where(turns.new_pass[None, :], 0, np.concatenate([np.zeros((B, 1), np.int64), t_end[:, :-1]], 1))
    comp = np.where(prefill[None, :], hw_num[:, 1][:, None] + tokens[None, :] * hw_num[:, 2][:, None],
                    hw_num[:, 0][:, None])
    comp = np.where(hw_num[:, 3][:, None] >= 0, hw_num[:, 3][:, None] * vdem[None, :], comp)
    comp = comp // turns.count[None, :] + (turns.index[None, :] < comp % turns.count[None, :])   # turn_share
    stall = t_end - t_start - comp                                    # [B, T]
    stall_l = np.stack([stall[:, layer_t == l].sum(axis=1) for l in range(L)], 1)
    reqs = np.unique(trace.pass_request[pre])
    ttft = (np.stack([pass_ticks[:, pre & (trace.pass_request == r)].sum(axis=1) for r in reqs], 1).mean(axis=1)
            if len(reqs) else np.full(B, np.nan))
    tpot = pass_ticks[:, ~pre].mean(axis=1) if (~pre).any() else np.full(B, np.nan)
    return pass_ticks, stall_l, ttft, tpot
