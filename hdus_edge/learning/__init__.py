"""Learning: every line of torch that trains, distils or exports (the ``[train]`` extra).

- ``train``: a main model on its own device's data only.
- ``distill``: a seed from its own main model on the public reference set only.
- ``steps``: the state-dir steps behind ``hdus-edge train``, ``distill`` and ``export``.
- ``inprocess``: the in-process fleet (train and distil devices, exchange seeds, forget one),
  the learning core that the simulator and the exactness proofs run.

Never imports ``device``, ``admin``, ``unlearn``, ``lab``, ``sim``, ``bench``, ``reliability`` or ``cli``.
"""
