"""Counter names and the meaning of every metric column, written once."""

DEMAND_COUNTERS = ("demands", "hits", "misses", "collisions", "evictions", "bypass")

METRICS = {
    "demands": "distinct (expert, visit) demands (pinned) or accesses (sequential)",
    "hits": "demands found resident",
    "misses": "demands not resident (fetched; includes bypass)",
    "collisions": "misses on an expert evicted earlier in the same pass",
    "evictions": "experts evicted",
    "bypass": "misses fetched but not cached because the visit's demand exceeded the cache",
    "bytes_moved": "misses x expert_bytes (host-to-device bytes)",
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
