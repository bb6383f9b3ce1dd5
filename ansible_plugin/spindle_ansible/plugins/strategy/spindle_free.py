"""Ansible strategy ``spindle_free``: the stock free strategy, with hosts whose
connection is ssh (or smart) or local served by the spindle daemon's persistent agents."""

from __future__ import annotations

DOCUMENTATION = """
    name: spindle_free
    short_description: the free strategy, run through the spindle daemon
    description:
        - Behaves exactly like the C(free) strategy (each host runs its tasks as fast as it
          can, without waiting for the other hosts), but hosts whose connection is C(ssh),
          C(smart) or C(local) use the C(spindle) connection plugin, so every task reuses one
          persistent connection and Python agent per target.
        - Starts a spindle daemon for the run (binary from E(SPINDLE_BIN), else the C(spindle)
          that the spindle-ansible wheel installed in the scripts directory of the Python
          running Ansible, e.g. the venv's C(bin/), else on E(PATH)) and stops it when Ansible
          exits, unless E(SPINDLE_SOCKET) names a daemon that is already running.
        - Other connections (paramiko, docker, podman, winrm, network) are not routed yet and
          run with their own plugins.
    author: spindle
    version_added: historical
"""

from ansible.plugins.strategy.free import StrategyModule as _FreeStrategyModule

from spindle_ansible.plugins.strategy import SpindleStrategyMixin


class StrategyModule(SpindleStrategyMixin, _FreeStrategyModule):
    """free, through spindle."""
