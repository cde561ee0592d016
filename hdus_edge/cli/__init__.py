"""The ``hdus-edge`` command line: thin commands over the library, one module per command group.

The top of the tree: nothing imports ``cli``. ``app`` wires the commands and turns every
``HdusError`` into one ``error: ...`` line and its exit code. ``entry`` is the process entry point:
it runs a plain ``agent`` command line without loading typer (the long-lived process stays lean) and
hands everything else to ``app``.
"""
