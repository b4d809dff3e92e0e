"""Counter names and the meaning of every metric column, written once."""

# demand-only replay (every engine and both references)
DEMAND_COUNTERS = ("demands", "hits", "misses", "collisions", "evictions", "bypass")
# miss handling: the quality-proxy counters (specmd_jax.core.miss)
PROXY_COUNTERS = ("tokens", "tokens_changed", "pairs", "pairs_served", "pairs_dropped", "pairs_substituted",
                  "pairs_rerouted", "units_total", "units_full", "units_dropped", "units_substituted",
                  "units_rerouted", "exec_pairs", "bits_served")
# instant-prefetch kernel: rows of its per-layer prefetch counters
INSTANT_COUNTERS = ("pf_issued", "pf_resident", "pf_dropped", "pf_useful", "dropped", "pairs_dropped",
                    "units_dropped")
# asynchronous kernel: rows of its per-layer prefetch and timing counters
ASYNC_COUNTERS = ("late", "pf_issued", "pf_resident", "pf_pending", "pf_arrived", "pf_dropped", "pf_useful",
                       "dropped", "pairs_dropped", "units_dropped", "fetched", "substituted",
                       "pairs_substituted", "units_substituted", "units_full", "exec_pairs", "bits_served",
                       "units_moved", "tokens_changed", "pairs_rerouted", "units_rerouted")
# the timed reference: every counter it keeps
TIMED_COUNTERS = ("demands", "hits", "late", "misses", "collisions", "evictions", "bypass",
            "pf_issued", "pf_resident", "pf_pending", "pf_arrived", "pf_dropped", "pf_useful",
            "pf_wasted", "stall_ticks", "dropped", "substituted", "units_moved") + PROXY_COUNTERS

METRICS = {
    "demands": "distinct (expert, visit) demands (pinned) or accesses (sequential)",
    "hits": "demands found resident",
    "misses": "demands not resident (fetched; includes bypass)",
    "collisions": "misses on an expert evicted earlier in the same pass",
    "evictions": "experts evicted",
    "bypass": "misses fetched but not cached because the visit's demand exceeded the cache",
    "bytes_moved": "misses x expert_bytes (host-to-device bytes)",
    "read_mib": "bytes moved (pinned) or read (bigmoeonedge) / 2**20",
    "belady_gap": "(Belady's hits - hits) / Belady's hits at the same cache size (the share of the oracle's hits "
                  "missed; negative where the policy is not bounded by that Belady, e.g. partitioned pools under "
                  "bigmoeonedge)",
    "lookups": "bigmoeonedge: distinct experts of a batch, each looked up once",
    "demands_decode": "pinned: the demands of decode passes (the prefill's are demands - demands_decode)",
    "hits_decode": "pinned: the hits of decode passes",
    "hit_rate_decode": "hits / demands of decode passes (pinned), or hits / lookups of decode batches "
                       "(bigmoeonedge: BigMoeOnEdge's hit_pct_decode / 100)",
    "hit_rate_prefill": "the same over prefill passes (pinned) or prefill batches (bigmoeonedge)",
    "hit_rate": "hits / demands",
    "miss_rate": "misses / demands",
    "collision_rate": "collisions / demands (the paper leaves the denominator open; ours is demands)",
    "collision_share": "collisions / misses",
    "max_occupancy": "largest pool occupancy after any step (slots)",
    "token_cycle_slots": "one token's demand over all layers, L x top-k slots (T = L x K x expert_bytes bytes)",
    "below_token_cycle": "capacity below one token cycle (capacity_bytes < T): LRU's recency order is then the "
                         "layer cycle and its decode hit rate collapses to about 0; read it as a cliff, not a "
                         "policy result",
}
