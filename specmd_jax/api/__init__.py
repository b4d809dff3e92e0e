"""The Python API: :func:`sweep` a policy over cache sizes (and hardware, prefetch, readings) into a
tidy table; :func:`simulate` one configuration."""

from specmd_jax.api.batches import replay_curve  # noqa: F401
from specmd_jax.api.demand import simulate  # noqa: F401
from specmd_jax.core.capacity import capacity_slots, token_cycle  # noqa: F401
from specmd_jax.core.counters import METRICS  # noqa: F401
from specmd_jax.policies import list_policies  # noqa: F401
from specmd_jax.api.sweep import TIMINGS, sweep, sweep_prefetch, sweep_score  # noqa: F401
