"""Fault injection and hostile input for the reliability suite (``hdus-edge bench reliability``).

- ``proxy``: a loopback TCP proxy that a test cuts, stalls and restores (connection faults).
- ``brokers``: Mosquitto (persistence on or off) and amqtt behind one handle that can crash.
- ``zygote``: forks ``hdus-edge agent`` processes in milliseconds, for hundreds of SIGKILLs.
- ``onnx_mutants``: hostile ONNX payloads (truncations, random bytes, non-models, deep and nested
  graphs, a memory bomb, a compute-heavy seed, random structural mutations of a valid seed),
  deterministic given a seed.
- ``envelope_mutants``: hostile protocol envelopes (missing fields, wrong types, oversized values,
  bit flips by region), re-signed or not.
- ``harness``: a small fleet on disk, a "puppet" that speaks for its devices, agent snapshots.
- ``invariants``: the store and fleet invariants every fault case checks, read without side effects.
- ``cases_hostile``, ``cases_faults``, ``cases_crash``, ``cases_load``, ``cases_broker_trust`` (session
  takeover, revocation of a forgotten device, TLS only; on the config ``broker-config`` writes): the runner's cases;
- ``cases_hostile``, ``cases_faults``, ``cases_crash``, ``cases_load``, ``cases_insider`` (issue 14:
  a forgotten device's restart, floods and heavy seeds from one insider): the runner's cases;
  ``runner`` runs them and sums every must-be-zero count.

Library code: it never prints and never configures logging; the CLI does. Sits on top: never
imports ``sim``, ``bench`` or ``cli``.
"""
