"""The package version (one place: the run record and ``taskvec.__version__`` read it)."""
__version__ = "0.1.0"
