"""The Python API: sweep a policy over cache sizes (and hardware, prefetch, readings) into a tidy table."""

from specmd_jax.api.demand import METRICS, capacity_slots, list_policies, simulate, sweep, token_cycle  # noqa: F401
from specmd_jax.api.timed import TIMINGS, sweep_prefetch  # noqa: F401
from specmd_jax.api.score import sweep_score  # noqa: F401
