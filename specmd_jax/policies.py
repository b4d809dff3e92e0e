"""The policy registry: every eviction policy by name, written once.

An entry holds what makes the policy itself: its eviction *key* (the rule the jax-free reference
replays, smallest evicted first, the expert id the last tie-break), a description and source, the
modes it is defined in, the dedicated JAX kernels that serve it, and, where the key is a feature
score, the weights that reproduce it (:mod:`specmd_jax.core.score`; then the generic keyed
kernel, :mod:`specmd_jax.kernels.keyed`, runs it in JAX). A new policy is one entry here plus one
yaml in ``conf/policy``: the reference runs it in every mode at once; every JAX path an entry
claims is checked against the reference by ``tests/test_registry.py``.

Modes: ``demand`` (demand-only replay, pinned or sequential, global or per-layer pools),
``instant`` (instantaneous prefetch) and ``async`` (asynchronous prefetch with the timing model).
Fast paths: ``scan`` (:mod:`specmd_jax.kernels.demand`), ``stack`` (one stack-distance pass for
all capacities, :mod:`specmd_jax.run.stack`), ``keyed`` (the feature-score kernel, pinned and
global only), ``records`` (dense per-expert records, victims by the key itself:
:mod:`specmd_jax.kernels.records`; S3-FIFO and ARC, whose order is a queue machine, not a key, by
:mod:`specmd_jax.kernels.queues` on the same runner), ``instant`` (:mod:`specmd_jax.kernels.instant`), ``async``
(:mod:`specmd_jax.kernels.asynchronous`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import numpy as np

from specmd_jax.core.score import preset_weights

MODES = ("demand", "instant", "async")
FAST_PATHS = ("scan", "stack", "keyed", "records", "instant", "async")
FAST_MODE = {"scan": "demand", "stack": "demand", "keyed": "demand", "records": "demand", "instant": "instant",
             "async": "async"}


@dataclasses.dataclass(frozen=True)
class Policy:
    """One eviction policy.

    Attributes:
        name: its key in :data:`REGISTRY` (and the ``policy`` column of every table).
        description: one line for ``list_policies`` and the docs.
        key: ``key(rec, g, l, E, score, nextuse) -> tuple``: the eviction key of resident ``g`` at a
            visit of layer ``l`` (``rec``: its record in the reference: ``last``, ``ins``, ``freq``,
            ``mark``, ``entry``, ``hp``, ``hist``: uses since the start of the trace, kept across
            evictions; ``score``: cumulative router weight units by id;
            ``nextuse``: next demanding step by id). Pure Python; the reference's only rule.
        modes: the modes the policy is defined in.
        fast: the dedicated JAX fast paths that serve it (see the module docstring).
        score: ``score(num_steps) -> int64[NF]``: feature-score weights (:mod:`specmd_jax.core.score`)
            that reproduce the key exactly in demand-only replay on a trace of ``num_steps``
            steps, or ``None``; with them the generic keyed kernel serves the policy (pinned
            visits, one global pool).
        seeded: its victims depend on a seed (the ``seeds`` axis of a sweep).
        decayed: its counts halve every ``decay_period`` steps (the ``decay_periods`` axis of a sweep).
    """

    name: str
    description: str
    key: Callable[..., tuple]
    modes: tuple = MODES
    fast: frozenset = frozenset()
    score: Optional[Callable[[int], np.ndarray]] = None
    seeded: bool = False
    decayed: bool = False

    def __post_init__(self):
        bad = set(self.modes) - set(MODES)
        if bad:
            raise ValueError(f"policy {self.name!r}: unknown modes {sorted(bad)}; valid: {MODES}")
        bad = set(self.fast) - set(FAST_PATHS)
        if bad:
            raise ValueError(f"policy {self.name!r}: unknown fast paths {sorted(bad)}; valid: {FAST_PATHS}")
        off = [f for f in self.fast if FAST_MODE[f] not in self.modes]
        if off:
            raise ValueError(f"policy {self.name!r}: fast paths {off} serve modes it is not defined in")

    def served(self, path: str) -> bool:
        """Whether the JAX fast path ``path`` serves this policy."""
        return path in self.fast or (path == "keyed" and self.score is not None)


def _lru(r, g, l, E, score, nextuse):
    return (r["last"], g)


def _ins(r, g, l, E, score, nextuse):
    return (r["ins"], g)


def _lfu(r, g, l, E, score, nextuse):
    return (r["freq"], r["last"], g)


def _lfu_history(r, g, l, E, score, nextuse):
    return (r["hist"], r["last"], g)


def _clock(r, g, l, E, score, nextuse):
    return (r["ref"], r["pos"], g)


def _queue(r, g, l, E, score, nextuse):
    raise TypeError("s3fifo and arc have no eviction key: their queue machines are in specmd_jax.reference.queues")


def _lhu(r, g, l, E, score, nextuse):
    return (r["hp"], r["last"], g)


def _belady(r, g, l, E, score, nextuse):
    return (-nextuse[g], g)


def _sb(r, g, l, E, score, nextuse):
    return (score.get(g, 0), g)


def _ls(r, g, l, E, score, nextuse):
    return (r["mark"], g // E, r["entry"], g)


def _fld(r, g, l, E, score, nextuse):
    return (-abs(g // E - l), g)


def _preset(name: str) -> Callable[[int], np.ndarray]:
    return lambda num_steps: preset_weights(name, num_steps)


_ALL = frozenset({"scan"})
REGISTRY: dict[str, Policy] = {p.name: p for p in (
    Policy("lru", "least recently used (Eliseev & Mazur '23); ties: lowest id first", _lru,
           fast=frozenset({"scan", "stack", "instant", "async"}), score=_preset("lru")),
    Policy("fifo", "first in, first out (classic baseline)", _ins,
           fast=frozenset({"scan", "instant", "async"}), score=_preset("fifo")),
    Policy("lfu", "least frequently used since insertion, ties by least recent (libCacheSim's LFU)", _lfu,
           fast=_ALL, score=_preset("lfu")),
    Policy("lfu_history", "least frequently used since the start of the trace (counts survive eviction), "
           "ties by least recent (BigMoeOnEdge's lfu)", _lfu_history, fast=_ALL),
    Policy("lfu_decay", "LFU with aging: counts since the trace start, halved every decay_period steps "
           "(a vmapped axis), ties by least recent", _lfu_history, modes=("demand",), fast=frozenset({"records"}),
           decayed=True),
    Policy("clock", "CLOCK / second chance (libCacheSim's Clock, 1-bit): the oldest queue entry goes unless "
           "its reference bit is set, which is cleared and sends it to the head", _clock, modes=("demand",),
           fast=frozenset({"records"})),
    Policy("s3fifo", "S3-FIFO (libCacheSim's S3FIFO): small FIFO (10%), main 2-bit CLOCK, ghost of ids evicted "
           "from small; admits nothing in a pool under 20 slots", _queue, modes=("demand",), fast=frozenset({"records"})),
    Policy("arc", "ARC (libCacheSim's ARC): recency and frequency lists with ghosts, adaptive target size",
           _queue, modes=("demand",), fast=frozenset({"records"})),
    Policy("belady", "Belady/MIN oracle: farthest next use first (next uses precomputed once per trace)", _belady,
           fast=frozenset({"scan", "stack"})),
    Policy("sb", "score-based: lowest cumulative router weight first (Zhu et al. '25)", _sb,
           fast=_ALL, score=_preset("sb")),
    Policy("ls", "Least-Stale (SpecMD §4): stale tier first, FIFO across passes, by layer within a pass", _ls,
           fast=frozenset({"scan", "stack", "instant", "async"}), score=_preset("ls")),
    Policy("fld", "farthest layer distance |layer - current| first, then lowest id (HOBBIT-style, SpecMD §3.1.3)",
           _fld, fast=_ALL, score=_preset("fld")),
    Policy("random", "uniform random victims among evictable residents (seeded, Floyd sampling)", _ins,
           fast=_ALL, seeded=True),
    Policy("lhu", "least high-precision used, then least recent (HOBBIT '24; mixed precision)", _lhu,
           modes=("instant", "async"), fast=frozenset({"async"})),
)}

POLICIES = tuple(n for n, p in REGISTRY.items() if "demand" in p.modes)   # the demand-only replay's policies
POLICY_INFO = {n: p.description for n, p in REGISTRY.items()}


def get(name: str) -> Policy:
    """The registry entry of ``name`` (a ``ValueError`` listing the known names otherwise)."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown policy {name!r}; known: {', '.join(REGISTRY)}") from None


def served_by(path: str) -> tuple:
    """The policies a JAX fast path serves, in registry order."""
    if path not in FAST_PATHS:
        raise ValueError(f"unknown fast path {path!r}; valid: {FAST_PATHS}")
    return tuple(n for n, p in REGISTRY.items() if p.served(path))


def list_policies(mode: str = "demand") -> dict:
    """Policy name -> one-line description, for the policies defined in ``mode``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return {n: p.description for n, p in REGISTRY.items() if mode in p.modes}
