"""Hardware timing parameters and the pinned semantics of prefetch + timing (pure Python, no jax).

Time is integer **ticks of 100 ns** (``TICK_S``), so the reference and the kernels take the same
decisions bit for bit (float times would let a copy "arrive" on one side of a visit boundary in
one implementation and on the other side in another). Conversions round to the nearest tick.

Replay of one visit ``s = (p, l)`` with demand ``D`` (ascending ids) at time ``t``:

1. At a pass start the "evicted in this pass" set is cleared.
2. Each ``x`` in ``D`` is a *hit* (resident), *late* (its copy is queued or in flight: a prefetch
   that has not arrived) or a *miss* (fetched now). A miss on an expert evicted earlier in the
   pass is a collision miss.
3. Misses are queued on the single copy engine in ascending id order, **behind every copy
   already queued** (one FIFO queue, no priorities, no preemption, no cancellation): a copy
   starts at ``max(issue time, end of the previous copy)`` and takes ``transfer`` ticks
   (``latency + expert_bytes / bandwidth``).
4. ``t_ready`` = the latest completion among ``D``'s late and missed copies (``t`` if none);
   ``stall = t_ready - t``.
5. Every copy completing at or before ``t_ready`` arrives (one *arrival batch*, ``D`` pinned).
6. ``D`` is used: recency/frequency/tier stamps as in the demand-only replay (one stamp for the
   whole visit, ids ascending).
7. Prefetch issue at ``t_ready`` (after the demand is served, overlapping the layer's compute):
   each proposal of the plan, in order, is skipped if resident (Least-Stale re-marks it
   *current*; no other policy treats this as a use) or already queued, else queued. With
   ``instant_prefetch`` the proposals are inserted at once as an arrival batch instead (no copy
   engine time): this separates the policy effect from the timing effect.
8. The layer computes: ``t_end = t_ready + compute`` (decode: ``decode_layer``; prefill:
   ``prefill_layer + tokens * prefill_token``).
9. Every copy completing at or before ``t_end`` arrives (a second batch, ``D`` pinned).

An arrival batch (copies in completion order, which is issue order: one FIFO engine) admits demanded copies first (they
must run; ascending id), then prefetched ones in completion order, into free slots or by
evicting the policy's lowest-keyed residents that are neither in ``D`` nor in the batch; what
does not fit is a *bypass* (demand: used, not cached) or a *dropped* prefetch. Arriving prefetches
are stamped at arrival (LRU recency, FIFO insertion, LFU count 0, Least-Stale current tier with its
layer and arrival order); Belady keys them by their next demand. A prefetched expert demanded
while resident or in flight is *useful*; one evicted before any demand is *wasted*. Copies
still queued at the end of the trace never arrive.

Outputs: stall per visit; each pass's duration; TTFT = the duration of a request's prefill
pass(es); TPOT = mean duration of decode passes.

**Execution readings** (:class:`Reading`). The steps above are one reading of how a layer runs
(:data:`VISIT_READING`, ``visit/after_use/visit``, the only one before the readings existed):
the whole visit is served, pinned and used together, and the plan is issued after the use. Under
it a prefetch is always newer than the layer just used, so LRU protects it exactly as
Least-Stale does. Three dimensions generalise it. The default, :data:`DEFAULT_READING` =
``expert/at_router/running``, is the reading that reproduces the paper's numbers where any does
(``outputs/readings/readings.md``: LS vs LRU "up to 85x" at 1 %, the Table 2 TTFT cuts of
Eliseev '23 and HOBBIT '24, Table 1's #5 / #1 on OLMoE, LRU's collision rate at 5 %), and the
one that reads the paper's own description: the gate hook submits the next layer's prefetch when
the router runs, experts execute one request at a time, and an asynchronous watchdog evicts by
policy with nothing but the running expert safe.

``execution``
    ``visit``: one *turn* per visit whose demand is the whole ``D`` (steps 2-9 above).
    ``expert`` (default): the visit's distinct experts run one at a time in *router order* (first
    appearance, token-major, then rank), one turn each; a visit with no demand has one empty
    turn. Each turn repeats steps 2-9 for its one expert ``x`` at its own start time: ``x`` is
    classified when its turn comes (resident: hit; copy in flight: late; else a miss, fetched
    now, behind everything queued), the miss policy decides for ``x`` alone (with the visit's
    ranks, scores and percentile; ``substitute`` picks its stand-in among the layer's residents
    outside the visit's demand at that moment), ``x`` (or its stand-in) is used
    (its own recency/entry stamp), then computes its share of the layer. Shares: the layer's
    compute ``C`` split evenly over the ``n`` turns (``C // n``, plus one tick for the first
    ``C % n`` turns), or ``Hardware.expert_us`` per turn when set (then the layer computes
    ``n x expert_us`` under ``visit`` too, so readings stay comparable). A dropped expert's turn
    still takes its share (under ``visit`` a drop does not shorten the layer either). The
    running gate scores (``sb``, ``substitute``) take the whole visit's router weights at the
    router; Belady's next use of an expert is updated when it is used.
``prefetch_issue``
    ``after_use``: the plan is issued once the visit's last turn has been used, at its
    ``t_ready`` (step 7). ``at_router`` (default): when the router runs, i.e. in the first turn right after
    its demand fetches are queued (under ``visit``: every miss of the visit; under ``expert``:
    the first expert's), before anything arrives or is used, so copies can land between the
    layer's expert uses. With ``instant_prefetch`` the proposals are admitted there and then.
``pin``
    What an arrival batch may not evict (besides its own members). ``visit``: the
    visit's executed set under ``execution=visit`` (step 5); under ``expert`` every expert the
    router selected for the visit, until the visit ends (and the running stand-in of a
    ``substitute``). ``running`` (default): only the turn's executed expert, so an arrival may evict a demanded expert of the same visit whose turn has not come
    (its use is then a collision miss). Under ``execution=visit`` the running set *is* the
    visit's executed set, so ``pin`` changes nothing there (tested).

In every reading an arrival batch admits the running turn's own demand copies first (ascending
id), then every other copy in completion order (a copy of an expert whose turn has not come is a
prefetch: it enters as one and is *useful* when its turn comes).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Optional

TICK_S = 1e-7  # one tick = 100 ns
EXECUTIONS = ("visit", "expert")
PREFETCH_ISSUES = ("after_use", "at_router")
PINS = ("visit", "running")


@dataclasses.dataclass(frozen=True)
class Reading:
    """How a layer executes (module docstring): the three dimensions of the timed model. The
    defaults are :data:`DEFAULT_READING` (``expert/at_router/running``); :data:`VISIT_READING`
    (``visit/after_use/visit``) is the whole-visit reading of earlier releases.

    Attributes:
        execution: ``visit`` (the whole demand at once) or ``expert`` (one expert at a time, in
            router order).
        prefetch_issue: ``after_use`` (the plan goes out after the layer's demand was used) or
            ``at_router`` (when the layer's router runs, before its experts execute).
        pin: ``visit`` (the visit's demand is never evicted to serve it) or ``running`` (only the
            expert being executed is).
    """

    execution: str = "expert"
    prefetch_issue: str = "at_router"
    pin: str = "running"

    def __post_init__(self):
        for name, valid in (("execution", EXECUTIONS), ("prefetch_issue", PREFETCH_ISSUES), ("pin", PINS)):
            v = getattr(self, name)
            if v not in valid:
                raise ValueError(f"{name} must be one of {valid}, got {v!r}")

    @property
    def label(self) -> str:
        """``execution/prefetch_issue/pin``, e.g. ``expert/at_router/running``."""
        return f"{self.execution}/{self.prefetch_issue}/{self.pin}"

    @property
    def pins_running(self) -> bool:
        """Only the running expert is protected (``pin=running`` under ``execution=expert``)."""
        return self.execution == "expert" and self.pin == "running"

    @property
    def canonical(self) -> "Reading":
        """The reading with ``pin`` normalised where it changes nothing (``execution=visit``)."""
        return dataclasses.replace(self, pin="visit") if self.execution == "visit" else self

    def kwargs(self) -> dict:
        """``{"execution": ..., "prefetch_issue": ..., "pin": ...}`` for ``sweep_prefetch``."""
        return {"execution": self.execution, "prefetch_issue": self.prefetch_issue, "pin": self.pin}

    @property
    def slug(self) -> str:
        """A file-name form of :attr:`label`, e.g. ``expert-at_router-running``."""
        return self.label.replace("/", "-")

    @classmethod
    def parse(cls, label: str) -> "Reading":
        """``Reading.parse("expert/at_router/running")``."""
        parts = str(label).split("/")
        if len(parts) != 3:
            raise ValueError(f"a reading is 'execution/prefetch_issue/pin', got {label!r}")
        return cls(*parts)


DEFAULT_READING = Reading()
VISIT_READING = Reading("visit", "after_use", "visit")  # whole visits, plan after use: every release before 0.2
# the readings that differ (pin=running under execution=visit is the same replay as pin=visit)
READINGS = tuple(Reading(e, i, p) for e in EXECUTIONS for i in PREFETCH_ISSUES for p in PINS
                 if not (e == "visit" and p == "running"))   # VISIT_READING first, DEFAULT_READING last


def to_ticks(seconds: float) -> int:
    """Seconds to whole ticks (nearest); ``inf`` is refused."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"a time must be finite and >= 0, got {seconds!r} s")
    if seconds / TICK_S > 2 ** 62:   # sums of such ticks would overflow the timing model's int64
        raise ValueError(f"a time of {seconds!r} s is over 2**62 ticks of 100 ns (about 14,600 years)")
    return int(round(seconds / TICK_S))


@dataclasses.dataclass(frozen=True)
class Hardware:
    """One copy engine and per-layer compute times (all numbers; vmappable in the kernels).

    Attributes:
        bandwidth_gbps: host-to-device bandwidth in GB/s (1e9 bytes/s); ``inf`` = free copies.
        latency_us: fixed cost per copy in microseconds.
        decode_layer_us: compute time of one layer in a decode pass (one token).
        prefill_layer_us: fixed compute time of one layer in a prefill pass.
        prefill_token_us: additional prefill compute per prompt token per layer.
        name: label for tables.
        expert_us: if set, one expert's compute in microseconds: a layer computes
            ``n x expert_us`` for ``n`` demanded experts (both phases, every reading), replacing
            the three per-layer numbers; ``None`` (default): those numbers, split evenly over
            the layer's experts under ``execution=expert``.
    """

    bandwidth_gbps: float = 5.0
    latency_us: float = 10.0
    decode_layer_us: float = 150.0
    prefill_layer_us: float = 150.0
    prefill_token_us: float = 5.0
    name: str = "custom"
    expert_us: Optional[float] = None

    def __post_init__(self):
        for f in ("bandwidth_gbps", "latency_us", "decode_layer_us", "prefill_layer_us", "prefill_token_us",
                  "expert_us"):
            v = getattr(self, f)
            if not (v is None and f == "expert_us") and (isinstance(v, bool) or not isinstance(v, numbers.Real)):
                raise TypeError(f"Hardware {self.name!r}: {f} must be a number, got {v!r} ({type(v).__name__})")
        if not (self.bandwidth_gbps > 0):
            raise ValueError(f"bandwidth_gbps must be > 0 (inf allowed), got {self.bandwidth_gbps!r}")
        for f in ("latency_us", "decode_layer_us", "prefill_layer_us", "prefill_token_us"):
            v = getattr(self, f)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{f} must be finite and >= 0, got {v!r}")
        if self.expert_us is not None and not (math.isfinite(self.expert_us) and self.expert_us >= 0):
            raise ValueError(f"expert_us must be None or finite and >= 0, got {self.expert_us!r}")
        for f in ("latency_us", "decode_layer_us", "prefill_layer_us", "prefill_token_us", "expert_us"):
            v = getattr(self, f)
            if v is not None and v * 1e-6 / TICK_S > 2 ** 62:   # sums would overflow the int64 timing
                raise ValueError(f"{f}={v!r} is over 2**62 ticks of 100 ns (about 14,600 years)")

    def transfer_ticks(self, expert_bytes: int) -> int:
        """Ticks to copy one expert: latency + bytes / bandwidth (each rounded to ticks)."""
        try:
            copy = 0 if math.isinf(self.bandwidth_gbps) else to_ticks(expert_bytes / (self.bandwidth_gbps * 1e9))
            return to_ticks(self.latency_us * 1e-6) + copy
        except ValueError as e:
            raise ValueError(f"hardware {self.name!r} (bandwidth_gbps={self.bandwidth_gbps!r}, latency_us="
                             f"{self.latency_us!r}): copying {expert_bytes} bytes: {e}") from None

    def compute_ticks(self, prefill: bool, tokens: int) -> int:
        """Ticks one layer computes in a pass of ``tokens`` tokens."""
        if prefill:
            return to_ticks(self.prefill_layer_us * 1e-6) + int(tokens) * to_ticks(self.prefill_token_us * 1e-6)
        return to_ticks(self.decode_layer_us * 1e-6)

    def layer_ticks(self, prefill: bool, tokens: int, n: int) -> int:
        """Ticks one layer computes with ``n`` demanded experts (:meth:`compute_ticks`, or
        ``n x expert_us`` when that is set)."""
        if self.expert_us is not None:
            return int(n) * to_ticks(self.expert_us * 1e-6)
        return self.compute_ticks(prefill, tokens)


def turn_share(layer: int, n: int, i: int) -> int:
    """Ticks of turn ``i`` of ``n`` when a layer's ``layer`` ticks are split evenly over its
    turns (``execution=expert``): ``layer // n``, plus one for the first ``layer % n`` turns."""
    q, r = divmod(int(layer), max(int(n), 1))
    return q + (1 if i < r else 0)


INSTANT = Hardware(bandwidth_gbps=math.inf, latency_us=0.0, name="instant")

# Host-to-device link presets. Bandwidths are achievable pinned-memory copy rates, not the bus
# peak; compute times are one MoE layer's time (decode: one token; prefill: fixed + per token)
# for an OLMoE-class layer and are assumptions to override per model (Hardware(...) or
# dataclasses.replace). Sources:
#   a100-5gbps: SpecMD §5.1 / App. A.4 - the paper's A100 measured "on average 5 GB/s" native.
#   pcie4-x16: PCIe 4.0 x16 = 31.5 GB/s per direction (PCI-SIG); ~25 GB/s is the usual pinned
#              cudaMemcpy figure.
#   pcie5-x16: PCIe 5.0 x16 = 63 GB/s per direction (PCI-SIG); ~50 GB/s achievable.
#   consumer-gpu: a desktop card on PCIe 4.0 x8-x16 with pageable staging, ~12 GB/s; slower compute.
#   edge-unified: unified memory (e.g. Jetson Orin, 204.8 GB/s LPDDR5): "copies" are DRAM-to-DRAM
#                 re-layouts at a fraction of that; small latency; compute several times slower.
HARDWARE_PRESETS = {
    "a100-5gbps": Hardware(5.0, 10.0, 150.0, 150.0, 5.0, "a100-5gbps"),
    "pcie4-x16": Hardware(25.0, 10.0, 150.0, 150.0, 5.0, "pcie4-x16"),
    "pcie5-x16": Hardware(50.0, 8.0, 120.0, 120.0, 4.0, "pcie5-x16"),
    "consumer-gpu": Hardware(12.0, 15.0, 250.0, 250.0, 10.0, "consumer-gpu"),
    "edge-unified": Hardware(60.0, 2.0, 900.0, 900.0, 40.0, "edge-unified"),
}


def hardware_profiles(profiles) -> list:
    """The :data:`HARDWARE_PRESETS` named in ``profiles`` (a ``ValueError`` listing the valid names)."""
    if isinstance(profiles, str) or not profiles:
        raise ValueError("profiles must list preset names, e.g. [a100-5gbps]; valid names: " + ", ".join(HARDWARE_PRESETS))
    bad = [n for n in profiles if n not in HARDWARE_PRESETS]
    if bad:
        raise ValueError(f"unknown hardware profile {bad[0]!r}; valid: " + ", ".join(HARDWARE_PRESETS))
    return [HARDWARE_PRESETS[n] for n in profiles]
