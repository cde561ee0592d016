"""The wire protocol: what devices say to each other, and how it travels as bytes.

- ``fields``: the rules every travelling field obeys (ids, hashes, counters, times).
- ``canonical``: the one canonical JSON form that is signed.
- ``crypto``: Ed25519 keys, the admin's certificates over device keys, the trust store.
- ``messages``: frozen dataclasses, one per message kind; no bytes handling.
- ``codec``: the only module that turns messages into signed bytes and back, and checks authority.
- ``topics``: every MQTT topic name and subscription filter.

Import the submodules directly (``from hdus_edge.protocol.codec import encode``). This file re-exports
nothing on purpose: ``crypto`` imports ``fields`` and ``messages`` imports ``crypto``, so an eager
re-export here would create an import cycle. Pure logic and key files only: never imports torch,
``transport`` or anything above it.
"""
