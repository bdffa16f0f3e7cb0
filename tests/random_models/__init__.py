"""Randomly initialised models of the released architectures, built and saved the way a
user's checkpoint is, so that tests and benchmarks load them through the users' code path
(the released weights cannot be downloaded here)."""
