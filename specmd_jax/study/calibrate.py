"""Calibrating the synthetic generator to real routing statistics (numpy only, no jax).

What is matched, and with which permutation-invariant statistic (expert ids are arbitrary
labels, so only label-free shapes can be compared):

* **popularity skew** per layer: the total-variation distance between the *sorted* expert
  frequency vectors (real vs synthetic) at layers 0, 7 and 15, from the OLMoE routing counts in
  ``../shared/traces/olmoe-routing-stats/`` (``expert_counts``: every top-K slot);
* **cross-layer structure**: the mutual information (nats, Miller-Madow) of the
  *slot-aligned* expert pairs of layers (0, 7) and (7, 15) (``expert_counts_crosslayer``: the
  expert in rank slot ``s`` at layer ``i`` with the one in slot ``s`` at layer ``j``), reported
  as the absolute MI difference, plus the TV distance of the sorted pair frequencies (both
  sides at the synthetic sample size: :func:`distances`);
* **reuse across passes**: the mean fraction of a token's top-K that the previous token of the
  same request also routed to at the same layer, on the real Qwen3 and Mixtral traces.

The generator's knobs (:func:`specmd_jax.core.synthetic.generate`): ``skew`` per layer (fitted at
layers 0, 7 and 15, linearly interpolated between them and held flat past 15), ``cross_layer``
per layer (one value for layers 1-7, one for 8 onwards: the (0, 7) and (7, 15) pairs depend on
the products of the per-layer coupling along the way), ``rank_coupling`` (whether a token's
rank order carries across layers: slot-aligned pairs need it) and ``reuse`` (re-fitted to the
real reuse rate after each round of the search). Fitting is coordinate
search on a grid, each evaluation a seeded synthetic trace scored with the same statistics
(``experiments/calibrate.py`` runs it and writes the report; the numbers found are in
:data:`CALIBRATED`).

What a calibrated synthetic trace can and cannot stand for: it matches these marginals and
pairwise statistics, not the token-level sequence of a real model (no topic drift, no prompt
structure, layer coupling only through the previous layer); its cache behaviour is a model's
only as far as those statistics decide it.

The OLMoE stats files are Python pickles; :func:`load_routing_stats` loads them from the
project's trusted copy only (pickle can run code).
"""

from __future__ import annotations

import glob
import os
import pickle
from typing import Optional, Sequence

import numpy as np

from specmd_jax.core.presets import get_model_preset

STAT_LAYERS = (0, 7, 15)
STAT_PAIRS = ((0, 7), (7, 15))
STATS_MODELS = {"olmoe-1b-7b": "olmoe", "mixtral-8x7b": "mistral"}  # preset -> folder in olmoe-routing-stats

# Fitted by `python experiments/calibrate.py` (outputs/calibration/calibration.md has the fit and
# every distance before and after; calibrated.json the same numbers): skew at layers 0, 7, 15;
# cross_layer for layers 1-7 and 8+; rank_coupling; reuse from the real traces. Qwen3-30B-A3B has
# no routing counts: only its reuse is fitted, the rest are generate()'s defaults.
CALIBRATED: dict = {
    "olmoe-1b-7b": {"skew": (0.4, 2.0, 0.2), "cross_layer": (0.9, 1.0), "rank_coupling": 2.0, "reuse": 0.1},
    "mixtral-8x7b": {"skew": (0.2, 0.0, 0.2), "cross_layer": (0.8, 0.9), "rank_coupling": 0.0, "reuse": 0.05},
    "qwen3-30b-a3b": {"skew": (1.0, 1.0, 1.0), "cross_layer": (0.3, 0.3), "rank_coupling": 0.0, "reuse": 0.25},
}


