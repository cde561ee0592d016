"""Benchmarks behind ``hdus-edge bench``: figures and ratios measured side by side in one run."""
