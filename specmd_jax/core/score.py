"""A parametric eviction score over online features: definitions, presets, conversion.

Pure Python and numpy (no jax): the reference simulator, the hard JAX engine
(:mod:`specmd_jax.run.keyed`) and the soft relaxation (:mod:`specmd_jax.learn.soft`) all read the
feature definitions from here.

Features of a resident expert ``g`` (layer ``lg``) when the visit ``(step s, pass p, layer l)``
must evict (all known online: nothing about the future):

=========  ==============================================  =========  ================================
name       integer value ``f``                             norm ``n``  the fixed rule it carries
=========  ==============================================  =========  ================================
``age``    ``s - last step used``                          ``L``       LRU (evict the oldest)
``uses``   uses since insertion (1 on insert)              ``1``       LFU
``ins``    ``s - step inserted``                           ``L``       FIFO
``ahead``  ``(lg - l - 1) mod L``: layers until ``lg``     ``L``       (new) layer-cyclic distance
           runs again after this visit
``fld``    ``|lg - l|``                                    ``L``       FLD (farthest layer first)
``stale``  1 if not used in pass ``p`` (Least-Stale's      ``1``       Least-Stale's tier
           stale tier), else 0
``gate``   cumulative ``round(weight * SB_SCALE)`` of      ``1024``    SB (lowest running gate score)
           every demand of ``g`` so far
``pf``     1 if ``g`` arrived by prefetch and has not      ``1``       (new) prefetched-and-unused
           been demanded since, else 0
``level``  precision level of the resident copy (0 = the   ``1``       (new) precision
           highest)
=========  ==============================================  =========  ================================

``pf`` and ``level`` exist only where prefetches arrive and copies have several precisions: the
timed reference (:func:`specmd_jax.reference.timed.simulate_timed` with ``policy="score"``;
``sweep_prefetch(..., policy="score", score_weights=...)``). In demand-only replay (the JAX
engine, the soft relaxation, the tuner) they are 0 for every expert, so their weights there
have no effect and the tuner leaves them at 0. In the timed replay the clock of ``age`` and
``ins`` is its event counter (admissions and uses), not the visit index; orders, hence the
presets, are the same.

**Hard policy** ("score"): integer weights ``q`` (int32, one per feature); the *keep score* of
``g`` is ``sum_i q_i * f_i`` (int32, exact); the evictions of a visit are the lowest keep scores
among the evictable residents, **lowest id first on ties** (like every hard policy here).
The insert/evict rules around it are :mod:`specmd_jax.core.semantics`' (pinned visits, one global
pool). :func:`check_bounds` refuses weights whose score could overflow int32 on a trace.

**Real weights** ``w`` (what the soft relaxation tunes) act on normalised features
``phi_i = f_i / n_i`` (ages in passes, distances in layer cycles, gate in router-weight units),
so one ``w`` applies to models of any depth. :func:`quantize` turns ``w`` into the hard ``q``
of a trace: ``q_i = round(w_i * scale / n_i)`` with ``scale`` the largest power of two (at
most ``2**16``) whose score cannot overflow; the hard policy is then ``w``'s ranking up to that
rounding.

Presets (:func:`preset_weights`) reproduce the fixed rules *exactly* in the hard simulator
(tested against the reference's own policies): LRU ``q_age = -1``; FIFO ``q_ins = -1``; LFU
``q_uses = T, q_age = -1`` (key (uses, last use, id)); FLD ``q_fld = -1``; SB ``q_gate = 1``;
Least-Stale ``q_stale = -T, q_age = -1``. ``T`` is the number of steps of the trace. In
demand-only replay Least-Stale decides exactly as LRU (each expert is used at most once per
pass, so its tier key follows its last use); its preset says so by construction.

Features a full system would add and this demand-only policy leaves out: prefetched-and-unused
(no prefetch here) and precision (one precision level).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from specmd_jax.core.semantics import SB_SCALE

FEATURES = ("age", "uses", "ins", "ahead", "fld", "stale", "gate", "pf", "level")
DEMAND_FEATURES = FEATURES[:7]  # the ones that vary in demand-only replay
NF = len(FEATURES)
INT32_MAX = 2 ** 31 - 1
PRESETS = ("lru", "lfu", "fifo", "fld", "sb", "ls")


def norms(num_layers: int) -> np.ndarray:
    """float64[NF] normalisers ``n_i`` of the features for a model of ``num_layers`` layers."""
    L = float(num_layers)
    return np.array([L, 1.0, L, L, L, 1.0, float(SB_SCALE), 1.0, 1.0])


def features(s: int, p: int, l: int, g: int, E: int, L: int, last: int, ins: int, uses: int,
             gate: int) -> tuple:
    """The integer features (``FEATURES`` order) of resident ``g`` at step ``s`` (pass ``p``,
    layer ``l``) in demand-only replay; ``last``/``ins``/``uses``/``gate`` are its record.
    Shared definition of the reference; the JAX engines compute the same numbers elementwise."""
    lg = g // E
    return (s - last, uses, s - ins, (lg - l - 1) % L, abs(lg - l), 1 if last < s - l else 0, gate, 0, 0)


def timed_features(now: int, p: int, l: int, g: int, E: int, L: int, rec: Mapping, gate: int) -> tuple:
    """The features of resident ``g`` in the timed reference (``rec``: its record there, with
    ``last``, ``ins``, ``freq``, ``mark``, ``pf``, ``lvl``; ``now``: its event counter)."""
    lg = g // E
    return (now - rec["last"], rec["freq"], now - rec["ins"], (lg - l - 1) % L, abs(lg - l),
            1 if rec["mark"] != p else 0, gate, 1 if rec["pf"] else 0, rec["lvl"])


def preset_weights(name: str, num_steps: int) -> np.ndarray:
    """int64[NF] hard weights ``q`` that reproduce a fixed rule exactly on a trace of
    ``num_steps`` steps (see the module docstring)."""
    T = int(num_steps) + 1
    q = np.zeros(NF, np.int64)
    i = {f: k for k, f in enumerate(FEATURES)}
    if name == "lru":
        q[i["age"]] = -1
    elif name == "fifo":
        q[i["ins"]] = -1
    elif name == "lfu":
        q[i["uses"]], q[i["age"]] = T, -1
    elif name == "fld":
        q[i["fld"]] = -1
    elif name == "sb":
        q[i["gate"]] = 1
    elif name == "ls":
        q[i["stale"]], q[i["age"]] = -T, -1
    else:
        raise ValueError(f"unknown preset {name!r}; valid: {', '.join(PRESETS)}")
    return q


def feature_bounds(num_steps: int, num_layers: int, max_gate: int) -> np.ndarray:
    """int64[NF] the largest value each feature can take on a trace in demand-only replay
    (``pf`` and ``level`` are 0 there)."""
    T = int(num_steps)
    return np.array([T, T, T, num_layers, num_layers, 1, max(int(max_gate), 0), 0, 0], np.int64)


def _terms(q, bounds) -> np.ndarray:
    """int64[NF] ``|q_i| * bound_i``: the most each feature can add to the score's magnitude."""
    return np.abs(np.asarray(q, np.int64)) * np.asarray(bounds, np.int64)


