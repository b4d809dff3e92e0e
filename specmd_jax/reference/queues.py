"""Queue policies with ghost lists, pure Python: S3-FIFO and ARC as libCacheSim runs them.

Their order is not a key: an eviction moves entries between queues (S3-FIFO's small queue
promotes to main, main reinserts with a 2-bit counter; ARC adapts its target ``p`` on ghost hits
and demotes data to ghosts). Each pool (the global one, or one per layer) is a state machine with
three calls the demand replay (:func:`specmd_jax.reference.demand.simulate`) makes per step:
``hit(g)`` for each hit, then for each admitted miss ``admit(g, busy)``, which evicts one
resident not in ``busy`` when the pool is full and inserts ``g``. Hits come first, then misses,
each in ascending id order; in the sequential mode (one access per step) this is libCacheSim's
request-by-request order, and the tests check hit counts against libCacheSim's ``S3FIFO`` and
``ARC`` there. In the pinned mode the experts a visit demands are not evictable during it: every
walk below skips ``busy`` entries.

Queues are dicts ``id -> position`` (larger: nearer the head); the tail is the smallest position.
"""

from __future__ import annotations


S3FIFO_MIN_POOL = 20    # the smallest pool whose small queue (cap // 10) holds 2: smaller ones admit nothing


class _Queues:
    def __init__(self, cap: int):
        self.cap, self.clk = int(cap), 0
        self.q: dict[str, dict[int, int]] = {}

    def push(self, name: str, g: int) -> None:
        """Insert ``g`` at the head of queue ``name``."""
        self.clk += 1
        self.q[name][g] = self.clk

    def tail(self, name: str, busy=frozenset()):
        """The entry nearest the tail of ``name`` not in ``busy`` (None if none)."""
        c = [(pos, g) for g, pos in self.q[name].items() if g not in busy]
        return min(c)[1] if c else None

    def find(self, g: int):
        return next((n for n, d in self.q.items() if g in d), None)


class S3FIFO(_Queues):
    """libCacheSim's ``S3FIFO`` (small-size-ratio 0.10, ghost-size-ratio 0.90,
    move-to-main-threshold 2): a small FIFO of ``cap // 10`` slots, a main FIFO of the rest run as
    a 2-bit CLOCK, and a ghost FIFO of ``int(cap * 0.9)`` ids evicted from small. A miss enters
    small (or main when its id is in the ghost, or, before the first eviction, when small is full).
    Eviction takes from main when main is over its size (and holds an evictable entry) or small
    holds nothing evictable, else from small: the small tail moves to main when used twice or more since insertion, else is evicted
    (its id to the ghost); the main tail is reinserted with its count ``min(freq, 3) - 1`` when it
    was used since, else evicted. As in libCacheSim an item as large as the small queue is not
    admitted, so a pool under 20 slots (small < 2) admits nothing."""

    THRESHOLD = 2

    def __init__(self, cap: int):
        super().__init__(cap)
        self.small_cap = int(cap * 0.1)
        self.main_cap = self.cap - self.small_cap
        self.ghost_cap = int(cap * 0.9)
        self.q = {"small": {}, "main": {}, "ghost": {}}
        self.freq: dict[int, int] = {}
        self.has_evicted = False

    def admits(self) -> bool:
        return self.cap >= S3FIFO_MIN_POOL

    def hit(self, g: int) -> None:
        self.freq[g] += 1

    def admit(self, g: int, busy) -> int | None:
        """Insert ``g`` (evicting one resident not in ``busy`` first when full): the evicted id."""
        ghost = self.q["ghost"].pop(g, None) is not None
        out = self._evict(busy) if len(self.q["small"]) + len(self.q["main"]) >= self.cap else None
        if ghost or (not self.has_evicted and len(self.q["small"]) >= self.small_cap):
            self.push("main", g)
        else:
            self.push("small", g)
        self.freq[g] = 0
        return out

    def _evict(self, busy) -> int:
        self.has_evicted = True
        while True:
            small_none = self.tail("small", busy) is None
            main_some = self.tail("main", busy) is not None
            if (len(self.q["main"]) > self.main_cap and main_some) or small_none:
                return self._evict_main(busy)
            out = self._evict_small(busy)
            if out is not None:
                return out

    def _evict_small(self, busy):
        while (g := self.tail("small", busy)) is not None:
            del self.q["small"][g]
            if self.freq[g] >= self.THRESHOLD:
                self.push("main", g)
                self.freq[g] = 0
                continue
            if self.ghost_cap > 0:
                if len(self.q["ghost"]) >= self.ghost_cap:
                    del self.q["ghost"][self.tail("ghost")]
                self.push("ghost", g)
            del self.freq[g]
            return g
        return None

    def _evict_main(self, busy) -> int:
        while True:
            g = self.tail("main", busy)
            del self.q["main"][g]
            if self.freq[g] >= 1:
                self.push("main", g)
                self.freq[g] = min(self.freq[g], 3) - 1
                continue
            del self.freq[g]
            return g