def load_routing_stats(root: str, model: str = "olmoe", domains: Optional[Sequence[str]] = None) -> dict:
    """Summed OLMoE-repository routing counts of ``model`` (``olmoe`` or ``mistral``) over
    ``domains`` (default: every domain with both counts and pairs): ``{"counts": {layer: float64[E]}, "pairs": {(i, j):
    float64[E, E]}, "domains": [...]}``. Raises ValueError naming the folder if files are missing."""
    base = os.path.join(root, model)

    def names_in(sub):
        return {os.path.splitext(os.path.basename(f))[0] for f in glob.glob(os.path.join(base, sub, "*.pkl"))}
    # domains with both the counts and the pairs (OLMoE's tulu has counts only)
    names = sorted(names_in("expert_counts") & names_in("expert_counts_crosslayer"))
    if domains is not None:
        names = [n for n in names if n in set(domains)]
    if not names:
        raise ValueError(f"no expert_counts/*.pkl with a matching expert_counts_crosslayer/*.pkl under {base} "
                         f"(domains {domains})")
    counts_l, pairs_l = [], []
    for name in names:
        with open(os.path.join(base, "expert_counts", f"{name}.pkl"), "rb") as fh:
            counts_l.append(pickle.load(fh))
        with open(os.path.join(base, "expert_counts_crosslayer", f"{name}.pkl"), "rb") as fh:
            pairs_l.append(pickle.load(fh))
    E = 1 + max(int(k) for c in counts_l for layer in c for k in layer)
    counts = {l: np.zeros(E) for l in STAT_LAYERS}
    pairs = {p: np.zeros((E, E)) for p in STAT_PAIRS}
    for c in counts_l:
        for i, l in enumerate(STAT_LAYERS):
            for k, v in c[i].items():
                counts[l][int(k)] += v
    for c in pairs_l:
        for i, p in enumerate(STAT_PAIRS):
            for (a, b), v in c[i].items():
                pairs[p][int(a), int(b)] += v
    return {"counts": counts, "pairs": pairs, "domains": names}


def trace_stats(trace, layers=STAT_LAYERS, pairs=STAT_PAIRS) -> dict:
    """The same statistics from a trace: per-layer expert counts over every routed slot, and
    slot-aligned pair counts of the same token at layers ``i`` and ``j``."""
    L, E = trace.shape.num_layers, trace.shape.num_experts
    off = trace.cell_offsets
    P = trace.num_passes
    rows = {l: np.concatenate([np.arange(off[p * L + l], off[p * L + l + 1]) for p in range(P)]) for l in layers}
    ex = trace.experts.astype(np.int64)
    counts = {l: np.bincount(ex[rows[l]].reshape(-1), minlength=E).astype(np.float64) for l in layers}
    pc = {}
    for i, j in pairs:
        a, b = ex[rows[i]].reshape(-1), ex[rows[j]].reshape(-1)   # same token order, slot by slot
        pc[(i, j)] = np.bincount(a * E + b, minlength=E * E).reshape(E, E).astype(np.float64)
    return {"counts": counts, "pairs": pc}


def tv_sorted(p: np.ndarray, q: np.ndarray) -> float:
    """Total-variation distance between two frequency vectors after sorting each (label-free)."""
    a = np.sort(np.ravel(p) / np.sum(p))[::-1]
    b = np.sort(np.ravel(q) / np.sum(q))[::-1]
    n = max(a.size, b.size)
    a, b = np.pad(a, (0, n - a.size)), np.pad(b, (0, n - b.size))
    return 0.5 * float(np.abs(a - b).sum())


def mutual_information(m: np.ndarray) -> float:
    """Miller-Madow-corrected plug-in mutual information (nats) of a pair-count matrix."""
    n = float(m.sum())
    P = m / n
    px, py = P.sum(1), P.sum(0)
    nz = P > 0
    mi = float((P[nz] * np.log(P[nz] / np.outer(px, py)[nz])).sum())
    # bias of the plug-in estimate: (cells - rows - cols + 1) / (2 n) over the occupied support
    bias = (np.count_nonzero(nz) - np.count_nonzero(px) - np.count_nonzero(py) + 1) / (2.0 * n)
    return mi - bias


