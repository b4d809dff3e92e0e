"""The queue kernel: S3-FIFO and ARC (:mod:`specmd_jax.reference.queues`) over dense per-expert arrays.

Every expert has a queue id (0: none, 1: S3-FIFO's small / ARC's T1, 2: main / T2, 3: S3-FIFO's
ghost / ARC's B1, 4: ARC's B2) and a position (larger: nearer the head; every push takes the next
value of a per-configuration counter, so positions are unique and a queue's tail is the minimum
over its mask). A step applies the hits, then the admitted misses one by one in id order (a
``fori_loop`` over the visit's width), each evicting one resident outside the visit when the pool
is full: the reference's calls, as array updates. S3-FIFO's eviction walk is a ``while_loop`` of
single moves; ARC's is straight-line. ARC's target ``p`` is a double, as in libCacheSim: its runner
traces under ``jax.enable_x64`` so the adaptations round exactly as the reference's Python floats.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax.numpy as jnp
from jax import lax

from specmd_jax.core.counters import DEMAND_COUNTERS
from specmd_jax.kernels.batches import BIG
from specmd_jax.kernels.pytree import pytree_dataclass
from specmd_jax.kernels.records import RecordParams, RecordSpec

QUEUE_KERNEL_POLICIES = ("s3fifo", "arc")
NONE, Q1, Q2, G1, G2 = 0, 1, 2, 3, 4


@pytree_dataclass
class QueueState:
    q: Any           # int32[N] queue id
    pos: Any         # int32[N] position in its queue
    freq: Any        # int32[N] S3-FIFO's uses since insertion
    clk: Any         # int32[] last position given
    p: Any           # float64[P] ARC's target size of T1 per pool
    has_ev: Any      # bool[P] S3-FIFO: the pool has evicted before
    gone: Any        # bool[N] evicted earlier in the current pass
    occ: Any         # int32[P]
    per_layer: Any   # int32[6, L]
    max_occ: Any     # int32[]
    dec_hits: Any    # int32[] hits in decode passes

    @property
    def resident(self):
        return (self.q == Q1) | (self.q == Q2)

    def replace(self, **kw) -> "QueueState":
        return dataclasses.replace(self, **kw)


def s3fifo_sizes(cap):
    """libCacheSim's ``int(cap * 0.1)`` small and ``int(cap * 0.9)`` ghost sizes, in integers: the
    doubles 0.1 and 0.9 lie just above a tenth and nine tenths, so the truncations equal
    ``cap // 10`` and ``9 * cap // 10`` (the tests compare with the reference's float form)."""
    return cap // 10, 9 * cap // 10


def _tail(mask, pos):
    """(index, exists) of the entry nearest the tail among ``mask``."""
    return jnp.argmin(jnp.where(mask, pos, BIG)).astype(jnp.int32), jnp.any(mask)


def _push(s: QueueState, g, queue) -> QueueState:
    return s.replace(q=s.q.at[g].set(queue), pos=s.pos.at[g].set(s.clk + 1), clk=s.clk + 1)


def _s3fifo_evict(s: QueueState, pool, inpool, busy, cap):
    """One eviction (the reference's ``S3FIFO._evict``): returns (state, evicted id). A ``while_loop``
    of single moves, each a few scatters: mode 0 chooses the queue, 1 walks small (an entry used
    twice or more moves to main, else goes to the ghost and ends the walk; an exhausted small
    chooses again), 2 walks main (an entry used since returns to the head with ``min(f, 3) - 1``,
    else is evicted)."""
    small_cap, ghost_cap = s3fifo_sizes(cap)
    main_cap = cap - small_cap
    s = s.replace(has_ev=s.has_ev.at[pool].set(True))

    def body(c):
        q, pos, freq, clk, mode, out = c
        small, main = (q == Q1) & inpool & ~busy, (q == Q2) & inpool & ~busy
        ts, has_s = _tail(small, pos)
        tm, has_m = _tail(main, pos)
        n_main = jnp.sum((q == Q2) & inpool, dtype=jnp.int32)
        choose = jnp.where(((n_main > main_cap) & has_m) | ~has_s, 2, 1)
        mode = jnp.where(mode == 0, choose, jnp.where((mode == 1) & ~has_s, 0, mode))
        t = jnp.where(mode == 2, tm, ts)
        f = freq[t]
        stays = jnp.where(mode == 2, f >= 1, f >= 2)           # moves to (or back to) main's head
        act = mode > 0
        leave = act & ~stays
        ghosts = (q == G1) & inpool
        tg, _ = _tail(ghosts, pos)
        to_ghost = leave & (mode == 1) & (ghost_cap > 0)
        trim = to_ghost & (jnp.sum(ghosts, dtype=jnp.int32) >= ghost_cap)
        q = jnp.where(trim, q.at[tg].set(NONE), q)
        new_q = jnp.where(stays, Q2, jnp.where(to_ghost, G1, NONE))
        moves = act & (stays | to_ghost)
        q = jnp.where(act, q.at[t].set(new_q), q)
        pos = jnp.where(moves, pos.at[t].set(clk + 1), pos)
        new_f = jnp.where(mode == 2, jnp.minimum(f, 3) - 1, 0)
        freq = jnp.where(act & stays, freq.at[t].set(new_f), freq)
        clk = clk + moves.astype(jnp.int32)
        out = jnp.where(leave, t, out)
        mode = jnp.where(leave, 3, mode)
        return q, pos, freq, clk, mode.astype(jnp.int32), out.astype(jnp.int32)

    q, pos, freq, clk, _, out = lax.while_loop(lambda c: c[4] != 3, body,
                                               (s.q, s.pos, s.freq, s.clk, jnp.int32(0), jnp.int32(-1)))
    return s.replace(q=q, pos=pos, freq=freq, clk=clk), out


