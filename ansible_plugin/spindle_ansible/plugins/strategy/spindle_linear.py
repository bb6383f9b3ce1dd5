"""Ansible strategy ``spindle_linear``: the stock linear strategy, with hosts whose
connection is ssh (or smart) or local served by the spindle daemon's persistent agents."""

from __future__ import annotations

DOCUMENTATION = """
    name: spindle_linear
    short_description: the linear strategy, run through the spindle daemon
    description:
        - Behaves exactly like the C(linear) strategy (each task runs on all hosts before the
          next task starts), but hosts whose connection is C(ssh), C(smart) or C(local) use the
          C(spindle) connection plugin, so every task reuses one persistent connection and
          Python agent per target.
        - Starts a spindle daemon for the run (binary from E(SPINDLE_BIN), else the C(spindle)
          that the spindle-ansible wheel installed in the scripts directory of the Python
          running Ansible, e.g. the venv's C(bin/), else on E(PATH)) and stops it when Ansible
          exits, unless E(SPINDLE_SOCKET) names a daemon that is already running.
        - Other connections (paramiko, docker, podman, winrm, network) are not routed yet and
          run with their own plugins.
    author: spindle
    version_added: historical
"""

from ansible.plugins.strategy.linear import StrategyModule as _LinearStrategyModule

from spindle_ansible.plugins.strategy import SpindleStrategyMixin


class StrategyModule(SpindleStrategyMixin, _LinearStrategyModule):
    """linear, through spindle."""
