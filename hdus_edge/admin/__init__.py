"""The fleet admin's side: setting a fleet up and configuring its broker (no torch).

- ``setup``: ``fleet init`` (admin dir, reference set) and ``provision`` (a device's state dir).
- ``broker``: Mosquitto configuration for a fleet (``hdus-edge broker-config``): TLS only,
  dynamic-security logins bound to client ids, per-device rights.
- ``readmission``: bringing a forgotten device back with a new epoch (``hdus-edge readmit``).

Never imports ``learning``, ``device``, ``unlearn``, ``lab``, ``sim``, ``bench``, ``reliability`` or ``cli``.
"""
