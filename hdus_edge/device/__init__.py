"""The device runtime: what runs on a Pi or a Jetson once its models are exported.

- ``agent``: the one event loop; joins transport, store, ensemble and membership; applies orders.
- ``daemon``: runs the agent as a process until a signal (``hdus-edge agent``).
- ``store``: the durable seed store (atomic writes, index, tombstones, orders, audit log, and
  whether this device itself was forgotten).
- ``parking``: messages awaiting their sender's hello, capped per sender, per topic and in total.
- ``publish``: announcing the device (hello, membership, own seed) and reading the broker's state.
- ``neighbors``: changing the neighbour list of a state dir.
- ``login``: how the device's one-shot commands log in next to its agent (command login, ``keys/tls/``).
- ``view``: read-only views of a state dir (``status``, ``members``, evidence summaries).
- ``inputs``: turning user files (.npy, PNG, PGM) into model input.
- ``http_api``: the live ensemble over the Open Inference Protocol (KServe v2), plus ``/metrics``.
- ``metrics``: the agent's Prometheus metrics (``prometheus_client``).
- ``service``: the hardened systemd unit of an agent (``hdus-edge service``).

Never imports torch, scikit-learn or matplotlib, not even inside a function (a device's base install
has none of them; ``tests/test_layout.py`` checks it). Never imports ``learning``, ``admin``,
``unlearn``, ``lab``, ``sim``, ``bench``, ``reliability`` or ``cli``.
"""
