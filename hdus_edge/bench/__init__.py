"""Benchmarks behind ``hdus-edge bench``: figures and ratios measured side by side in one run.

Sits on top: may import anything below it, never ``sim``, ``reliability`` or ``cli``.
"""
