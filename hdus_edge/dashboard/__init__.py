"""The fleet admin's live web dashboard (``hdus-edge dashboard``): the fleet as the broker and the admin see it.

- ``fleet_view``: pure: broker messages + the admin's registry and evidence in, a typed ``FleetSnapshot``
  out; every message decoded and verified by the protocol's codec with the admin's trust.
- ``admin_files``: reads the admin dir (``devices.json``, evidence) and agents' ``status.json`` files.
- ``mirror``: a read-only MQTT subscriber holding the latest payload of every topic of the fleet.
- ``feed``: re-renders the snapshot on every change and hands the latest JSON to the web threads.
- ``server``: the standard library's HTTP server: the page, ``/api/fleet.json``, server-sent events.
- ``service``: joins them; ``static/``: the page (plain HTML, CSS, JavaScript; no build step, nothing
  from the internet).

Read-only: it holds no private key and publishes nothing. Never imports torch, ``learning``, ``sim``,
``bench``, ``reliability``, ``lab`` or ``cli``.
"""
