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


if __name__ == "__main__":  # `make lint` checks the joined source (ruff check -)
    import sys

    sys.stdout.write(text())
