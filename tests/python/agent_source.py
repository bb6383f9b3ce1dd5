"""The agent's source as the controller ships it: src/agent/parts/*.py joined in name order
(transport::bootstrap's AGENT_PARTS, which a Rust test keeps equal to the directory), and the
module runner the same way from src/agent/modrun/*.py (MODRUN_PARTS)."""

import glob
import os

AGENT_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "src", "agent"
)
PARTS_DIR = os.path.join(AGENT_DIR, "parts")
MODRUN_DIR = os.path.join(AGENT_DIR, "modrun")


def _joined(directory):
    out = []
    for path in sorted(glob.glob(os.path.join(directory, "*.py"))):
        with open(path) as f:
            out.append(f.read())
    return "\n\n".join(out)


def text():
    """The joined agent source (str)."""
    return _joined(PARTS_DIR)


def modrun_text():
    """The joined module runner source (str)."""
    return _joined(MODRUN_DIR)


def load_modrun(name="spindle_modrun_test"):
    """The module runner as the agent loads it: its joined parts run as one new module."""
    import types

    mod = types.ModuleType(name)
    exec(compile(modrun_text(), "<spindle-modrun>", "exec"), mod.__dict__)
    return mod


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


if __name__ == "__main__":  # `make lint` checks the joined sources (ruff check -)
    import sys

    sys.stdout.write(modrun_text() if sys.argv[1:] == ["--modrun"] else text())