def check_bounds(q, bounds) -> None:
    """Raise ValueError if ``sum |q_i| * bound_i`` could overflow int32 (names the feature that
    contributes most)."""
    q = np.asarray(q, np.int64)
    terms = _terms(q, bounds)
    if int(terms.sum()) >= INT32_MAX:
        worst = FEATURES[int(np.argmax(terms))]
        raise ValueError(f"score weights {q.tolist()} can overflow int32 on this trace "
                         f"(bound {int(terms.sum())}, mostly from feature {worst!r}); use smaller weights")


def quantize(w, num_layers: int, bounds, max_scale: int = 2 ** 16) -> np.ndarray:
    """int64[NF] hard weights of real weights ``w`` (normalised features) on a trace:
    ``round(w_i * scale / n_i)`` with the largest power-of-two ``scale <= max_scale`` whose
    score fits int32."""
    w = np.asarray(w, np.float64)
    if w.shape != (NF,) or not np.all(np.isfinite(w)):
        raise ValueError(f"weights must be {NF} finite numbers ({', '.join(FEATURES)}), got {w.tolist()}")
    n = norms(num_layers)
    scale = float(max_scale)
    while scale >= 1.0:
        q = np.rint(w * scale / n).astype(np.int64)
        if int(_terms(q, bounds).sum()) < INT32_MAX:
            return q
        scale /= 2
    raise ValueError(f"weights {w.tolist()} are too large to quantise into an int32 score")


def bounds_of(steps) -> np.ndarray:
    """:func:`feature_bounds` of prepared step arrays (``visits.StepArrays``)."""
    ids, units = np.asarray(steps.ids), np.asarray(steps.units)
    N = int(ids.max()) + 1 if ids.size else 1
    gate = np.bincount(ids[ids >= 0], weights=units[ids >= 0], minlength=N)
    L = int(np.max(steps.layer)) + 1
    return feature_bounds(steps.num_steps, L, int(gate.max()) if gate.size else 0)


@dataclass(frozen=True)
class ScorePolicy:
    """A named eviction score: real weights over normalised features (what :mod:`tune` learns).

    Attributes:
        name: label used in result tables (``score:<name>``).
        weights: NF floats, ``FEATURES`` order.
        meta: free-form provenance (training traces, objective, validation numbers).
    """

    name: str
    weights: tuple
    meta: Mapping | None = None

    def q(self, steps, num_layers: int) -> np.ndarray:
        return quantize(self.weights, num_layers, bounds_of(steps))

    def save(self, path) -> Path:
        """Write ``{"name", "features", "weights", "meta"}`` as JSON; returns the path."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps({"name": self.name, "features": list(FEATURES), "weights": list(map(float, self.weights)),
                                 "meta": dict(self.meta or {})}, indent=2) + "\n", encoding="utf-8")
        return p

    @staticmethod
    def load(path) -> "ScorePolicy":
        """Read a policy written by :meth:`save`; errors name the file and the field."""
        p = Path(path)
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{p}: cannot read a score policy ({e})") from None
        if not isinstance(d, dict) or d.get("features") != list(FEATURES):
            raise ValueError(f"{p}: field 'features' must be {list(FEATURES)}, got {d.get('features') if isinstance(d, dict) else d!r}")
        w = d.get("weights")
        if not isinstance(w, Sequence) or len(w) != NF or not all(isinstance(x, (int, float)) for x in w):
            raise ValueError(f"{p}: field 'weights' must be {NF} numbers, got {w!r}")
        return ScorePolicy(str(d.get("name", p.stem)), tuple(float(x) for x in w), d.get("meta") or {})
