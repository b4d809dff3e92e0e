"""JAX step functions: the demand step, the instant-prefetch step, the asynchronous copy-queue
step, their shared rank algebra. No jit, vmap or compile caches here (those live in ``run``)."""
