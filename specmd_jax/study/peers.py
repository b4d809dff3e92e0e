"""libCacheSim (the C cache simulator, package ``libcachesim``) as a peer for classic policies.

Used by tests and benchmarks only (``libcachesim`` is in the ``test`` extra). The access stream is
the ``sequential``-mode stream (one request per distinct expert of a visit, first-appearance
order), written as an oracleGeneral binary trace: obj id = global id + 1,
size 1 (so ``cache_size`` counts experts), next access in access-index units, ``-1`` = never.
"""

from __future__ import annotations

import contextlib
import os
import tempfile

import numpy as np

from specmd_jax.core.semantics import INF_STEP
from specmd_jax.core.steps import StepArrays

LCS_CLASS = {"lru": "LRU", "fifo": "FIFO", "lfu": "LFU", "belady": "Belady", "clock": "Clock", "s3fifo": "S3FIFO",
             "arc": "ARC"}


def write_oracle_general(seq: StepArrays, path: str) -> int:
    """Write the sequential stream ``seq`` (width 1) as an oracleGeneral file; returns #requests."""
    if seq.mode != "sequential":
        raise ValueError("libCacheSim replays the sequential stream: prepare_steps(trace, 'sequential')")
    ids = seq.ids[:, 0].astype(np.int64)
    nxt = seq.next_use[:, 0].astype(np.int64)
    dt = np.dtype([("t", "<u4"), ("id", "<u8"), ("sz", "<u4"), ("nxt", "<i8")])  # packed, 24 bytes
    rec = np.empty(len(ids), dt)
    rec["t"] = np.arange(len(ids))
    rec["id"] = ids + 1
    rec["sz"] = 1
    rec["nxt"] = np.where(nxt >= INF_STEP, -1, nxt)
    rec.tofile(path)
    return len(ids)


@contextlib.contextmanager
def oracle_reader(seq: StepArrays):
    """Yield a libcachesim ``TraceReader`` over ``seq`` (temporary file removed afterwards)."""
    import libcachesim as lcs

    with tempfile.TemporaryDirectory(prefix="specmd_lcs_") as d:
        path = os.path.join(d, "stream.oracleGeneral.bin")
        write_oracle_general(seq, path)
        yield lcs.TraceReader(path, lcs.TraceType.ORACLE_GENERAL_TRACE)


def make_cache(policy: str, capacity: int):
    """A libcachesim cache of ``capacity`` objects (``hashpower=12``: fast to build)."""
    import libcachesim as lcs

    return getattr(lcs, LCS_CLASS[policy])(cache_size=int(capacity), hashpower=12)


def libcachesim_hits(seq: StepArrays, policy: str, capacities) -> list[int]:
    """libCacheSim hit counts of ``policy`` on the sequential stream at each capacity."""
    out = []
    with oracle_reader(seq) as reader:
        n = int(reader.get_num_of_req())
        for c in capacities:
            mr, _ = make_cache(policy, c).process_trace(reader)
            out.append(int(round((1.0 - mr) * n)))
    return out
