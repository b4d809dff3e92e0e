"""Drivers: the only home of jit, vmap and compile caches; chunked scans, stack-distance sweeps, the MRC."""
