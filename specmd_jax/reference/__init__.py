"""The jax-free reference replay every kernel is checked against.

:func:`replay` is the one entry point: the demand stream alone (:func:`simulate`, pinned or
sequential), or with a prefetch plan, a hardware link, the execution reading, miss handling,
precision levels and cache-aware routing (:func:`simulate_timed`).
"""

from specmd_jax.reference.demand import (RefResult, floyd_pick, policy_key, simulate,  # noqa: F401
                                         steps_of)
from specmd_jax.reference.replay import replay  # noqa: F401
from specmd_jax.reference.timed import TimedResult, simulate_timed  # noqa: F401
