"""fleet-deploy's shared core: the wire protocol, the listener and the deployer.

Nothing in this package imports the MCP stack: the listener must stay small and start fast.
``__version__`` is looked up on first use: importlib.metadata costs more than the rest of
``fleet-deploy --help``.
"""

from __future__ import annotations

from functools import cache

__all__ = ["__version__"]


@cache
def _installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fleet-deploy")
    except PackageNotFoundError:  # running from a source tree without an install
        return "0.0.0+unknown"


def __getattr__(name: str) -> str:
    if name == "__version__":
        return _installed_version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
