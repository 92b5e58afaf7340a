"""fleet-deploy's shared core: the wire protocol, the listener and the deployer.

Nothing in this package imports the MCP stack: the listener must stay small and start fast.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fleet-deploy")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
