"""Throughput benchmark: python reference vs libCacheSim vs specmd_jax (vmapped) vs the LRU MRC pass.

Workload: ``synthetic.decode_stream(model, tokens, seed=0)`` (default OLMoE-1B-7B: 16 layers x 64
experts, top-8, one token per pass, so N = 1024 global ids and 128 accesses per token).

One row per measurement:

* ``python-reference``: ``reference.simulate`` for every policy, one config at capacity N/4, on the
  first ``--ref-tokens`` passes, pinned mode.
* ``libcachesim``: LRU / FIFO / LFU / Belady / Clock / S3FIFO / ARC, one config each at capacity N/4, on the sequential
  access stream of the whole trace written as an oracleGeneral binary file,
  ``hashpower=12``, best of 3 ``process_trace`` calls.
* ``specmd_jax``: ``sweep.run_configs`` (``specmd_jax-records``: ``run_records`` for the policies only the
  record runner serves, ``lfu_decay`` at decay period 0, ``clock``, ``s3fifo`` and ``arc``) for every policy and every width B in ``--widths``,
  capacities ``linspace(16, N, B)`` (B = 1: N/4), pinned mode, batched; best ``run_s`` of
  ``--repeats`` calls (``compile_s`` of the first call).
* ``specmd_jax-stack``: ``stack.run_stack`` for ``lru``, ``ls`` and ``belady`` at the same capacities
  (what ``sweep(engine="auto")`` runs for them): one unbatched stack scan, then host histograms
  for every capacity; ``run_s`` includes the host part. ``check``: all counters equal the scan's.
* ``libcachesim-sweep``: libCacheSim LRU once per capacity of the widest sweep, summed: the serial
  C cost of the same work (its per-call speed depends on the miss ratio).
* ``specmd_jax-mrc``: ``mrc.lru_mrc`` (all N+1 LRU capacities in one pass); ``run_s`` is the best
  of ``--repeats`` calls after the first, ``compile_s`` = first call minus ``run_s``.

``acc_per_s`` is aggregate (configs x accesses / run_s). ``ratio_vs_libcachesim_lru`` divides by
the libCacheSim LRU single-config figure measured in the same process, ``ratio_vs_libcachesim_same``
by libCacheSim's single-config figure for the same policy (where it has one); ``ratio_vs_reference``
by the python reference figure of the same policy.

Cross-check: at capacity N/4, specmd_jax in ``mode="sequential"`` (one access per step, W = 1)
must reproduce libCacheSim's hit counts for LRU and FIFO (also LFU and Belady, whose semantics
were written to match). Printed as OK / MISMATCH; the run never fails on it.

Writes ``<out>/throughput_<backend>.csv`` and ``.md`` (default ``outputs/bench``).

Example (small)::

    .venv/bin/python experiments/bench_throughput.py --tokens 128 --widths 1,64 \
        --policies lru,ls,belady --ref-tokens 16 --repeats 1 --out /tmp/benchcheck
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import shlex
import sys
import time
from typing import Optional, Sequence

import jax
import numpy as np
import pandas as pd

from specmd_jax import reference
from specmd_jax.core.counters import DEMAND_COUNTERS
from specmd_jax.run.mrc import lru_mrc
from specmd_jax.policies import POLICIES, served_by
from specmd_jax.core.synthetic import decode_stream
from specmd_jax.core.trace import Trace
from specmd_jax.core.steps import StepArrays, prepare_steps

from specmd_jax.study.peers import make_cache, oracle_reader
from specmd_jax.run.demand import run_configs
from specmd_jax.run.records import run_records
from specmd_jax.run.stack import STACK_POLICIES, run_stack

SCAN = served_by("scan")
HITS = DEMAND_COUNTERS.index("hits")
DEMANDS = DEMAND_COUNTERS.index("demands")
LCS_POLICIES = ("lru", "fifo", "lfu", "belady", "clock", "s3fifo", "arc")
COLUMNS = ("backend", "engine", "policy", "configs", "accesses", "compile_s", "run_s", "acc_per_s",
           "ratio_vs_libcachesim_lru", "ratio_vs_libcachesim_same", "ratio_vs_reference", "hits", "check")


def _say(msg: str) -> None:
    print(msg, flush=True)


def _row(backend: str, engine: str, policy: str, configs: int, accesses: int, compile_s: float,
         run_s: float, hits: Optional[int] = None, check: str = "") -> dict:
    acc = configs * accesses / run_s if run_s > 0 else float("nan")
    r = dict(backend=backend, engine=engine, policy=policy, configs=int(configs), accesses=int(accesses),
             compile_s=compile_s, run_s=run_s, acc_per_s=acc, ratio_vs_libcachesim_lru=float("nan"),
             ratio_vs_libcachesim_same=float("nan"),
             ratio_vs_reference=float("nan"), hits=hits, check=check)
    comp = "      -" if math.isnan(compile_s) else f"{compile_s:7.3f}s"
    _say(f"  [{engine:>16}] {policy:>7} B={configs:<5d} acc={accesses:<8d} compile={comp} "
         f"run={run_s:8.4f}s  {acc / 1e6:9.3f} M acc/s" + (f"  hits={hits}" if hits is not None else ""))
    return r


# ----------------------------------------------------------------------------------------------
# python reference


def bench_reference(trace: Trace, policies: Sequence[str], ref_tokens: int, backend: str) -> list[dict]:
    """``reference.simulate`` per policy, one config at N/4 on the first ``ref_tokens`` passes."""
    N = trace.shape.num_ids
    sub = trace.slice_passes(0, min(ref_tokens, trace.num_passes))
    rows = []
    for pol in policies:
        t0 = time.perf_counter()
        res = reference.simulate(sub, pol, N // 4, mode="pinned")
        dt = time.perf_counter() - t0
        rows.append(_row(backend, "python-reference", pol, 1, res.totals["demands"], float("nan"), dt,
                         hits=res.totals["hits"]))
    return rows


# ----------------------------------------------------------------------------------------------
# libCacheSim


def bench_libcachesim(seq: StepArrays, capacity: int, backend: str, policies: Sequence[str] = LCS_POLICIES,
                      tries: int = 3) -> tuple[list[dict], dict]:
    """libCacheSim ``process_trace`` per policy at ``capacity``, best of ``tries``.

    Returns (rows, hits by policy).
    """
    rows, hits = [], {}
    with oracle_reader(seq) as reader:
        nreq = int(reader.get_num_of_req())
        if nreq != seq.num_steps:
            _say(f"  WARNING: libcachesim reader sees {nreq} requests, wrote {seq.num_steps}")
        for pol in policies:
            best, mr = float("inf"), None
            for _ in range(tries):
                cache = make_cache(pol, capacity)
                t0 = time.perf_counter()
                mr, _ = cache.process_trace(reader)
                best = min(best, time.perf_counter() - t0)
            hits[pol] = int(round((1.0 - mr) * nreq))
            rows.append(_row(backend, "libcachesim", pol, 1, nreq, float("nan"), best, hits=hits[pol]))
    return rows, hits


def cross_check(trace: Trace, seq: StepArrays, capacity: int, lcs_hits: dict) -> dict:
    """specmd_jax sequential-mode hits at ``capacity`` vs libCacheSim's; returns policy -> 'OK'/'MISMATCH ...'."""
    out = {}
    for pol, want in lcs_hits.items():
        res = (run_configs(trace, pol, [capacity], [0], mode="sequential", batched=True, steps=seq) if pol in SCAN
               else run_records(trace, pol, [capacity], mode="sequential"))
        got = int(res.totals[0, HITS])
        ok = got == want
        out[pol] = "OK" if ok else f"MISMATCH(jax={got},lcs={want})"
        _say(f"  cross-check {pol:>6} C={capacity} sequential: specmd_jax hits={got} libcachesim hits={want} "
             f"-> {'OK' if ok else 'MISMATCH'}")
    return out


