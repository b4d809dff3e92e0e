"""The batch convention (``convention="bigmoeonedge"``): a byte-budgeted replay of load batches, pure Python.

This is the convention of BigMoeOnEdge's offline replayer (its ``route-replay.py``, which that
project validated against the on-device LRU hit rate), written here from its documented rules
(``docs/semantics.md``, "Replay conventions"):

* the unit is a *batch*, one non-empty ``(pass, layer)`` cell; a prefill pass's batch holds all its
  tokens' ids token-major (row order, then router rank), a decode batch one token's;
* each distinct expert of a batch is looked up once (a hit if resident); every routed entry, repeats
  too, takes the next *stamp* of a global clock, so the batch's last-touched expert is the most
  recent; an expert's ``ins`` is the stamp it was inserted at;
* a miss is resident at once, at its layer's expert bytes (:attr:`ModelShape.bytes_per_layer`), and
  those bytes count as read; nothing is bypassed;
* after the batch, residents the batch did not touch are evicted, smallest key first, until the pool
  is within its byte budget (it may overshoot while nothing is evictable);
* ``partitioned=True`` gives each layer ``budget // L`` bytes and evicts only the batch's own layer.

Keys are the registry's (:mod:`specmd_jax.policies`) over this convention's record (``last``: last
stamp; ``ins``; ``freq``: lookups since insertion; ``hist``: lookups since the start of the trace;
``mark``/``entry``: pass and stamp it entered the current tier; ``nextuse``: the next batch that
looks it up). The registry's last tie-break (lowest id) is replaced by the convention's: the
earliest-inserted resident (BigMoeOnEdge's dict order; it decides Belady's "never again" ties).
"""

from __future__ import annotations

import dataclasses
import heapq

from specmd_jax.core import checks
from specmd_jax.core.checks import MAX_BUDGET_BYTES
from specmd_jax.core.conventions import BATCH_COUNTERS, BATCH_UNSUPPORTED, CONVENTIONS  # noqa: F401
from specmd_jax.core.semantics import INF_STEP, SB_SCALE
from specmd_jax.core.trace_fields import DECODE
from specmd_jax.policies import REGISTRY

UNSUPPORTED = BATCH_UNSUPPORTED


@dataclasses.dataclass
class BatchResult:
    """Counts of one batch-convention replay.

    Attributes:
        totals: :data:`BATCH_COUNTERS` summed over the trace.
        per_layer: the same counters by the layer of the batch.
        resident: sorted global ids resident at the end.
        max_bytes: the largest pool size in bytes after any batch's admissions (before its
            eviction): how far the budget is overshot while a batch runs.
    """

    totals: dict
    per_layer: dict
    resident: list
    max_bytes: int


@dataclasses.dataclass(frozen=True)
class Batch:
    """One batch: ``(pass, layer)``, whether it is decode, its routed ids in row order (global
    ids ``layer * E + expert``) and each distinct id's summed weight units (0 without weights)."""

    pass_: int
    layer: int
    decode: bool
    new_pass: bool
    entries: tuple
    units: dict


def batches_of(trace) -> list:
    """The trace's batches in replay order (pass-major, layers ascending; empty cells skipped)."""
    L, E = trace.shape.num_layers, trace.shape.num_experts
    experts = trace.experts.tolist()
    weights = trace.weights.tolist() if trace.weights is not None else None
    off = trace.cell_offsets.tolist()
    out = []
    for p in range(trace.num_passes):
        first = True
        for l in range(L):
            c = p * L + l
            entries, units = [], {}
            for r in range(off[c], off[c + 1]):
                for k, e in enumerate(experts[r]):
                    g = l * E + e
                    entries.append(g)
                    units[g] = units.get(g, 0) + (round(weights[r][k] * SB_SCALE) if weights is not None else 0)
            if entries:
                out.append(Batch(p, l, bool(trace.pass_phase[p] == DECODE), first, tuple(entries), units))
                first = False
    return out


