"""The package's compile caches, registered in one place, with one public :func:`clear`.

Every builder of a jitted program is wrapped by :func:`cached` and every table of compiled
executables is made by :func:`table`, so :func:`clear` drops all of them. A long-lived process
that sweeps many shapes (a notebook, a test session) otherwise keeps every executable alive,
each costing memory and memory mappings. XLA:CPU maps every compiled program's code in many
pieces (hundreds to thousands of mappings each); past ``vm.max_map_count`` (65,530 by default on
Linux) the next mapping fails and the process dies with a segmentation fault. :func:`compile`,
which every compile site goes through, first calls :func:`relieve`: when this process holds more
than half of its allowed mappings, everything is cleared (callers keep the programs they hold).
"""

from __future__ import annotations

import functools
import gc
from pathlib import Path
from typing import Callable

import jax

_CLEARERS: list[Callable[[], None]] = []


def cached(fn):
    """``functools.lru_cache`` a builder of jitted programs, registered for :func:`clear`; each
    call first calls :func:`relieve` (the jitted program it returns may compile when called)."""
    f = functools.lru_cache(maxsize=None)(fn)
    _CLEARERS.append(f.cache_clear)

    @functools.wraps(fn)
    def builder(*args, **kwargs):
        relieve()
        return f(*args, **kwargs)

    builder.cache_clear, builder.cache_info = f.cache_clear, f.cache_info
    return builder


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


def map_pressure() -> float | None:
    """This process's memory mappings as a fraction of ``vm.max_map_count`` (None off Linux)."""
    try:
        limit = int(Path("/proc/sys/vm/max_map_count").read_text())
        used = Path("/proc/self/maps").read_bytes().count(b"\n")
    except (OSError, ValueError):
        return None
    return used / max(limit, 1)


def relieve(threshold: float = 0.5) -> bool:
    """:func:`clear` when this process holds more than ``threshold`` of its allowed memory
    mappings; True if it cleared."""
    p = map_pressure()
    if p is None or p <= threshold:
        return False
    clear()
    return True


def compile_lowered(lowered):
    """``lowered.compile()`` after :func:`relieve`: the one door every new executable goes through."""
    relieve()
    return lowered.compile()
