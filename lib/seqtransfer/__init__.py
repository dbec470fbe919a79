"""seqtransfer: a research workbench for transferable sequential recommendation."""
__version__ = "0.1.0"
