"""Feeding a scan: the stacked prefetch plans, the trace cut into chunks (or pieces of different
widths) padded to a few compiled lengths, and the compile-once-per-shape loop that runs them."""

from __future__ import annotations

import time

import jax
import numpy as np

from specmd_jax.run.cache import compile_lowered, table

_COMPILED = table()


def pad_cols(a: np.ndarray, width: int, fill) -> np.ndarray:
    """``a`` ([rows, w]) padded with columns of ``fill`` to ``width`` (unchanged if already as wide)."""
    if a.shape[1] >= width:
        return a
    return np.concatenate([a, np.full((a.shape[0], width - a.shape[1]), fill, a.dtype)], axis=1)



def take_rows(a: np.ndarray, lo: int, hi: int, pad: int, fill) -> np.ndarray:
    """Rows [lo, hi) of ``a``, padded with ``pad`` rows of ``fill`` (a chunk of the scan's xs)."""
    a = a[lo:hi]
    return np.concatenate([a, np.full((pad,) + a.shape[1:], fill, a.dtype)]) if pad else a



def run_chunks(key, run, params, states, xs_of, S: int, chunk: int, extra: tuple = ()):
    """Compile once per ``key`` (cached), then scan the trace chunk by chunk (``extra``: further
    arguments of ``run``, the same for every chunk).

    Returns (states, per-step outputs as numpy [S, ...], compile_s, run_s)."""
    t0 = time.perf_counter()
    compiled = _COMPILED.get(key)
    if compiled is None:
        compiled = _COMPILED[key] = compile_lowered(run.lower(params, states, xs_of(0), *extra))
    compile_s = time.perf_counter() - t0
    ys = []
    t0 = time.perf_counter()
    for lo in range(0, S, chunk):
        states, y = compiled(params, states, xs_of(lo), *extra)
        ys.append(np.asarray(y)[: min(chunk, S - lo)])
    jax.block_until_ready(states)
    return states, np.concatenate(ys), compile_s, time.perf_counter() - t0



def proposal_chunk(stack: np.ndarray, lo: int, hi: int, pad: int, reps: int, multi: bool) -> np.ndarray:
    """Proposals of steps [lo, hi) padded to the chunk: int32[chunk, Q] (one plan) or
    int32[chunk, n_plans * reps, Q] (one row per configuration, plan-major)."""
    a = stack[:, lo:hi]
    if pad:
        a = np.concatenate([a, np.full((a.shape[0], pad, a.shape[2]), -1, np.int32)], axis=1)
    if not multi:
        return a[0]
    return np.repeat(a.transpose(1, 0, 2), reps, axis=1)



def pin_pieces(need: np.ndarray, width: int, chunk: int) -> list:
    """Scan pieces ``(lo, hi, length, pin width)`` of a replay whose turns pin their visit's whole
    demand: turn ``t`` needs a pin set of ``need[t]`` ids. The pin work is ``[w, w]`` per
    configuration and turn, so the turns run at a bucketed width (a power of two >= 8, at most
    ``width``) rather than the trace's widest visit: runs of turns of one bucket, a run shorter than
    ``min(chunk, 256)`` turns joined to the next (at the wider width), cut into pieces of at most
    ``chunk`` turns, each padded to a power of two of at least ``min(chunk, 1024)`` turns (one
    program per distinct width and length)."""
    T = len(need)
    b = np.minimum(np.maximum(8, 1 << np.ceil(np.log2(np.maximum(need, 1))).astype(np.int64)), width)
    cut = np.flatnonzero(np.r_[True, b[1:] != b[:-1]])
    runs, min_run = [], min(chunk, 256)
    for lo, hi in zip(cut, np.r_[cut[1:], T]):
        w = int(b[lo])
        if runs and runs[-1][1] - runs[-1][0] < min_run:
            runs[-1] = [runs[-1][0], int(hi), max(runs[-1][2], w)]
        else:
            runs.append([int(lo), int(hi), w])
    if len(runs) > 1 and runs[-1][1] - runs[-1][0] < min_run:
        last = runs.pop()
        runs[-1] = [runs[-1][0], last[1], max(runs[-1][2], last[2])]
    return [(lo, min(hi, lo + chunk), min(chunk, max(1024, 1 << max(0, (min(hi, lo + chunk) - lo - 1).bit_length()))), w)
            for a, hi, w in runs for lo in range(a, hi, chunk)]



def run_pieces(key, run, params, states, xs_of, pieces: list):
    """:func:`run_chunks` over pieces ``(lo, hi, length, width)`` of different shapes (one compiled
    program per distinct (``key``, width, length), cached)."""
    ys, compile_s, run_s = [], 0.0, 0.0
    for lo, hi, n, w in pieces:
        xs = xs_of(lo, hi, n, w)
        t0 = time.perf_counter()
        compiled = _COMPILED.get(key + (w, n))
        if compiled is None:
            compiled = _COMPILED[key + (w, n)] = compile_lowered(run.lower(params, states, xs))
        t1 = time.perf_counter()
        states, y = compiled(params, states, xs)
        ys.append(np.asarray(y)[: hi - lo])
        compile_s, run_s = compile_s + t1 - t0, run_s + time.perf_counter() - t1
    jax.block_until_ready(states)
    return states, np.concatenate(ys), compile_s, run_s
