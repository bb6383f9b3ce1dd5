"""The agent's source as the controller ships it: src/agent/parts/*.py joined in name order
(transport::bootstrap's AGENT_PARTS, which a Rust test keeps equal to the directory)."""

import glob
import os

AGENT_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "src", "agent"
)
PARTS_DIR = os.path.join(AGENT_DIR, "parts")


def text():
    """The joined agent source (str)."""
    out = []
    for path in sorted(glob.glob(os.path.join(PARTS_DIR, "*.py"))):
        with open(path) as f:
            out.append(f.read())
    return "\n\n".join(out)


def load_part(name):
    """One part run alone, in a namespace with the stdlib modules the agent imports at its top
    (00_channel.py), for unit tests of a part that needs nothing else of the agent."""
    import base64, collections, hashlib, threading  # noqa: E401

    ns = {
        "base64": base64,
        "collections": collections,
        "hashlib": hashlib,
        "os": os,
        "threading": threading,
    }
    path = os.path.join(PARTS_DIR, name)
    with open(path) as f:
        exec(compile(f.read(), path, "exec"), ns)
    return ns


if __name__ == "__main__":  # `make lint` checks the joined source (ruff check -)
    import sys

    sys.stdout.write(text())
