"""The ``hdus-edge`` command line: thin commands over the library."""