class ARC(_Queues):
    """libCacheSim's ``ARC`` (Megiddo & Modha, FAST '03): data lists T1 (seen once) and T2 (seen
    twice or more), ghost lists B1 and B2, and the target size ``p`` of T1, a double as in
    libCacheSim. A hit moves the entry to the head of T2. A miss whose id is in a ghost list adapts
    ``p`` (B1: up by ``max(|B2| / |B1|, 1)``, at most ``cap``; B2: down by ``max(|B1| / |B2|, 1)``,
    at least 0), leaves the ghost, replaces one data entry when full and enters T2. Any other miss,
    when full, first trims a ghost list (when ``|T1| + |B1| >= cap``: B1's tail and replace, or,
    with B1 empty, T1's tail is evicted outright; else, when all four lists hold ``2 cap`` or more,
    B2's tail and replace) and enters T1. Replace demotes T1's tail to B1 when T1 is non-empty and
    ``|T1| > p`` (or ``= p`` on a B2 hit), or T2 is empty; else T2's tail to B2."""

    def __init__(self, cap: int):
        super().__init__(cap)
        self.q = {"t1": {}, "t2": {}, "b1": {}, "b2": {}}
        self.p = 0.0

    def admits(self) -> bool:
        return self.cap >= 1

    def hit(self, g: int) -> None:
        self.q[self.find(g)].pop(g)
        self.push("t2", g)

    def admit(self, g: int, busy) -> int | None:
        n = {k: len(v) for k, v in self.q.items()}
        full = n["t1"] + n["t2"] >= self.cap
        ghost = "b1" if g in self.q["b1"] else "b2" if g in self.q["b2"] else None
        if ghost == "b1":
            self.p = min(self.p + max(n["b2"] / n["b1"], 1.0), float(self.cap))
        elif ghost == "b2":
            self.p = max(self.p - max(n["b1"] / n["b2"], 1.0), 0.0)
        if ghost:
            del self.q[ghost][g]
            out = self._replace(busy, ghost == "b2") if full else None
            self.push("t2", g)
            return out
        out = self._evict(busy) if full else None
        self.push("t1", g)
        return out

    def _evict(self, busy) -> int:
        n = {k: len(v) for k, v in self.q.items()}
        if n["t1"] + n["b1"] + 1 > self.cap:
            if n["b1"] > 0:
                del self.q["b1"][self.tail("b1")]
                return self._replace(busy, False)
            g = self.tail("t1", busy)
            del self.q["t1"][g]
            return g
        if sum(n.values()) >= 2 * self.cap and n["b2"] > 0:
            del self.q["b2"][self.tail("b2")]
        return self._replace(busy, False)

    def _replace(self, busy, in_b2: bool) -> int:
        t1, t2 = len(self.q["t1"]), len(self.q["t2"])
        g1, g2 = self.tail("t1", busy), self.tail("t2", busy)
        take1 = (t1 > 0 and (t1 > self.p or (t1 == self.p and in_b2))) or t2 == 0
        if (take1 and g1 is not None) or g2 is None:   # pinned: a list whose entries are all demanded yields
            del self.q["t1"][g1]
            self.push("b1", g1)
            return g1
        del self.q["t2"][g2]
        self.push("b2", g2)
        return g2


QUEUE_POLICIES = {"s3fifo": S3FIFO, "arc": ARC}


def queue_step(qm, resident: dict, ids, miss, busy, free: int, nev: int, evicted_in_pass: set):
    """One step of a queue policy on pool machine ``qm``: the hits, then the admitted misses (the
    lowest ``free + nev`` ids), each evicting one resident not in ``busy`` when the pool is full.
    Evicted ids leave ``resident`` and join ``evicted_in_pass``. Returns ``(admitted, evicted)``."""
    if not qm.admits():
        return 0, 0
    na = min(len(miss), free + nev)
    for g in ids:
        if g in resident:
            qm.hit(g)
    out = [qm.admit(g, busy) for g in sorted(miss)[:na]]
    out = [g for g in out if g is not None]
    assert len(out) == nev, "a queue policy evicted other than one per admitted miss past the free slots"
    for g in out:
        del resident[g]
        evicted_in_pass.add(g)
    return na, nev
