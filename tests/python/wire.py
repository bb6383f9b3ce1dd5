"""The wire constants the agent tests speak, read from the agent's generated block
(src/agent/parts/00_channel.py)
(rendered from src/proto by proto::python, checked by `cargo test --lib proto::python`): the
tests keep no copy of their own, so the three agree by construction."""

import os
import struct

AGENT_PATH = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "src",
    "agent",
    "parts",
    "00_channel.py",
)
BEGIN = "# --- wire constants: generated from src/proto (proto::python); do not edit ---"
END = "# --- end of wire constants ---"


def constants():
    """The names the generated block defines, as a dict."""
    with open(AGENT_PATH) as f:
        text = f.read()
    start = text.index(BEGIN)
    block = text[start : text.index(END, start)]
    ns = {"struct": struct}
    exec(compile(block, AGENT_PATH + ":wire-constants", "exec"), ns)
    return dict((k, v) for k, v in ns.items() if k.isupper())


globals().update(constants())
