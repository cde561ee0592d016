"""Forgetting, the requester's side: signed orders out, signed receipts in, evidence kept (no torch).

- ``request``: publish an unlearn order, collect and verify the holders' receipts, save evidence.
- ``commands``: the steps behind ``hdus-edge unlearn``, ``leave`` and ``receipts``.
- ``revocation``: the last step, ``hdus-edge revoke``: broker logins deleted, the order relayed where
  no device can clear it, the admin's signed revocation list, retained topics cleared.

The holders' side (applying an order) is the device agent's (``device.agent``). Never imports
``learning``, ``admin``, ``lab``, ``sim``, ``bench``, ``reliability`` or ``cli``.
"""