def _s3fifo_admit(s: QueueState, g, pool, inpool, busy, cap):
    ghost = s.q[g] == G1
    s = s.replace(q=jnp.where(ghost, s.q.at[g].set(NONE), s.q))
    full = jnp.sum(s.resident & inpool, dtype=jnp.int32) >= cap
    s, out = lax.cond(full, lambda z: _s3fifo_evict(z, pool, inpool, busy, cap), lambda z: (z, jnp.int32(-1)), s)
    small_cap, _ = s3fifo_sizes(cap)
    to_main = ghost | (~s.has_ev[pool] & (jnp.sum((s.q == Q1) & inpool, dtype=jnp.int32) >= small_cap))
    s = _push(s, g, jnp.where(to_main, Q2, Q1))
    return s.replace(freq=s.freq.at[g].set(0)), out


def _arc_admit(s: QueueState, g, pool, inpool, busy, cap):
    n = [jnp.sum((s.q == k) & inpool, dtype=jnp.int32) for k in (Q1, Q2, G1, G2)]
    full = n[0] + n[1] >= cap
    in1, in2 = s.q[g] == G1, s.q[g] == G2
    f = lambda a: a.astype(jnp.float64)  # noqa: E731
    p = s.p[pool]
    p = jnp.where(in1, jnp.minimum(p + jnp.maximum(f(n[3]) / f(jnp.maximum(n[2], 1)), 1.0), f(cap)), p)
    p = jnp.where(in2, jnp.maximum(p - jnp.maximum(f(n[2]) / f(jnp.maximum(n[3], 1)), 1.0), 0.0), p)
    ghost = in1 | in2
    s = s.replace(p=s.p.at[pool].set(p), q=jnp.where(ghost, s.q.at[g].set(NONE), s.q))
    # a plain miss into a full pool first trims a ghost list (or evicts T1's tail outright)
    case_a = n[0] + n[2] + 1 > cap
    tb1, _ = _tail((s.q == G1) & inpool, s.pos)
    tb2, _ = _tail((s.q == G2) & inpool, s.pos)
    t1_out, _ = _tail((s.q == Q1) & inpool & ~busy, s.pos)
    plain = full & ~ghost
    drop_b1 = plain & case_a & (n[2] > 0)
    drop_t1 = plain & case_a & (n[2] == 0)
    drop_b2 = plain & ~case_a & (n[0] + n[1] + n[2] + n[3] >= 2 * cap) & (n[3] > 0)
    qq = jnp.where(drop_b1, s.q.at[tb1].set(NONE), s.q)
    qq = jnp.where(drop_b2, qq.at[tb2].set(NONE), qq)
    qq = jnp.where(drop_t1, qq.at[t1_out].set(NONE), qq)
    s = s.replace(q=qq)
    # replace: demote T1's or T2's tail to its ghost list
    t1, t2 = jnp.sum((s.q == Q1) & inpool, dtype=jnp.int32), jnp.sum((s.q == Q2) & inpool, dtype=jnp.int32)
    g1, has1 = _tail((s.q == Q1) & inpool & ~busy, s.pos)
    g2, has2 = _tail((s.q == Q2) & inpool & ~busy, s.pos)
    take1 = ((t1 > 0) & ((f(t1) > p) | ((f(t1) == p) & in2))) | (t2 == 0)
    use1 = (take1 & has1) | ~has2
    victim = jnp.where(use1, g1, g2)
    do_rep = full & ~drop_t1
    s = lax.cond(do_rep, lambda z: _push(z, victim, jnp.where(use1, G1, G2)), lambda z: z, s)
    out = jnp.where(do_rep, victim, jnp.where(drop_t1, t1_out, -1))
    return _push(s, g, jnp.where(ghost, Q2, Q1)), out


