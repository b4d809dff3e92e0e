"""Array-likes turned into a trace field's dtype without changing a value, and the error every
trace check raises (a :class:`~specmd_jax.core.limits.TraceError` naming where, the field and
the value)."""

from __future__ import annotations

import numpy as np

from specmd_jax.core.limits import FLOAT32_MAX, TraceError

__all__ = ["fail", "as_int", "as_float"]


def fail(where: str, field: str, msg: str) -> None:
    raise TraceError(f"{where}: field '{field}': {msg}")


def _first(bad: np.ndarray):
    """Index (int, or tuple for n-D) of the first True of ``bad``."""
    i = np.unravel_index(int(np.argmax(bad)), bad.shape)
    return int(i[0]) if len(i) == 1 else tuple(map(int, i))


def as_int(x, field: str, dtype, where: str, whole_floats: bool = True) -> np.ndarray:
    """``x`` as ``dtype``; refuse non-integer dtypes (floats only when whole and ``whole_floats``)
    and values the cast would wrap, naming the field, the value and its index."""
    try:
        a = np.asarray(x)
    except (ValueError, TypeError) as e:
        fail(where, field, f"not a rectangular array ({e})")
    if a.dtype.kind == "f" and whole_floats:
        bad = ~np.isfinite(a) | (a != np.trunc(a)) if a.size else np.zeros(a.shape, bool)
        if bad.any():
            i = _first(bad)
            fail(where, field, f"value {a[i].item()!r} at index {i} is not a whole number")
    elif a.dtype.kind not in "iu":
        fail(where, field, f"dtype {a.dtype} is not an integer type")
    if a.size:
        info = np.iinfo(dtype)
        bad = (a < info.min) | (a > info.max)
        if bad.any():
            i = _first(bad)
            fail(where, field, f"value {int(a[i])} at index {i} does not fit {np.dtype(dtype).name}")
    return a.astype(dtype)


def as_float(x, field: str, where: str) -> np.ndarray:
    """``x`` as float32; refuse dtypes other than real floats and integers (strings, complex,
    bool, objects) and finite values float32 cannot hold, naming the field, value and index."""
    try:
        a = np.asarray(x)
    except (ValueError, TypeError) as e:
        fail(where, field, f"not a rectangular array ({e})")
    if a.dtype.kind not in "fiu":
        fail(where, field, f"dtype {a.dtype} is not a real number type (float or integer)")
    if a.size:
        b = a.astype(np.float64)
        with np.errstate(invalid="ignore"):
            big = np.isfinite(b) & (np.abs(b) > FLOAT32_MAX)
        if big.any():
            i = _first(big)
            fail(where, field, f"value {a[i].item()!r} at index {i} overflows float32")
    return a.astype(np.float32)