def reuse_rate(trace) -> float:
    """Mean fraction of a token's top-K also routed by the previous token of the same request at
    the same layer (token order: prefill rows, then decode passes)."""
    L = trace.shape.num_layers
    off = trace.cell_offsets
    ex = trace.experts.astype(np.int64)
    shared, total = 0, 0
    for req in np.unique(trace.pass_request):
        passes = np.flatnonzero(trace.pass_request == req)
        for l in range(L):
            rows = np.concatenate([np.arange(off[p * L + l], off[p * L + l + 1]) for p in passes])
            if rows.size < 2:
                continue
            a, b = ex[rows[:-1]], ex[rows[1:]]
            shared += int((a[:, :, None] == b[:, None, :]).any(axis=2).sum())
            total += b.size
    return shared / total if total else float("nan")


def _subsample(counts: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """A multinomial sample of ``n`` draws from the distribution of ``counts`` (same shape)."""
    p = np.ravel(counts) / np.sum(counts)
    return rng.multinomial(int(n), p).reshape(np.shape(counts)).astype(np.float64)


def distances(real: dict, syn: dict, seed: int = 0) -> dict:
    """Per-statistic distances (smaller is closer): ``tv_layer{l}``, ``mi_gap_{i}_{j}`` (absolute
    MI difference, nats), ``tv_pairs_{i}_{j}``, with the MI values themselves.

    Both sides are estimated at the *synthetic* sample size: the real counts (millions of
    slots) are first subsampled (multinomial, seeded) to the synthetic total, so finite-sample
    bias (sorted empirical frequencies look skewed, plug-in MI is biased upwards on sparse
    pair tables) is the same on both sides and cancels in the comparison."""
    rng = np.random.default_rng(seed)
    out = {}
    for l in real["counts"]:
        r = _subsample(real["counts"][l], syn["counts"][l].sum(), rng)
        out[f"tv_layer{l}"] = tv_sorted(r, syn["counts"][l])
    for (i, j), m in real["pairs"].items():
        r = _subsample(m, syn["pairs"][(i, j)].sum(), rng)
        mr, ms = mutual_information(r), mutual_information(syn["pairs"][(i, j)])
        out[f"mi_real_{i}_{j}"], out[f"mi_syn_{i}_{j}"] = mr, ms
        out[f"mi_gap_{i}_{j}"] = abs(mr - ms)
        out[f"tv_pairs_{i}_{j}"] = tv_sorted(r, syn["pairs"][(i, j)])
    return out


def expand_knobs(L: int, skew3: Sequence[float], cross2: Sequence[float]) -> tuple[list, list]:
    """Per-layer ``skew`` (values at layers 0, 7, 15 interpolated linearly, flat past 15) and
    ``cross_layer`` (``cross2[0]`` for layers 1-7, ``cross2[1]`` from 8 on) lists of length ``L``."""
    xs = [l for l in STAT_LAYERS if l < L] or [0]
    skew = np.interp(np.arange(L), xs, list(skew3)[: len(xs)])
    cross = [0.0] + [float(cross2[0]) if l <= 7 else float(cross2[1]) for l in range(1, L)]
    return [round(float(s), 4) for s in skew], cross


def calibrated_knobs(model: str) -> dict:
    """``generate`` keyword arguments of the calibrated preset of ``model`` (``skew`` and
    ``cross_layer`` per layer, ``reuse``, ``rank_coupling``). KeyError names the models that
    have one."""
    if model not in CALIBRATED:
        raise KeyError(f"no calibrated synthetic preset for {model!r}; have: {', '.join(sorted(CALIBRATED))}")
    c = CALIBRATED[model]
    skew, cross = expand_knobs(get_model_preset(model).num_layers, c["skew"], c["cross_layer"])
    return {"skew": skew, "cross_layer": cross, "reuse": float(c["reuse"]),
            "rank_coupling": float(c["rank_coupling"])}


def fit_score(d: dict) -> float:
    """One number to minimise: mean layer TV plus mean MI gap (nats)."""
    tv = [v for k, v in d.items() if k.startswith("tv_layer")]
    mi = [v for k, v in d.items() if k.startswith("mi_gap")]
    return float(np.mean(tv) + (np.mean(mi) if mi else 0.0))
