"""hdus-edge: decentralized learning with exact, instant unlearning for edge fleets (HDUS)."""

__version__ = "0.1.0"
