"""dserve's version (one place; ``dserve.__version__`` and the REST API read it)."""
__version__ = "0.1.0"
