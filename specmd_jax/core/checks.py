"""The checks every engine and entry point shares: capacities, seeds, hardware lists, and the
int32 ranges the kernels compute in.

Each check either returns the value in the one form the engines take or raises a ``ValueError``
(``TypeError`` for a wrong kind) naming the parameter and the offending value, so no engine
truncates a float, wraps a seed or labels a row with a capacity it did not run.
"""

from __future__ import annotations

import numbers
from typing import Sequence

import numpy as np

from specmd_jax.core.semantics import SB_SCALE
from specmd_jax.core.timing import HARDWARE_PRESETS, Hardware
from specmd_jax.core.trace import Trace

INT32_MAX = 2 ** 31 - 1
SEED_LIMIT = 2 ** 32        # seeds are uint32 in the kernels: larger ones would alias modulo 2**32


def _ints(name: str, values, lo: int, hi: int, why: str = "") -> np.ndarray:
    """int64[n] from a scalar or a non-empty sequence of whole numbers in ``[lo, hi]``."""
    if np.ndim(values) > 1:
        raise ValueError(f"{name} must be a value or a flat list, got a {np.ndim(values)}-D array")
    vals = [values] if np.ndim(values) == 0 else list(np.asarray(values, dtype=object).reshape(-1))
    if not vals:
        raise ValueError(f"{name} must be a value or a non-empty list, got an empty list")
    out = []
    for i, v in enumerate(vals):
        where = f"{name}[{i}]" if np.ndim(values) else name
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
            raise TypeError(f"{where} must be a whole number, got {v!r} ({type(v).__name__})")
        if isinstance(v, numbers.Integral):
            iv = int(v)
        elif np.isfinite(float(v)) and float(v) == int(float(v)):
            iv = int(float(v))            # 8.0 from a config file is 8; 8.5 is refused below
        else:
            raise ValueError(f"{where} must be a whole number, got {v!r} (not truncated)")
        if not lo <= iv <= hi:
            raise ValueError(f"{where} must be in [{lo}, {hi}]{why}, got {iv}")
        out.append(iv)
    return np.asarray(out, np.int64)


def whole(name: str, value, lo: int = 0, hi: int = INT32_MAX) -> int:
    """One whole number in ``[lo, hi]`` (a whole float counts; fractions, bools, strings do not)."""
    if np.ndim(value) != 0:
        raise TypeError(f"{name} must be one whole number, got {value!r}")
    return int(_ints(name, value, lo, hi)[0])


def fractions(values, *, name: str = "fractions", hi: float = 1.0) -> np.ndarray:
    """Capacity fractions: real numbers in ``[0, hi]`` (default 1; not strings or bools), as float64[n]."""
    if np.ndim(values) > 1:
        raise ValueError(f"{name} must be a value or a flat list, got a {np.ndim(values)}-D array")
    vals = [values] if np.ndim(values) == 0 else list(np.asarray(values, dtype=object).reshape(-1))
    if not vals:
        raise ValueError(f"{name} must be a value or a non-empty list, got an empty list")
    for i, v in enumerate(vals):
        where = f"{name}[{i}]" if np.ndim(values) else name
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
            raise TypeError(f"{where} must be a number in [0, {hi:g}], got {v!r} ({type(v).__name__})")
        if not (np.isfinite(float(v)) and 0 <= float(v) <= hi):
            raise ValueError(f"{where} must be in [0, {hi:g}], got {v!r}")
    return np.asarray([float(v) for v in vals], np.float64)


def trace(t, *, name: str = "trace"):
    """``t`` if it is a :class:`~specmd_jax.core.trace.Trace`; else a TypeError saying how to get one."""
    if not isinstance(t, Trace):
        raise TypeError(f"{name} must be a specmd_jax Trace (sj.load_trace(path) or sj.synthetic.generate(...)), "
                        f"got {t!r:.80} ({type(t).__name__})")
    return t


def capacities(values, *, name: str = "capacities", limit: int = INT32_MAX, why: str = "") -> np.ndarray:
    """Cache sizes in slots (or units): whole numbers in ``[0, limit]``, as int64[n] (``why``: the
    reason for the limit, printed in the error)."""
    return _ints(name, values, 0, limit, f" ({why})" if why else "")


MIB = 2 ** 20
MAX_BUDGET_BYTES = 2 ** 62