class QueuePolicy(NamedTuple):
    init: Any
    step: Any


def make_queue_policy(spec: RecordSpec) -> QueuePolicy:
    """Pure ``init``/``step`` of ``spec.policy`` (``s3fifo`` or ``arc``), the pinned convention."""
    if spec.policy not in QUEUE_KERNEL_POLICIES:
        raise ValueError(f"the queue kernel serves {QUEUE_KERNEL_POLICIES}; {spec.policy!r} is not one")
    L, E = spec.num_layers, spec.num_experts
    N, part = L * E, spec.partitioned
    P = L if part else 1
    admit_one = _s3fifo_admit if spec.policy == "s3fifo" else _arc_admit

    def init(params: RecordParams) -> QueueState:
        del params
        z = jnp.zeros((N,), jnp.int32)
        return QueueState(q=z, pos=z, freq=z, clk=jnp.zeros((), jnp.int32), p=jnp.zeros((P,), jnp.float64),
                          has_ev=jnp.zeros((P,), bool), gone=jnp.zeros((N,), bool), occ=jnp.zeros((P,), jnp.int32),
                          per_layer=jnp.zeros((len(DEMAND_COUNTERS), L), jnp.int32), max_occ=jnp.zeros((), jnp.int32),
                          dec_hits=jnp.zeros((), jnp.int32))

    def step(s: QueueState, x, params: RecordParams):
        l, valid = x.layer, x.ids >= 0
        idx, gi = jnp.where(valid, x.ids, N), jnp.where(valid, x.ids, 0)
        gone = jnp.where(x.new_pass, False, s.gone)
        res = s.resident
        miss = valid & ~res[gi]
        hit = valid & ~miss
        m, nh = jnp.sum(miss, dtype=jnp.int32), jnp.sum(hit, dtype=jnp.int32)
        pool = l if part else 0
        cap = (params.capacity // L + (l < params.capacity % L).astype(jnp.int32)) if part else params.capacity
        inpool = (jnp.arange(N) // E == l) if part else jnp.ones((N,), bool)
        busy = jnp.zeros((N,), bool).at[idx].set(True, mode="drop")
        free = cap - s.occ[pool]
        evictable = jnp.sum(res & inpool & ~busy, dtype=jnp.int32)
        nev = jnp.clip(jnp.minimum(m - free, evictable), 0)
        if spec.policy == "s3fifo":             # a pool whose small queue holds under 2 admits nothing
            ok = s3fifo_sizes(cap)[0] >= 2
            nev = jnp.where(ok, nev, 0)
        na = jnp.minimum(m, free + nev)
        if spec.policy == "s3fifo":
            na = jnp.where(ok, na, 0)
        # hits, in id order
        if spec.policy == "arc":
            rk = (jnp.cumsum(hit) - hit).astype(jnp.int32)
            hidx = jnp.where(hit, x.ids, N)
            s = s.replace(q=s.q.at[hidx].set(Q2, mode="drop"),
                          pos=s.pos.at[hidx].set(s.clk + 1 + rk, mode="drop"), clk=s.clk + nh)
        else:
            s = s.replace(freq=s.freq.at[jnp.where(hit, x.ids, N)].add(1, mode="drop"))
        rank = jnp.cumsum(miss) - miss
        admit = miss & (rank < na)

        def one(k, c):
            s, ev = c
            s2, out = admit_one(s, gi[k], pool, inpool, busy, cap)
            s = lax.cond(admit[k], lambda: s2, lambda: s)
            ev = jnp.where(admit[k] & (out >= 0), ev.at[jnp.maximum(out, 0)].set(True), ev)
            return s, ev

        s, ev = lax.fori_loop(0, x.ids.shape[0], one, (s, jnp.zeros((N,), bool)))
        occ_new = s.occ[pool] - nev + na
        info = jnp.stack([nh + m, nh, m, jnp.sum(miss & gone[gi], dtype=jnp.int32), nev, m - na])
        s = s.replace(gone=gone | ev, occ=s.occ.at[pool].set(occ_new),
                      per_layer=s.per_layer.at[:, l].add(info.astype(jnp.int32)),
                      max_occ=jnp.maximum(s.max_occ, occ_new),
                      dec_hits=s.dec_hits + jnp.where(x.decode, nh, 0).astype(jnp.int32))
        return s, occ_new

    return QueuePolicy(init, step)
