"""Run untrusted Python and JavaScript snippets in a sandbox."""
from jail._version import __version__

__all__ = ["__version__"]