def byte_budgets(budgets_mib=None, capacity_bytes=None) -> tuple[np.ndarray, "np.ndarray | None"]:
    """Byte budgets, int64[n], from MiB (``int(mib * 2**20)``, as BigMoeOnEdge's replayer) or bytes
    (exactly one given); and the MiB values given (``None`` for bytes)."""
    if (budgets_mib is None) == (capacity_bytes is None):
        raise ValueError("give exactly one of budgets_mib= or capacity_bytes=")
    if capacity_bytes is not None:
        return capacities(capacity_bytes, name="capacity_bytes", limit=MAX_BUDGET_BYTES), None
    mib = fractions(budgets_mib, name="budgets_mib", hi=MAX_BUDGET_BYTES / MIB)
    return np.asarray([int(m * MIB) for m in mib], np.int64), mib


def seeds(values, *, name: str = "seeds") -> np.ndarray:
    """Seeds: whole numbers in ``[0, 2**32)``, as int64[n] (the kernels draw from uint32 keys)."""
    return _ints(name, values, 0, SEED_LIMIT - 1)


def hardware_list(values, *, name: str = "hardware") -> list:
    """A non-empty list of :class:`~specmd_jax.core.timing.Hardware`; a preset name stands for its preset."""
    vals = [values] if isinstance(values, (Hardware, str)) else list(values)
    if not vals:
        raise ValueError(f"{name} must be a Hardware, a preset name or a non-empty list of them, got []")
    out = []
    for i, h in enumerate(vals):
        if isinstance(h, str):
            if h not in HARDWARE_PRESETS:
                raise ValueError(f"{name}[{i}]: unknown hardware preset {h!r}; known: {sorted(HARDWARE_PRESETS)}")
            h = HARDWARE_PRESETS[h]
        if not isinstance(h, Hardware):
            raise TypeError(f"{name}[{i}] must be a Hardware or a preset name, got {h!r} ({type(h).__name__})")
        out.append(h)
    return out


def int32_fits(name: str, value: int, why: str) -> None:
    """Refuse a number the kernels would cast to int32 when it does not fit (``why`` says what it is)."""
    if not -INT32_MAX - 1 <= int(value) <= INT32_MAX:
        raise ValueError(f"{name} = {int(value)} does not fit the kernels' int32 ({why}); "
                         "the exact reference has no such limit (engine='reference')")


def count_problem(trace, proposals: int = 0, bits: int = 16) -> "str | None":
    """Why the JAX kernels' int32 counters could not hold ``trace``'s totals (a message naming
    the trace, the quantity and its value), or ``None`` when they can.

    The kernels count in int32: routed (token, expert) pairs bound every demand, hit, miss and
    eviction count, ``bits`` times them the bits served, pairs plus ``proposals`` every copy,
    and the summed quantised router weights (``round(w x SB_SCALE)``) the SB keys and the
    weight-mass counters. The references count in Python integers and have no such limit."""
    pairs = int(trace.experts.shape[0]) * int(trace.shape.top_k)
    need = {"routed pairs" if int(bits) <= 1 else "routed pairs x bits served per pair": pairs * max(int(bits), 1),
            "routed pairs + prefetch proposals": pairs + int(proposals)}
    if trace.weights is not None:
        need["summed router weight units (round(w x SB_SCALE))"] = int(
            np.rint(trace.weights.astype(np.float64) * SB_SCALE).sum())
    for what, v in need.items():
        if v > INT32_MAX:
            return (f"trace {trace.source}: {what} = {v} exceeds the JAX kernels' int32 counters "
                    f"({INT32_MAX}); the exact reference counts in Python integers (engine='reference', "
                    "or specmd_jax.reference.demand.simulate per configuration)")
    return None


def capacity_bytes(caps: Sequence[int], unit_bytes: int, *, name: str = "capacities") -> np.ndarray:
    """``caps x unit_bytes`` as int64, refusing a product past int64 instead of wrapping."""
    caps = np.asarray(caps, np.int64)
    big = [int(c) for c in caps.tolist() if int(c) * int(unit_bytes) > np.iinfo(np.int64).max]
    if big:
        raise ValueError(f"{name}: {big[0]} slots x {unit_bytes} bytes overflows int64 bytes")
    return caps * np.int64(unit_bytes)


__all__ = ["INT32_MAX", "SEED_LIMIT", "whole", "fractions", "trace", "capacities", "seeds", "hardware_list",
           "int32_fits", "count_problem", "capacity_bytes"]
