"""What the simulator, the benchmarks and the reliability suite share (the ``[sim]`` extra).

- ``agents``: a fleet of real device agents over a real broker, in one process (small tests).
- ``processes``: a fleet of one OS process per device (``hdus-edge agent``), watched from outside.
- ``netns``: test hosts on one machine: network namespaces joined by veth links (root).
- ``proxy``: a TCP proxy that cuts, stalls and restores links, and shapes them (delay, jitter, loss).
- ``outside``: clocks and a requester that run in their own processes, so timings are not
  the measured process's interpreter lock.
- ``evaluate``: accuracy of an in-process fleet on local and global test splits.
- ``synthetic``: exported, untrained models for timing and fault runs.

Never imports ``sim``, ``bench``, ``reliability`` or ``cli``: they sit on top of it.
"""
