"""Replay conventions by name, and what the batch convention counts (pure Python, no jax).

``pinned`` (default): SpecMD-style visits, written in :mod:`specmd_jax.core.semantics`.
``bigmoeonedge``: BigMoeOnEdge's replayer (byte budgets, post-batch eviction), defined by
:mod:`specmd_jax.reference.batches`. ``docs/semantics.md`` says how they differ and when each is right.
"""

CONVENTIONS = ("pinned", "bigmoeonedge")
# the batch convention's counters (reference, JAX engine and tables), bytes in bytes
BATCH_COUNTERS = ("lookups", "hits", "misses", "collisions", "evictions", "lookups_decode", "hits_decode",
                  "read_bytes", "evicted_bytes")
# registry policies the batch convention refuses, and why
BATCH_UNSUPPORTED = {"random": "its victims come from CPython's random.Random in BigMoeOnEdge and cannot be "
                               "reproduced; this convention has no seeded rule for it yet",
                     "clock": "its walk (clearing bits, moving entries to the head) is defined for the pinned "
                              "convention only so far",
                     "lfu_decay": "the batch convention has no decay period yet",
                     "s3fifo": "its queues (small, main, ghost) are defined for the pinned convention only so far",
                     "arc": "its lists and ghosts are defined for the pinned convention only so far"}
