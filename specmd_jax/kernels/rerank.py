"""The use of a step's executed experts in the asynchronous kernel: each policy's re-rank of the
residents it used (LRU: to the top; Least-Stale: into the current tier at the top of the visit
layer's block; LHU: re-filed by its use count; FIFO: no change), on slot or weighted ranks."""

from __future__ import annotations

import jax.numpy as jnp

from specmd_jax.kernels.async_state import Layout
from specmd_jax.kernels.ranks import above, count_lt


def use(k: Layout, st, pids, pvalid, l):
    """Re-rank the used residents among ``pids`` (``pvalid``: executed) of layer ``l``."""
    ploc = jnp.where(pvalid, pids, 0)
    if k.lhu:
        return _use_lhu(k, st, pids, pvalid, ploc)
    if k.lru:
        return _use_lru(k, st, pids, pvalid, ploc)
    if k.ls:
        return _use_ls(k, st, pids, pvalid, ploc, l)
    return st


def _use_lhu(k, st, pids, pvalid, ploc):
    """The executed residents take key (uses + held at the top level, now, id): above every other
    resident with at most as many uses, under those with more."""
    N, A_, G_, rdt = k.N, k.A_, k.G_, k.rdt
    r, hp, ul = st["rank"], st["hp"], st["ul"]
    rU = jnp.where(pvalid, r[ploc], A_)
    used = rU < G_
    uu = jnp.where(used, ul[ploc], 0)
    hpn = jnp.where(used, hp[ploc] + (k.level_of(ul[ploc]) == 0), -1)
    res = r < G_
    usedN = jnp.zeros((N,), bool).at[jnp.where(used, pids, N)].set(True, mode="drop")
    up = jnp.sum(jnp.where(used[:, None] & (hpn[:, None] >= hp[None, :]), uu[:, None], 0), axis=0)
    rc = jnp.where(res, r - k.wsum(rU, uu, r, False) + up, r)
    others = jnp.where(res & ~usedN, ul, 0)
    gt_other = jnp.sum(jnp.where(hp[None, :] > hpn[:, None], others[None, :], 0), axis=1)
    gt_used = jnp.sum(jnp.where(used[None, :] & ((hpn[None, :] > hpn[:, None]) | (
        (hpn[None, :] == hpn[:, None]) & (pids[None, :] > pids[:, None]))), uu[None, :], 0), axis=1)
    st["rank"] = rc.at[jnp.where(used, pids, N)].set(gt_other + gt_used, mode="drop").astype(rdt)
    st["hp"] = hp.at[jnp.where(used, pids, N)].set(hpn, mode="drop")
    return st


def _use_lru(k, st, pids, pvalid, ploc):
    """The used residents move to the top (ids ascending, lowest id lowest)."""
    N, A_, G_, rdt = k.N, k.A_, k.G_, k.rdt
    r = st["rank"]
    if k.mixed:
        rU = jnp.where(pvalid, r[ploc], A_)
        used = rU < G_
        uu = jnp.where(used, st["ul"][ploc], 0)
        rc = jnp.where(r < G_, r - k.wsum(rU, uu, r, False) + jnp.sum(uu), r)
        top = jnp.sum(jnp.where(used[None, :] & (pids[None, :] > pids[:, None]), uu[None, :], 0), axis=1)
        st["rank"] = rc.at[jnp.where(used, pids, N)].set(top, mode="drop").astype(rdt)
        return st
    rU = jnp.where(pvalid, r[ploc], A_).astype(rdt)
    used = rU < G_
    nU = jnp.sum(used, dtype=jnp.int32)
    below = count_lt(jnp.where(used, rU, A_).astype(rdt), r)   # used ones above x
    rc = jnp.where(r < G_, r - below + nU.astype(rdt), r).astype(rdt)
    top = jnp.sum(used[None, :] & (pids[None, :] > pids[:, None]), axis=1, dtype=jnp.int32)
    st["rank"] = rc.at[jnp.where(used, pids, N)].set(top.astype(rdt), mode="drop")
    return st


def _use_ls(k, st, pids, pvalid, ploc, l):
    """The used residents not yet current enter the tier at the top of layer ``l``'s block (one
    entry number: ascending id, lowest id lowest); current ones keep their place."""
    N, A_, G_, rdt = k.N, k.A_, k.G_, k.rdt
    r, cur = st["rank"], st["cur"]
    ncur = jnp.sum(cur)
    top = above(cur, l)
    if k.mixed:  # in units
        rU = jnp.where(pvalid, r[ploc], A_)
        moved = (rU < G_) & (rU >= ncur)
        mu = jnp.where(moved, st["ul"][ploc], 0)
        rr = r - k.wsum(jnp.where(moved, rU, A_), mu, r, False)
        rc = jnp.where(r < G_, rr + jnp.where(rr >= top, jnp.sum(mu), 0), r)
        rD_moved = top + jnp.sum(jnp.where(moved[None, :] & (pids[None, :] > pids[:, None]), mu[None, :], 0), axis=1)
        st["rank"] = rc.at[jnp.where(moved, pids, N)].set(rD_moved, mode="drop").astype(rdt)
        st["cur"] = cur.at[l].add(jnp.sum(mu))
        return st
    rU = jnp.where(pvalid, r[ploc], A_).astype(rdt)
    moved = (rU < G_) & (rU.astype(jnp.int32) >= ncur)
    nM = jnp.sum(moved, dtype=jnp.int32)
    rr = r - count_lt(jnp.where(moved, rU, A_).astype(rdt), r)
    rc = jnp.where(r < G_, rr + jnp.where(rr >= top, nM, 0).astype(rdt), r).astype(rdt)
    rD_moved = top + jnp.sum(moved[None, :] & (pids[None, :] > pids[:, None]), axis=1, dtype=jnp.int32)
    st["rank"] = rc.at[jnp.where(moved, pids, N)].set(rD_moved.astype(rdt), mode="drop")
    st["cur"] = cur.at[l].add(nM)
    return st
