"""Fault injection and hostile input for the reliability suite (``hdus-edge bench reliability``).

- ``proxy``: a loopback TCP proxy that a test cuts, stalls and restores (connection faults).
- ``onnx_mutants``: hostile ONNX payloads (truncations, random bytes, non-models, deep graphs,
  random structural mutations of a valid seed), all deterministic given a seed.
- ``envelope_mutants``: hostile protocol envelopes (missing fields, wrong types, oversized values,
  bit flips by region), re-signed or not.
- ``harness``: a small fleet on disk with a "puppet" that speaks for devices, plus agent snapshots.
- ``invariants``: the store and fleet invariants every fault case checks.
- ``cases_hostile``, ``cases_faults``, ``cases_load``: the runner's cases; ``runner`` joins them.

Library code: it never prints and never configures logging; the CLI does.
"""
