"""The learned eviction score: its soft relaxation and the optax tuner."""
