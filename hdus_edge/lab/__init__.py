"""What the simulator, the benchmarks and the reliability suite share (the ``[sim]`` extra).

- ``agents``: a fleet of real device agents over a real broker, in one process.
- ``outside``: clocks and a requester that run in their own processes, so timings are not
  the measured process's interpreter lock.
- ``evaluate``: accuracy of an in-process fleet on local and global test splits.
- ``synthetic``: exported, untrained models for timing and fault runs.

Never imports ``sim``, ``bench``, ``reliability`` or ``cli``: they sit on top of it.
"""