# ----------------------------------------------------------------------------------------------
# specmd_jax


def specmd_capacities(N: int, width: int) -> np.ndarray:
    """Capacities of a width-``B`` sweep: ``linspace(16, N, B)``; ``B = 1``: ``N // 4``."""
    return np.array([N // 4]) if width == 1 else np.linspace(16, N, width).astype(int)


def bench_specmd(trace: Trace, steps: StepArrays, policy: str, width: int, repeats: int,
                 backend: str) -> tuple[dict, np.ndarray]:
    """``run_configs`` for ``width`` configs (capacities linspace(16, N, B); B = 1: N/4), pinned.

    Returns (row, hits per config, all counters per config).
    """
    N = trace.shape.num_ids
    caps = specmd_capacities(N, width)
    seeds = np.arange(width)
    compile_s, best, res = None, float("inf"), None
    for _ in range(max(1, repeats)):
        if policy in SCAN:
            res = run_configs(trace, policy, caps, seeds, mode="pinned", batched=True, steps=steps)
        else:                                       # the record runner (lfu_decay, clock, s3fifo, arc)
            res = run_records(trace, policy, caps, mode="pinned")
        if compile_s is None:
            compile_s = res.compile_s
        best = min(best, res.run_s)
    acc = int(res.totals[0, DEMANDS])
    hits = int(res.totals[0, HITS]) if width == 1 else None
    engine = "specmd_jax" if policy in SCAN else "specmd_jax-records"
    return (_row(backend, engine, policy, width, acc, compile_s, best, hits=hits), res.totals[:, HITS],
            res.totals)


def bench_stack(trace: Trace, steps: StepArrays, policy: str, width: int, repeats: int, backend: str,
                scan_totals: Optional[np.ndarray] = None) -> dict:
    """``stack.run_stack`` (one stack pass serving all ``width`` capacities, exact for
    lru/ls/belady where no visit overflows) at the same capacities as :func:`bench_specmd`; ``check``
    compares every counter with the scan engine's sweep of the same width."""
    caps = specmd_capacities(trace.shape.num_ids, width)
    compile_s, best, res = None, float("inf"), None
    for _ in range(max(1, repeats)):
        res = run_stack(trace, caps, mode="pinned", steps=steps, policy=policy)
        compile_s = res.compile_s if compile_s is None else compile_s
        best = min(best, res.run_s)
    check = ""
    if scan_totals is not None:
        check = "OK vs scan" if np.array_equal(res.totals, scan_totals) else "MISMATCH vs scan"
        _say(f"  cross-check stack vs scan {policy} B={width}: {check}")
    return _row(backend, "specmd_jax-stack", policy, width, int(res.totals[0, DEMANDS]), compile_s, best,
                hits=int(res.totals[0, HITS]) if width == 1 else None, check=check)


def bench_libcachesim_sweep(seq: StepArrays, caps: np.ndarray, backend: str) -> dict:
    """libCacheSim LRU once per capacity of a sweep (one call each): the serial C baseline for
    the same work as a width-B specmd_jax sweep (its speed depends on the miss ratio)."""
    total = 0.0
    with oracle_reader(seq) as reader:
        nreq = int(reader.get_num_of_req())
        for c in caps:
            cache = make_cache("lru", int(c))
            t0 = time.perf_counter()
            cache.process_trace(reader)
            total += time.perf_counter() - t0
    return _row(backend, "libcachesim-sweep", "lru", len(caps), nreq, float("nan"), total)


def bench_mrc(trace: Trace, steps: StepArrays, repeats: int, backend: str,
              lru_hits: Optional[dict] = None) -> dict:
    """``lru_mrc`` (all N+1 capacities, one pass): first call includes compile.

    ``lru_hits`` (width -> hits per config of the specmd_jax LRU sweep) are checked against the
    curve at the same capacities (exact in pinned mode for C >= the largest visit demand).
    """
    N = trace.shape.num_ids
    t0 = time.perf_counter()
    df = lru_mrc(trace, steps=steps)
    first = time.perf_counter() - t0
    best = float("inf")
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        df = lru_mrc(trace, steps=steps)
        best = min(best, time.perf_counter() - t0)
    acc = int(df["demands"].iloc[0])
    hits = int(df.loc[df["capacity_slots"] == N // 4, "hits"].iloc[0])
    check = ""
    if lru_hits:
        curve = df.set_index("capacity_slots")
        bad = []
        for w, h in lru_hits.items():
            caps = specmd_capacities(N, w)
            exact = curve.loc[caps, "exact"].to_numpy()
            want = curve.loc[caps, "hits"].to_numpy()
            if not np.array_equal(np.asarray(h)[exact], want[exact]):
                bad.append(w)
        check = (f"MISMATCH vs specmd_jax lru B={bad}" if bad else
                 f"OK vs specmd_jax lru B={sorted(lru_hits)}")
        _say(f"  cross-check lru_mrc vs specmd_jax lru sweeps (pinned): {check}")
    return _row(backend, "specmd_jax-mrc", "lru", N + 1, acc, max(0.0, first - best), best, hits=hits,
                check=check)


# ----------------------------------------------------------------------------------------------
# output


def _fmt(v, col: str) -> str:
    if v is None or (not isinstance(v, str) and pd.isna(v)):
        return "-"
    if col in ("compile_s", "run_s"):
        return f"{v:.4f}" if v < 1 else f"{v:.3f}"
    if col == "acc_per_s":
        return f"{v / 1e6:.3f} M"
    if col.startswith("ratio"):
        return f"{v:.3f}"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def to_markdown(df: pd.DataFrame, header: Sequence[str]) -> str:
    cols = list(COLUMNS)
    lines = list(header) + ["", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(_fmt(r[c], c) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="olmoe-1b-7b", help="model preset (default olmoe-1b-7b)")
    ap.add_argument("--tokens", type=int, default=2048, help="decode tokens (passes) of the trace")
    ap.add_argument("--ref-tokens", type=int, default=64, help="passes replayed by the python reference")
    ap.add_argument("--widths", default="1,64,256,1024", help="comma-separated batch widths B")
    ap.add_argument("--policies", default=",".join(POLICIES), help="comma-separated policies")
    ap.add_argument("--repeats", type=int, default=2, help="specmd_jax runs per (policy, B); best run_s")
    ap.add_argument("--out", default=os.path.join("outputs", "bench"), help="output directory")
    ap.add_argument("--skip-reference", action="store_true", help="skip the python reference rows")
    ap.add_argument("--skip-libcachesim", action="store_true", help="skip libcachesim rows and cross-check")
    a = ap.parse_args(argv)
    a.widths = [int(w) for w in a.widths.split(",") if w.strip()]
    a.policies = [p.strip().lower() for p in a.policies.split(",") if p.strip()]
    a.stack_policies = [p for p in a.policies if p in STACK_POLICIES]
    bad = [p for p in a.policies if p not in POLICIES]
    if bad:
        ap.error(f"unknown policies {bad}; known: {', '.join(POLICIES)}")
    if any(w < 1 for w in a.widths):
        ap.error("widths must be >= 1")
    return a


def main(argv=None) -> pd.DataFrame:
    a = parse_args(argv)
    backend = jax.default_backend()
    _say(f"jax {jax.__version__} devices: {jax.devices()}  (backend {backend})")
    t0 = time.perf_counter()
    trace = decode_stream(a.model, tokens=a.tokens, seed=0)
    N = trace.shape.num_ids
    pinned = prepare_steps(trace, "pinned")
    seq = prepare_steps(trace, "sequential")
    _say(f"trace: {trace.describe()}; N={N}; {pinned.num_demands} accesses "
         f"({pinned.num_steps} pinned steps, {seq.num_steps} sequential); built in {time.perf_counter() - t0:.2f}s")

    rows: list[dict] = []
    checks: dict = {}
    if not a.skip_reference:
        _say(f"python reference ({min(a.ref_tokens, trace.num_passes)} passes, C={N // 4}, pinned):")
        rows += bench_reference(trace, a.policies, a.ref_tokens, backend)
    if not a.skip_libcachesim:
        try:
            import libcachesim  # noqa: F401
        except ImportError as e:
            _say(f"libcachesim unavailable ({e}); skipping its rows and the cross-check")
        else:
            _say(f"libcachesim (C={N // 4}, sequential stream, best of 3):")
            lrows, lhits = bench_libcachesim(seq, N // 4, backend)
            rows += lrows
            _say("cross-check specmd_jax (sequential, W=1) vs libcachesim:")
            checks = cross_check(trace, seq, N // 4, lhits)
            for r in lrows:
                r["check"] = checks.get(r["policy"], "")
    _say("specmd_jax (pinned, batched):")
    lru_hits, scan_totals = {}, {}
    for pol in a.policies:
        for w in a.widths:
            row, h, tot = bench_specmd(trace, pinned, pol, w, a.repeats, backend)
            rows.append(row)
            scan_totals[pol, w] = tot
            if pol == "lru":
                lru_hits[w] = h
    if a.stack_policies:
        _say("specmd_jax-stack (run_stack: one stack pass for all capacities; sweep(engine='auto')):")
        for pol in a.stack_policies:
            for w in a.widths:
                rows.append(bench_stack(trace, pinned, pol, w, a.repeats, backend, scan_totals.get((pol, w))))
    if not a.skip_libcachesim and "lru" in a.policies and max(a.widths) > 1:
        w = max(a.widths)
        _say(f"libcachesim-sweep (LRU, one process_trace per capacity, B={w}):")
        rows.append(bench_libcachesim_sweep(seq, specmd_capacities(N, w), backend))
    if "lru" in a.policies:
        _say("specmd_jax-mrc (lru_mrc, all capacities):")
        rows.append(bench_mrc(trace, pinned, a.repeats, backend, lru_hits))

    df = pd.DataFrame(rows, columns=list(COLUMNS))
    df["hits"] = df["hits"].astype("Int64")
    lru = df[(df.engine == "libcachesim") & (df.policy == "lru")]
    if len(lru):
        df["ratio_vs_libcachesim_lru"] = df["acc_per_s"] / float(lru["acc_per_s"].iloc[0])
    same = df[df.engine == "libcachesim"].set_index("policy")["acc_per_s"]
    df["ratio_vs_libcachesim_same"] = df["acc_per_s"] / df["policy"].map(same)
    ref = df[df.engine == "python-reference"].set_index("policy")["acc_per_s"]
    df["ratio_vs_reference"] = df["acc_per_s"] / df["policy"].map(ref)

    os.makedirs(a.out, exist_ok=True)
    csv = os.path.join(a.out, f"throughput_{backend}.csv")
    md = os.path.join(a.out, f"throughput_{backend}.md")
    df.to_csv(csv, index=False)
    cmd = " ".join(shlex.quote(x) for x in [os.path.relpath(sys.executable) if sys.executable else "python",
                                             *sys.argv]) if argv is None else \
        "main(" + repr(list(argv)) + ")"
    header = [
        f"# Throughput benchmark ({backend})",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- machine: {os.cpu_count()} CPUs, {platform.platform()}, {platform.processor() or platform.machine()}",
        f"- jax {jax.__version__}, devices {jax.devices()}; numpy {np.__version__}",
        f"- trace: {trace.describe()}; N = {N} ids; {pinned.num_demands} accesses "
        f"({pinned.num_steps} pinned steps); reference on the first {min(a.ref_tokens, trace.num_passes)} passes",
        f"- command: `{cmd}`",
        "- acc_per_s is aggregate (configs x accesses / run_s); single configs at capacity N/4; "
        "specmd_jax B > 1: capacities linspace(16, N, B); specmd_jax and reference in pinned mode, "
        "libcachesim on the sequential stream (so pinned and sequential hit counts at N/4 may differ a "
        "little); mrc compile_s = first call - run_s; `check`: libcachesim rows vs specmd_jax in "
        "sequential mode at N/4, mrc row vs the specmd_jax LRU sweeps at the same capacities.",
    ]
    if checks:
        header.append("- cross-check at C = N/4, sequential mode: "
                      + ", ".join(f"{p} {v}" for p, v in checks.items()))
    text = to_markdown(df, header)
    with open(md, "w") as f:
        f.write(text)
    _say("")
    _say(text)
    _say(f"wrote {csv} and {md}")
    return df


if __name__ == "__main__":
    main()