def next_uses(batches: list) -> list:
    """Per batch: id -> index of the next batch that looks it up (``INF_STEP`` if none)."""
    nxt, later = [None] * len(batches), {}
    for b in range(len(batches) - 1, -1, -1):
        ids = set(batches[b].entries)
        nxt[b] = {g: later.get(g, INF_STEP) for g in ids}
        for g in ids:
            later[g] = b
    return nxt


def check_policy(policy: str, trace) -> None:
    """Refuse a policy the batch convention cannot replay, naming why."""
    if policy in UNSUPPORTED:
        raise ValueError(f"policy {policy!r} under convention 'bigmoeonedge': {UNSUPPORTED[policy]}")
    if policy not in REGISTRY or "demand" not in REGISTRY[policy].modes:
        known = tuple(n for n, p in REGISTRY.items() if "demand" in p.modes and n not in UNSUPPORTED)
        raise ValueError(f"unknown policy {policy!r} under convention 'bigmoeonedge'; known: {known}")
    if policy == "sb" and trace.weights is None:
        raise ValueError(f"policy 'sb' needs router weights; trace {trace.source} has none")


def simulate_batches(trace, policy: str, budget_bytes: int, *, partitioned: bool = False) -> BatchResult:
    """Replay ``trace`` under the batch convention through one cache of ``budget_bytes`` bytes
    (``partitioned``: ``budget_bytes // L`` per layer)."""
    check_policy(policy, trace)
    budget = int(checks.capacities(budget_bytes, name="budget_bytes", limit=MAX_BUDGET_BYTES)[0])
    L, E = trace.shape.num_layers, trace.shape.num_experts
    size = trace.shape.bytes_per_layer
    cap = budget // L if partitioned else budget
    batches = batches_of(trace)
    nxt = next_uses(batches) if policy == "belady" else None
    tot = dict.fromkeys(BATCH_COUNTERS, 0)
    per = {k: [0] * L for k in BATCH_COUNTERS}
    resident, hist, score, nextuse = {}, {}, {}, {}
    used = [0] * (L if partitioned else 1)
    evicted_in_pass, clock, max_bytes = set(), 0, 0
    key_fn = REGISTRY[policy].key

    def key(g, l):
        r = resident[g]
        return key_fn(r, g, l, E, score, nextuse)[:-1] + (r["ins"], g)

    for b, bt in enumerate(batches):
        l, pool = bt.layer, (bt.layer if partitioned else 0)
        if bt.new_pass:
            evicted_in_pass.clear()
        c = dict.fromkeys(BATCH_COUNTERS, 0)
        seen = set()
        for g in bt.entries:
            clock += 1
            if g not in seen:
                seen.add(g)
                c["lookups"] += 1
                c["lookups_decode"] += bt.decode
                hist[g] = hist.get(g, 0) + 1
                score[g] = score.get(g, 0) + bt.units[g]
                if nxt is not None:
                    nextuse[g] = nxt[b][g]
                if g in resident:
                    c["hits"] += 1
                    c["hits_decode"] += bt.decode
                    resident[g]["freq"] += 1
                else:
                    c["misses"] += 1
                    c["collisions"] += g in evicted_in_pass
                    c["read_bytes"] += size[l]
                    used[pool] += size[l]
                    resident[g] = {"ins": clock, "freq": 1, "mark": -1, "entry": clock}
            r = resident[g]
            r["last"], r["hist"] = clock, hist[g]
            if r["mark"] != bt.pass_:
                r["mark"], r["entry"] = bt.pass_, clock
        max_bytes = max(max_bytes, used[pool])
        over = used[pool] - cap
        if over > 0:
            heap = [(key(g, l), g) for g in resident if g not in seen and (not partitioned or g // E == l)]
            heapq.heapify(heap)
            while over > 0 and heap:
                g = heapq.heappop(heap)[1]
                del resident[g]
                evicted_in_pass.add(g)
                gl = g // E
                used[pool] -= size[gl]
                over -= size[gl]
                c["evictions"] += 1
                c["evicted_bytes"] += size[gl]
        for k, v in c.items():
            tot[k] += v
            per[k][l] += v
    return BatchResult(totals=tot, per_layer=per, resident=sorted(resident), max_bytes=max_bytes)
