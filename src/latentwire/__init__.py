"""LatentWire: a shared continuous interlingua read by several frozen LLMs."""
__version__ = "0.1.0"
