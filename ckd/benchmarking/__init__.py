"""Benchmark runs: the run config, methods by name, the run function and its scoring, checkpoints,
schedulers (local, Ray, Ray Tune, vectorized), suites, sweeps and loggers."""
