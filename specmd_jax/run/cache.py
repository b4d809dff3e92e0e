"""The package's compile caches, registered in one place, with one public :func:`clear`.

Every builder of a jitted program is wrapped by :func:`cached` and every table of compiled
executables is made by :func:`table`, so :func:`clear` drops all of them. A long-lived process
that sweeps many shapes (a notebook, a test session) otherwise keeps every executable alive,
each costing memory and memory mappings.
"""

from __future__ import annotations

import functools
import gc
from typing import Callable

import jax

_CLEARERS: list[Callable[[], None]] = []


def cached(fn):
    """``functools.lru_cache`` a builder of jitted programs, registered for :func:`clear`."""
    f = functools.lru_cache(maxsize=None)(fn)
    _CLEARERS.append(f.cache_clear)
    return f


def table() -> dict:
    """A dict for compiled executables (keyed by shape and structure), registered for :func:`clear`."""
    d: dict = {}
    _CLEARERS.append(d.clear)
    return d


def clear() -> None:
    """Drop every compiled program this package holds and jax's own caches."""
    for c in _CLEARERS:
        c()
    jax.clear_caches()
    gc.collect()
