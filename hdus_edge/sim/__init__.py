"""The fleet simulator: HDUS over real agents and a real broker, the paper's baselines, studies, report.

Sits on top: may import anything below it (``lab``, ``learning``, ``device``, ...), never ``bench``,
``reliability`` or ``cli``.
"""
