"""The paper study: prior systems, synthetic-trace calibration, outside peers, plots."""
