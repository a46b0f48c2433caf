"""Face-MoGLE: controllable face generation from a semantic mask, a text prompt, or both."""

__version__ = "0.1.0"
