"""Pure Python/numpy: traces and readers, synthetic traces, presets, capacities, steps, the timing
model, prefetch plans, miss handling, routing, score features, counters, semantics. Never imports jax."""
