"""On-the-fly Bayesian fine-tuning of foundation potentials for atomate2/jobflow."""

__version__ = "0.1.0"
