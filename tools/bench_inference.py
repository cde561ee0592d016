"""Inference benchmark (same as ``hdus-edge bench inference``): python tools/bench_inference.py [--quick] [--json]."""

import sys

from hdus_edge.bench.inference import main

if __name__ == "__main__":
    sys.exit(main())
