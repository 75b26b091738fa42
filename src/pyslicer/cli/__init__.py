"""The ``slicer`` command line (``pyslicer.cli.main:main``)."""
