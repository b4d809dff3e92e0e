"""Mixed precision and miss handling: the pinned semantics (pure Python, no jax).

SpecMD's miss-policy dimension (SpecMD §3.2): what a layer does with a routed
expert that is not resident. A trace cannot run the model, so we simulate the decisions exactly
and report quality *proxies*.

Precision levels
    :class:`Precision` lists the levels an expert can be held at, highest first (e.g. int8,
    int4, int2), and the bits of the trace's ``expert_bytes`` (``base_bits``, 16 for the paper's
    Table 3 sizes). An expert at ``bits`` takes ``expert_bytes * bits / base_bits`` bytes. The
    cache counts **units** of ``unit_bytes = expert_bytes * g / base_bits`` (``g`` = gcd of the
    levels' bits): level ``i`` takes ``units[i] = bits[i] / g`` units, and a capacity in bytes is
    ``floor(bytes / unit_bytes)`` units. With one level a unit is a slot and everything is the
    slot cache of :mod:`specmd_jax.core.semantics`.

Byte-capacity eviction
    An arrival batch (see :mod:`specmd_jax.core.timing`) is admitted as its longest prefix whose units
    fit into free space plus the units of the evictable residents; the victims are the fewest
    lowest-keyed evictables that free enough (in key order, so the last victim may over-free).
    Whatever follows the first arrival that does not fit is not admitted (demand: bypass;
    prefetch: dropped), even if a later, smaller one would fit. With equal sizes this is the
    slot rule.

Per-visit scores (integers, so decisions are exact)
    For each expert ``g`` of a visit: ``score[g]`` = max over the visit's tokens of
    ``round(weight * SB_SCALE)`` (0 without weights); ``rank[g]`` = min router rank (0 = top-1);
    ``pairs[g]`` = tokens routing it; ``units[g]`` = summed ``round(weight * SB_SCALE)``.

Miss policies (:class:`MissConfig`; applied to every demanded expert that is not resident,
including a *late* one whose prefetch copy is still in flight)
    ``fetch``           fetch at level 0 (the paper's blocking fetch).
    ``fetch_lowest``    fetch at the lowest level ("fetch-lowest-bit").
    ``fetch_priority``  fetch at level 0, except the visit's low-importance experts: those whose
                        position in the visit's demand sorted by (score, id) ascending is below
                        ``floor(percentile / 100 * |D|)`` (integers: the percentile in
                        thousandths, ``round(percentile * 1000) * |D| // 100000``) are fetched at
                        ``degrade_level`` (paper: "degrades low-importance experts (bottom 60th
                        percentile)").
    ``cascade``         HOBBIT's precision cascade: level ``i`` = number of ``thresholds``
                        (router weights, descending) above the expert's score (a score at or
                        above ``thresholds[0]`` gets level 0), clipped to the lowest level.
    ``drop_priority``   skip (drop) missing experts with ``rank >= rank_threshold``; fetch the
                        others at level 0. ``rank_threshold >= K`` is ``fetch``.
    ``substitute``      use instead the resident expert of the same layer, not demanded by this
                        visit, whose running gate score (``sb``'s cumulative score, after this
                        visit's update) is closest to the missing expert's, lowest id on ties;
                        drop when the layer has none. (Zhu et al. '25 substitute by router
                        score; traces hold only the top-k's scores, so the running score stands
                        in. Ours; documented.)
    A late expert whose decision is a fetch waits for the copy already in flight (its level);
    one that is dropped or substituted is not waited for (its copy arrives later as a
    prefetch). Prefetches are always copied at level 0. A resident is served at the level it
    holds (no upgrade).

Executed set
    ``X`` = hits, fetched and waited-for experts, and substitutes. ``X`` is pinned in the visit's
    arrival batches and *used* (recency, frequency, Least-Stale's current tier); dropped experts
    are neither.

Quality proxies (counted over the *recorded* (token, expert) pairs; names say *proxy* in tables)
    pairs served as routed (any precision), dropped, substituted, rerouted away (routing,
    :mod:`specmd_jax.core.routing`); the same as router-weight units (full precision for "served");
    tokens whose top-K set changed; bits summed over the pairs that ran (as routed after
    routing, or substituted) and their count.

``lhu`` (least high-precision used, HOBBIT '24) evicts by ``(uses served at level 0 since
insertion, last use, id)``; with one level it is ``lfu``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional
from specmd_jax.core import checks

NO_DROP = 2 ** 30  # a drop_priority threshold no router rank reaches: the fetch policy
MISS_POLICIES = ("fetch", "fetch_lowest", "fetch_priority", "cascade", "drop_priority", "substitute")


@dataclasses.dataclass(frozen=True)
class Precision:
    """Precision levels, highest first: ``levels = (("int8", 8), ("int4", 4), ...)``; the trace's
    ``expert_bytes`` hold ``base_bits`` bits per weight."""

    levels: tuple = (("fp16", 16),)
    base_bits: int = 16

    def __post_init__(self):
        lv = tuple((str(n), int(b)) for n, b in self.levels)
        object.__setattr__(self, "levels", lv)
        if not lv:
            raise ValueError("precision needs at least one level")
        bits = [b for _, b in lv]
        if any(b <= 0 for b in bits) or any(a <= b for a, b in zip(bits, bits[1:])):
            raise ValueError(f"precision levels must have positive, strictly decreasing bits, got {lv}")
        if int(self.base_bits) <= 0:
            raise ValueError(f"base_bits must be > 0, got {self.base_bits!r}")

    @classmethod
    def from_fractions(cls, level_fractions, stored_bits: int = 16) -> "Precision":
        """Levels at ``round(stored_bits * f)`` bits (at least 1) for each fraction ``f``, highest first,
        named ``"<bits>bit"``; the trace's ``expert_bytes`` hold ``stored_bits`` bits per weight."""
        bits = int(stored_bits)
        lv = [max(1, round(bits * float(f))) for f in level_fractions]
        return cls(tuple((f"{b}bit", b) for b in lv), base_bits=bits)

    @property
    def plain(self) -> bool:
        """One level at the stored precision: the slot cache of the other engines."""
        return len(self.levels) == 1 and self.levels[0][1] == int(self.base_bits)

    @property
    def bits(self) -> tuple:
        return tuple(b for _, b in self.levels)

    @property
    def names(self) -> tuple:
        return tuple(n for n, _ in self.levels)

    @property
    def units(self) -> tuple:
        """Units each level takes (``bits / gcd``)."""
        g = math.gcd(*self.bits)
        return tuple(b // g for b in self.bits)

    def unit_bytes(self, expert_bytes: int) -> float:
        return expert_bytes * math.gcd(*self.bits) / self.base_bits

    def level_bytes(self, expert_bytes: int, level: int) -> int:
        """Bytes of one expert at ``level`` (rounded up)."""
        return int(math.ceil(expert_bytes * self.bits[level] / self.base_bits))

    def capacity_units(self, capacity_bytes: float, expert_bytes: int) -> int:
        """Units that fit in ``capacity_bytes``."""
        return int(math.floor(capacity_bytes / self.unit_bytes(expert_bytes) + 1e-9))


PRECISION_PRESETS = {
    "fp16": Precision(),
    "int8-int4-int2": Precision((("int8", 8), ("int4", 4), ("int2", 2))),
    "fp16-int8-int4-int2": Precision((("fp16", 16), ("int8", 8), ("int4", 4), ("int2", 2))),
    "int4-int2": Precision((("int4", 4), ("int2", 2))),
}


@dataclasses.dataclass(frozen=True)
class MissConfig:
    """A miss policy and its numbers (see the module docstring).

    Attributes:
        policy: one of :data:`MISS_POLICIES`.
        percentile: ``fetch_priority``: share of the visit's demand (by score) degraded.
        degrade_level: ``fetch_priority``: level the degraded experts are fetched at (clipped).
        thresholds: ``cascade``: router-weight thresholds, descending.
        rank_threshold: ``drop_priority``: drop missing experts of router rank >= this.
    """

    policy: str = "fetch"
    percentile: float = 60.0
    degrade_level: int = 1
    thresholds: tuple = (0.2, 0.1, 0.05)
    rank_threshold: int = 3

    def __post_init__(self):
        if self.policy not in MISS_POLICIES:
            raise ValueError(f"unknown miss policy {self.policy!r}; valid: {', '.join(MISS_POLICIES)}")
        if not 0.0 <= float(self.percentile) <= 100.0:
            raise ValueError(f"percentile must be in [0, 100], got {self.percentile!r}")
        checks.whole("miss.degrade_level", self.degrade_level)
        checks.whole("miss.rank_threshold", self.rank_threshold)
        th = tuple(float(t) for t in self.thresholds)
        object.__setattr__(self, "thresholds", th)
        if any(a < b for a, b in zip(th, th[1:])):
            raise ValueError(f"cascade thresholds must be descending, got {th}")

    @property
    def percentile_milli(self) -> int:
        """The percentile in thousandths (the integer the decisions use)."""
        return int(round(float(self.percentile) * 1000))

    def threshold_units(self, scale: int) -> tuple:
        """``cascade`` thresholds as integer router-weight units."""
        return tuple(int(round(t * scale)) for t in self.thresholds)

    def label(self) -> str:
        extra = {"fetch_priority": f"(p{self.percentile:g}->L{self.degrade_level})",
                 "cascade": f"({','.join(f'{t:g}' for t in self.thresholds)})",
                 "drop_priority": f"(rank>={self.rank_threshold})"}.get(self.policy, "")
        return self.policy + extra


def decide(cfg: MissConfig, nlevels: int, missing: list, demand: list, score: dict, rank: dict,
           running: dict, residents_of_layer: list, scale: int) -> dict:
    """Decisions for the ``missing`` experts of one visit.

    Args:
        cfg: the miss policy.
        nlevels: number of precision levels.
        missing: ids not resident (ascending).
        demand: all demanded ids of the visit (ascending).
        score, rank: per-visit integer score and min router rank of each demanded id.
        running: running gate score of every id (``substitute``).
        residents_of_layer: resident ids of the visit's layer not in the demand (ascending).
        scale: ``SB_SCALE`` (router weight -> integer units).

    Returns:
        ``{id: ("fetch", level) | ("drop",) | ("sub", substitute id)}``.
    """
    low = nlevels - 1
    out = {}
    if cfg.policy == "fetch_priority":
        order = sorted(demand, key=lambda g: (score[g], g))
        cut = cfg.percentile_milli * len(demand) // 100000
        degraded = set(order[:cut])
    th_units = cfg.threshold_units(scale)
    for g in missing:
        if cfg.policy == "fetch":
            out[g] = ("fetch", 0)
        elif cfg.policy == "fetch_lowest":
            out[g] = ("fetch", low)
        elif cfg.policy == "fetch_priority":
            out[g] = ("fetch", min(int(cfg.degrade_level), low) if g in degraded else 0)
        elif cfg.policy == "cascade":
            out[g] = ("fetch", min(sum(1 for t in th_units if score[g] < t), low))
        elif cfg.policy == "drop_priority":
            out[g] = ("drop",) if rank[g] >= int(cfg.rank_threshold) else ("fetch", 0)
        else:  # substitute
            if residents_of_layer:
                c = min(residents_of_layer, key=lambda x: (abs(running.get(x, 0) - running.get(g, 0)), x))
                out[g] = ("sub", c)
            else:
                out[g] = ("drop",)
    return out


def row_details(rows: list, wrows: list, l: int, E: int, scale: int) -> tuple[dict, dict, dict]:
    """``(score, rank, units)`` dicts over the global ids the visit's (routed) token rows demand
    (``rows``: per-token expert lists in rank order; ``wrows``: their weights)."""
    score, rank, units = {}, {}, {}
    for row, ws in zip(rows, wrows):
        for k, (e, w) in enumerate(zip(row, ws)):
            g = l * E + e
            u = round(w * scale)
            score[g] = max(score.get(g, 0), u)
            rank[g] = min(rank.get(g, k), k)
            units[g] = units.get(g, 0) + u
    return score, rank, units


def proxy_rates(tot: dict) -> dict:
    """Quality proxies as rates from :data:`PROXY_COUNTERS` totals (NaN where undefined)."""
    def div(a, b):
        return a / b if b else float("nan")
    return {"proxy_served_as_routed": div(tot["pairs_served"], tot["pairs"]),
            "proxy_mass_full_precision": div(tot["units_full"], tot["units_total"]),
            "proxy_mass_dropped": div(tot["units_dropped"], tot["units_total"]),
            "proxy_mass_substituted": div(tot["units_substituted"], tot["units_total"]),
            "proxy_mass_rerouted": div(tot["units_rerouted"], tot["units_total"]),
            "proxy_mean_bits": div(tot["bits_served"], tot["exec_pairs"]),
            "proxy_tokens_rerouted": div(tot["tokens_changed"], tot["tokens"])}


def structural_kind(misses) -> tuple[str, bool]:
    """The structure a list of :class:`MissConfig` shares in one JAX program: ``(kind, substitute)``
    (fetch and drop_priority mix; any other policy only with itself). Raises ValueError."""
    pols = {m.policy for m in misses}
    if pols <= {"fetch", "drop_priority"}:
        return "fetch", False
    if pols == {"substitute"}:
        return "fetch", True
    if len(pols) == 1 and pols <= {"fetch_lowest", "fetch_priority", "cascade"}:
        if len({len(m.thresholds) for m in misses}) > 1:
            raise ValueError("cascade configurations of one run need the same number of thresholds")
        return pols.pop(), False
    raise ValueError(f"one asynchronous run takes fetch/drop_priority, or one other miss policy; got {sorted(pols)}")


def check_levels(policy: str, precision: Optional[Precision]) -> None:
    """Policies the mixed-size eviction path cannot run."""
    if policy == "random" and precision is not None and len(set(precision.units)) > 1:
        raise ValueError("policy 'random' draws a fixed number of victims; it needs equal-size levels")
