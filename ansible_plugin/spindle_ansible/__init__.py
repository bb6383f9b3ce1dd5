"""Python side of spindle: a client for the spindle daemon's Unix-socket API.

The Ansible strategy and connection plugins built on it come next; see README.md.
"""

__version__ = "0.1.0"

from .client import (  # noqa: E402,F401
    MAX_MESSAGE,
    Client,
    ExecResult,
    SpindleError,
    TargetSpec,
)

__all__ = [
    "__version__",
    "MAX_MESSAGE",
    "Client",
    "ExecResult",
    "SpindleError",
    "TargetSpec",
]
