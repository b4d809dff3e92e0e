"""The jax-free reference replay every kernel is checked against.

:func:`simulate` replays the demand stream alone; :func:`simulate_timed` adds a prefetch plan, a
hardware link, the execution reading, miss handling, precision levels and cache-aware routing.
"""

from specmd_jax.reference.demand import (RefResult, floyd_pick, policy_key, simulate,  # noqa: F401
                                         steps_of)
from specmd_jax.reference.timed import TimedResult, simulate_timed  # noqa: F401
