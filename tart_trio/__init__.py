"""nomad-driver-tart: a Nomad task driver that runs Tart virtual machines."""

from tart_trio._version import __version__ as __version__

__all__ = ["__version__"]
