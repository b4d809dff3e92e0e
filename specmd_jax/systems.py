"""Prior systems as SpecMD policy tuples (prefetch, eviction, miss, routing), SpecMD Table 1/2.

Sources: SpecMD §3.5 / Table 1 rows Config#1-#5 (see ``../shared/SPECMD.md`` §3.5). Only the
prefetch and eviction dimensions exist in this build; the miss and routing dimensions (issue 4)
run as *fetch* and *standard* routing until then, and every substitution is listed in
``System.notes`` so that tables can say so:

* HOBBIT evicts by LHU (least high-precision used), which needs mixed precisions (issue 4); with
  one precision every use is a high-precision use, so LHU reduces to least-frequently-used and
  ``lfu`` stands in for it.
* Zhu et al.'s miss policy is substitution, HOBBIT's a precision cascade, MixtureCache's routing
  is cache-aware: all run as fetch / standard here.

"Spec" (Eliseev-style speculative next-layer prefetch) is top-k x 1.0 of the next layer's
predicted scores; "Score" is the 80th-percentile selector (SpecMD §3.4). The predictor is the
trace's recorded predictions when it has them; otherwise the caller picks a stand-in
(``predictor=``), and the table must say which.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from .prefetch import PrefetchConfig


@dataclasses.dataclass(frozen=True)
class System:
    """One policy tuple.

    Attributes:
        name: key in :data:`SYSTEMS`.
        label: citation label.
        selector: ``None`` (no prefetch), ``"topk"`` (Spec) or ``"percentile"`` (Score, 80th).
        eviction: eviction policy name in this build.
        miss: miss policy named by the paper (runs as fetch until issue 4).
        routing: routing policy named by the paper (runs as standard until issue 4).
        notes: substitutions made in this build.
    """

    name: str
    label: str
    selector: Optional[str]
    eviction: str
    miss: str = "fetch"
    routing: str = "standard"
    notes: tuple = ()

    def prefetch(self, predictor: str = "recorded", **kw) -> Optional[PrefetchConfig]:
        """The prefetch config of this system with ``predictor`` (and extra fields, e.g. recall)."""
        if self.selector is None:
            return None
        return PrefetchConfig(predictor, self.selector, **kw)

    def with_eviction(self, eviction: str) -> "System":
        """The same tuple with another eviction policy (Table 2: Least-Stale as a drop-in)."""
        return dataclasses.replace(self, eviction=eviction, name=f"{self.name}+{eviction}")

    def run_notes(self) -> tuple:
        n = list(self.notes)
        if self.miss != "fetch":
            n.append(f"miss policy '{self.miss}' runs as fetch (issue 4 not landed)")
        if self.routing != "standard":
            n.append(f"routing '{self.routing}' runs as standard (issue 4 not landed)")
        return tuple(n)


SYSTEMS = {
    # Config#1: Spec, LRU, Fetch, Stnd (Mixtral-offloading)
    "eliseev23": System("eliseev23", "Eliseev & Mazur '23", "topk", "lru"),
    # Config#2: Score, ScoreE, Subs, Stnd
    "zhu25": System("zhu25", "Zhu et al. '25", "percentile", "sb", miss="substitution"),
    # Config#3: Spec, LHU, Cascade, Stnd
    "hobbit24": System("hobbit24", "HOBBIT '24", "topk", "lfu", miss="cascade",
                       notes=("LHU runs as lfu: with a single precision every use is high-precision",)),
    # Config#4: No prefetch, LRU, Fetch, Mod
    "mixturecache25": System("mixturecache25", "MixtureCache '25", None, "lru", routing="cache-aware"),
    # Config#5: Score, LS, Fetch, Stnd (SpecMD's pick)
    "specmd": System("specmd", "SpecMD (Config#5)", "percentile", "ls"),
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
