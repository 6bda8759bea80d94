"""Data: dataset files and their checks, decoders, the named streams, users' benchmarks,
augmentation, and the models by name. Imports nothing of ckd above ``ckd.common``."""
