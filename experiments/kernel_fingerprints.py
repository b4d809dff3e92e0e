"""Fingerprints of the compiled kernel steps, to show that a refactor left the programs alone.

    python experiments/kernel_fingerprints.py --out outputs/bench/kernel_fingerprints.csv

For a set of small specs of every kernel (demand policies x pools, instant and asynchronous
prefetch under several readings, precision levels, miss policies), one line each: the multiset of
(result type, opcode) of the optimised XLA:CPU program, hashed, and its instruction count.
Instruction names and source locations are ignored, so moving code between functions or modules
keeps the fingerprint while any change in the work done changes it. Run it on two checkouts
(``PYTHONPATH=<checkout>``) and ``diff`` the outputs.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import re
from pathlib import Path

import jax
import jax.numpy as jnp

from specmd_jax.kernels import asynchronous as asy
from specmd_jax.kernels import demand, instant

LINES = []


def norm(t):
    out = []
    for ln in t.splitlines():
        if re.match(r'^\s*(ROOT\s+)?%?[\w.\-]+\s*=\s', ln) or ln.strip().startswith(('ENTRY', '%', '}')):
            out.append(re.sub(r',\s*metadata=\{[^}]*\}', '', ln))
    return '\n'.join(out)


def h(f, *args):
    comp = norm(jax.jit(f).lower(*args).compile().as_text())
    ops = collections.Counter()
    for ln in comp.splitlines():
        m = re.match(r'^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(\S+)\s+([a-z\-]+)\(', ln)
        if m:
            ops[(m.group(1), m.group(2))] += 1
    return hashlib.sha1(repr(sorted(ops.items())).encode()).hexdigest()[:12] + " n=%d" % sum(ops.values())


def emit(*a):
    LINES.append(" ".join(str(x) for x in a))


def fingerprints():
    L, E, W, Q = 4, 8, 6, 4
    i32 = lambda v=0: jnp.asarray(v, jnp.int32)
    for pol in ("lru", "ls", "fifo", "random", "lfu", "belady", "sb", "fld"):
        for part in (False, True):
            p = demand.make_policy(demand.Spec(pol, L, E, W, part))
            params = demand.Params(capacity=i32(5), seed=jnp.asarray(1, jnp.uint32))
            st = p.init(params)
            vis = demand.Visit(step=i32(0), pass_=i32(0), layer=i32(1), new_pass=jnp.asarray(True), ids=jnp.arange(W, dtype=jnp.int32) + E,
                               units=jnp.ones(W, jnp.int32), next_use=jnp.ones(W, jnp.int32))
            sh = p.shared_init()
            emit("demand", pol, part, h(lambda s, v, shh, pp: p.step(s, v, shh, pp), st, vis, sh, params))
    for pol in ("lru", "ls", "fifo"):
        for kw in ({}, {"issue": "at_router"}, {"execution": "expert", "pin_width": 3}, {"depth": 2}):
            spec = instant.PfSpec(pol, L, E, 1 if kw.get("execution") else W, Q, **kw)
            init, step = instant.make_pf_policy(spec)
            params = instant.PfParams(capacity=i32(5), drop_rank=i32(99))
            st = init(params)
            w = spec.width
            vis = instant.PfVisit(layer=i32(1), new_pass=jnp.asarray(True), ids=jnp.arange(w, dtype=jnp.int32) + E,
                                  pf_ids=jnp.arange(Q, dtype=jnp.int32) + 2 * E, rank=jnp.zeros(w, jnp.int32),
                                  pairs=jnp.ones(w, jnp.int32), units=jnp.ones(w, jnp.int32),
                                  pin=(jnp.arange(3, dtype=jnp.int32) + E) if kw.get("pin_width") else None,
                                  issue=jnp.asarray(True) if kw.get("execution") else None)
            emit("instant", pol, kw, h(step, st, vis, params))
    for pol in ("lru", "ls", "fifo", "lhu"):
        for kw in ({}, {"issue": "at_router"}, {"units": (4, 2, 1), "bits": (16, 8, 4), "miss_kind": "fetch_priority"}, {"substitute": True, "full_demand": False}, {"pin_width": 3}):
            if pol == "lhu" and "units" not in kw:
                kw = dict(kw, units=(4, 2, 1), bits=(16, 8, 4))
            spec = asy.AsyncSpec(pol, L, E, W, Q, **kw)
            init, step = asy.make_async_policy(spec)
            nl = len(spec.units)
            params = asy.AsyncParams(capacity=i32(9), xfer=i32(10), c_dec=i32(5), c_pre0=i32(5), c_pre1=i32(1), drop_rank=i32(99),
                                     xfer_lv=jnp.arange(nl, dtype=jnp.int32) + 3, pct_milli=i32(50000), degrade=i32(1),
                                     cas_th=jnp.zeros(0, jnp.int32))
            st = init(params)
            vis = asy.AsyncVisit(live=jnp.asarray(True), layer=i32(1), new_pass=jnp.asarray(True), prefill=jnp.asarray(False), tokens=i32(1),
                                 ids=jnp.arange(W, dtype=jnp.int32) + E, pf_ids=jnp.arange(Q, dtype=jnp.int32) + 2 * E,
                                 rank=jnp.zeros(W, jnp.int32), pairs=jnp.ones(W, jnp.int32), units=jnp.ones(W, jnp.int32),
                                 lscore=jnp.arange(E, dtype=jnp.int32) if kw.get("substitute") else jnp.zeros(1, jnp.int32),
                                 score=jnp.ones(W, jnp.int32), spos=jnp.arange(W, dtype=jnp.int32),
                                 pins=(jnp.arange(3, dtype=jnp.int32) + E) if kw.get("pin_width") else None)
            emit("async", pol, kw, h(step, st, vis, params))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    fingerprints()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(LINES) + "\n")
    print(f"{len(LINES)} kernel specs -> {args.out}")


if __name__ == "__main__":
    main()
