"""Prior systems as SpecMD policy tuples (prefetch, eviction, miss, routing), SpecMD Table 1/2.

Sources: SpecMD §3.5 / Table 1 rows Config#1-#5. All four
dimensions run as the paper names them (prefetch, eviction, miss handling :mod:`specmd_jax.core.miss`,
routing :mod:`specmd_jax.core.routing`); where ours stands in for theirs, :meth:`System.run_notes`
says so that tables can print it:

* Zhu et al. substitute missing experts (``substitute``: closest running gate score, our stand-in
  for their router-score proximity).
* HOBBIT evicts by LHU with a precision cascade: its experts can be held at the stored precision
  or at half of it (``level_fractions = (1, 0.5)``: int4 and int2 for the paper's 4-bit Table 1
  setting), chosen by router-weight thresholds.
* MixtureCache routes cache-aware with ``lam = 0.3`` (the paper: "0.1-0.5 work best"); on a
  trace without router logits only the recorded candidates are re-ranked.

"Spec" (Eliseev-style speculative next-layer prefetch) is top-k x 1.0 of the next layer's
predicted scores; "Score" is the 80th-percentile selector (SpecMD §3.4). The predictor is the
trace's recorded predictions when it has them; otherwise the caller picks a stand-in
(``predictor=``), and the table must say which.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from specmd_jax.core.miss import MissConfig, Precision
from specmd_jax.core.prefetch import PrefetchConfig
from specmd_jax.core.routing import RoutingConfig


@dataclasses.dataclass(frozen=True)
class System:
    """One policy tuple.

    Attributes:
        name: key in :data:`SYSTEMS`.
        label: citation label.
        selector: ``None`` (no prefetch), ``"topk"`` (Spec) or ``"percentile"`` (Score, 80th).
        eviction: eviction policy name in this build.
        miss: miss policy (:data:`specmd_jax.core.miss.MISS_POLICIES`), default numbers.
        routing: routing policy (:data:`specmd_jax.core.routing.ROUTINGS`) and ``lam`` its strength.
        level_fractions: precision levels as fractions of the stored bits, highest first.
        notes: substitutions made in this build.
    """

    name: str
    label: str
    selector: Optional[str]
    eviction: str
    miss: str = "fetch"
    routing: str = "standard"
    lam: float = 0.0
    level_fractions: tuple = (1.0,)
    notes: tuple = ()

    def miss_config(self) -> MissConfig:
        return MissConfig(self.miss)

    def routing_config(self) -> RoutingConfig:
        return RoutingConfig(self.routing, self.lam)

    def precision(self, stored_bits: int = 16) -> Precision:
        """Precision levels for experts stored at ``stored_bits`` bits (the trace's ``expert_bytes``)."""
        bits = [max(1, int(round(stored_bits * f))) for f in self.level_fractions]
        return Precision(tuple((f"{b}bit", b) for b in bits), base_bits=stored_bits)

    def prefetch(self, predictor: str = "recorded", **kw) -> Optional[PrefetchConfig]:
        """The prefetch config of this system with ``predictor`` (and extra fields, e.g. recall)."""
        if self.selector is None:
            return None
        return PrefetchConfig(predictor, self.selector, **kw)

    def with_eviction(self, eviction: str) -> "System":
        """The same tuple with another eviction policy (Table 2: Least-Stale as a drop-in)."""
        return dataclasses.replace(self, eviction=eviction, name=f"{self.name}+{eviction}")

    def run_notes(self) -> tuple:
        return tuple(self.notes)


SYSTEMS = {
    # Config#1: Spec, LRU, Fetch, Stnd (Mixtral-offloading)
    "eliseev23": System("eliseev23", "Eliseev & Mazur '23", "topk", "lru"),
    # Config#2: Score, ScoreE, Subs, Stnd
    "zhu25": System("zhu25", "Zhu et al. '25", "percentile", "sb", miss="substitute",
                    notes=("substitution by closest running gate score (traces hold only top-k scores)",)),
    # Config#3: Spec, LHU, Cascade, Stnd
    "hobbit24": System("hobbit24", "HOBBIT '24", "topk", "lhu", miss="cascade", level_fractions=(1.0, 0.5)),
    # Config#4: No prefetch, LRU, Fetch, Mod
    "mixturecache25": System("mixturecache25", "MixtureCache '25", None, "lru", routing="cache_aware", lam=0.3),
    # Config#5: Score, LS, Fetch, Stnd (SpecMD's pick)
    "specmd": System("specmd", "SpecMD (Config#5)", "percentile", "ls"),
}

# the reference point of the Table-1 study (ours: the paper's "Baseline (8bit)" row is a plain
# offloaded model; we take demand-only LRU caching with blocking fetch and standard routing)
BASELINE = System("baseline", "Baseline (no prefetch, LRU, fetch)", None, "lru")

# SpecMD Table 1 (5 % capacity, 4-bit experts, 5 GB/s): per model and configuration
# (GSM8K, TruthfulQA, NQ, TTFT ms, tokens/s); "baseline" is the paper's "Baseline (8bit)" row
PAPER_TABLE1 = {
    "olmoe-1b-7b": {"baseline": (0.704, 0.540, 0.361, 3166, 1.5), "eliseev23": (0.677, 0.555, 0.343, 3077, 1.91),
                    "zhu25": (0.073, 0.493, 0.159, 2257, 1.22), "hobbit24": (0.606, 0.548, 0.291, 1590, 1.34),
                    "mixturecache25": (0.664, 0.558, 0.332, 2665, 2.33), "specmd": (0.691, 0.559, 0.331, 2220, 1.69)},
    "mixtral-8x7b": {"baseline": (0.569, 0.345, 0.510, 10296, 0.4), "eliseev23": (0.566, 0.343, 0.518, 4238, 0.98),
                     "zhu25": (0.037, 0.251, 0.273, 1620, 0.75), "hobbit24": (0.310, 0.326, 0.347, 2322, 0.71),
                     "mixturecache25": (0.566, 0.326, 0.517, 4333, 1.07), "specmd": (0.528, 0.356, 0.471, 3044, 1.42)},
    "phi-3.5-moe": {"baseline": (0.697, 0.774, 0.594, 7902, 0.8), "eliseev23": (0.705, 0.775, 0.589, 4452, 1.69),
                    "zhu25": (0.027, 0.514, 0.269, 1906, 0.86), "hobbit24": (0.604, 0.743, 0.563, 3459, 1.05),
                    "mixturecache25": (0.705, 0.777, 0.591, 5025, 1.72), "specmd": (0.684, 0.780, 0.587, 3863, 1.11)},
    "qwen1.5-moe-a2.7b": {"baseline": (0.471, 0.595, 0.460, 5728, 2.3), "eliseev23": (0.506, 0.614, 0.473, 3724, 2.89),
                          "zhu25": (0.008, 0.480, 0.408, 2739, 1.11), "hobbit24": (0.217, 0.608, 0.462, 2492, 2.19),
                          "mixturecache25": (0.296, 0.611, 0.465, 3489, 3.50),
                          "specmd": (0.497, 0.607, 0.474, 2893, 2.11)},
}

# SpecMD Table 2 (App. D), OLMoE-1B-7B at 5 %: TTFT (ms) original -> with LS, and the gain
PAPER_TABLE2_OLMOE = {
    "eliseev23": (3076.8, 2748.1, 10.7), "zhu25": (2257.2, 1473.1, 34.7),
    "hobbit24": (1590.1, 1309.2, 17.7), "mixturecache25": (2664.6, 2297.5, 13.8),
}


def get_system(name: str) -> System:
    key = str(name).lower()
    if key not in SYSTEMS:
        raise ValueError(f"unknown system {name!r}; valid: {', '.join(SYSTEMS)}")
    return SYSTEMS[key]
