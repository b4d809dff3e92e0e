"""The copy engine and arrival batches of the timed reference replay
(:class:`specmd_jax.reference.timed.Replay` mixes them in): one FIFO engine whose copies complete
in issue order, batches admitted with the turn's pinned set protected, proposals issued.

They read and update the replay's state (``resident``, ``pending``, ``occ``, ``seq``, the clock
and counters); the semantics are :mod:`specmd_jax.core.timing`'s.
"""

from __future__ import annotations

from specmd_jax.reference.demand import floyd_pick

# random-policy hash seed of the instant batch of a visit (its demand batch draws with the seed
# itself, so a replay without prefetch draws exactly what the demand-only reference draws)
SEED_INSTANT = 0xA5A5A5A5


class Arrivals:
    """Copy queue, arrival batches and prefetch issue of a timed replay."""

    def arrivals_until(self, limit):
        """Copies completed by ``limit`` (completion order = issue order: one FIFO engine; equal
        times only when copies are free), removed from the queue: ``[(id, level)]``."""
        due = sorted((d, k, g, lv) for g, (d, k, lv) in self.pending.items() if d <= limit)
        for _, _, g, _ in due:
            del self.pending[g]
        return [(g, lv) for _, _, g, lv in due]

    # ---------------------------------------------------------------- arrival batch
    def arrive(self, batch, P, own, l, rseed):
        """Admit one arrival batch (``[(id, level)]`` in completion order): the turn's ``own``
        demand copies first (ascending id), then the others in completion order, into free
        slots or by evicting the lowest-keyed residents outside the pinned set ``P`` and the
        batch. What does not fit is a bypass (own copy: used, not cached) or a dropped prefetch."""
        E, lv_units, resident = self.E, self.lv_units, self.resident
        level = dict(batch)
        batch = [g for g, _ in batch]
        inb = set(batch)
        dem = sorted(g for g in batch if g in own)
        order = dem + [g for g in batch if g not in own]
        vpool = self.pool_of(l * E)
        for q in sorted({self.pool_of(g) for g in order}):
            A = [g for g in order if self.pool_of(g) == q]
            free = max(self.cap_of(q) - self.occ[q], 0)
            evictable = [x for x in resident if self.pool_of(x) == q and x not in P and x not in inb]
            room = free + sum(lv_units[resident[x]["lvl"]] for x in evictable)
            n_adm, need = 0, 0
            for g in A:  # the longest prefix that fits (miss.py: byte-capacity eviction)
                if need + lv_units[level[g]] > room:
                    break
                need += lv_units[level[g]]
                n_adm += 1
            need = max(0, need - free)
            if need:
                evictable.sort(key=lambda x: self.key(x, l))
                if self.policy == "random":  # equal sizes (miss.check_levels): a known victim count
                    victims = floyd_pick(evictable, -(-need // lv_units[0]), rseed, self.s,
                                         0 if q == vpool else 4096 * (1 + q))
                else:
                    victims, freed = [], 0
                    for x in evictable:
                        if freed >= need:
                            break
                        victims.append(x)
                        freed += lv_units[resident[x]["lvl"]]
                for x in victims:
                    if resident[x]["pf"]:
                        self.add("pf_wasted", l)
                    self.occ[q] -= lv_units[resident[x]["lvl"]]
                    del resident[x]
                    self.evicted_in_pass.add(x)
                self.add("evictions", l, len(victims))
            for i, g in enumerate(A):
                demand = g in own
                if not demand:
                    self.add("pf_arrived", l)
                if i >= n_adm:
                    self.add("bypass" if demand else "pf_dropped", l)
                    continue
                self.seq += 1
                # a prefetch enters the current tier at arrival; a demanded copy is marked by its use
                resident[g] = {"ins": self.seq, "last": self.seq, "freq": 0, "mark": -1 if demand else self.p,
                               "entry": self.seq, "pf": not demand, "lvl": level[g], "hp": 0}
                if self.policy == "belady" and not demand:
                    self.nextuse[g] = self.s if g in self.todo else self.next_demand(g, self.s)
                self.occ[q] += lv_units[level[g]]
            self.max_occ = max(self.max_occ, self.occ[q])
            assert self.occ[q] <= max(self.cap_of(q), 0), "occupancy exceeded capacity"

    # ---------------------------------------------------------------- prefetch issue
    def issue(self, t_issue, P, l, rseed):
        """Issue the visit's proposals at ``t_issue`` (step 7 / ``prefetch_issue``)."""
        instant = []
        for g in (self.proposals[self.s] if self.proposals is not None else ()):
            if g in self.resident:
                self.add("pf_resident", l)
                r = self.resident[g]
                if self.policy == "ls" and r["mark"] != self.p:  # Least-Stale: a prefetch re-marks current
                    self.seq += 1
                    r["mark"], r["entry"] = self.p, self.seq
            elif g in self.pending or g in instant:
                self.add("pf_pending", l)
            else:
                self.add("pf_issued", l)
                self.add("units_moved", l, self.lv_units[0])
                if self.instant_prefetch:
                    instant.append(g)
                else:
                    self.engine_free = max(t_issue, self.engine_free) + self.xfer
                    self.issued += 1
                    self.pending[g] = (self.engine_free, self.issued, 0)
        if instant:
            self.arrive([(g, 0) for g in instant], P, set(), l, rseed ^ SEED_INSTANT)
