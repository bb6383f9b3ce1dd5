"""Ansible callback ``spindle``: the entry point that needs no third-party strategy.

Enabled in ansible.cfg (``callbacks_enabled = spindle``), it does in the controller process
what the ``spindle_linear``/``spindle_free`` strategies do, with whatever strategy the play
uses (linear, free, host_pinned, ...): at the first play it makes sure a spindle daemon runs
and routes ssh/smart/local/docker/podman connections to the ``spindle`` connection plugin;
the routing is undone when the playbook ends and the daemon stops when Ansible exits. Worker
processes are forked from the controller after that, so they inherit the routing.
"""

from __future__ import annotations

DOCUMENTATION = """
    name: spindle
    type: aggregate
    short_description: run tasks through the spindle daemon, with any strategy
    description:
        - Routes hosts whose connection is C(ssh), C(smart), C(local), C(docker) or C(podman)
          (and the stock C(chroot), C(kubectl), C(lxd), C(incus), C(buildah), C(jail) and C(lxc)
          plugins, see docs/connections.md) to the C(spindle) connection plugin, so every task reuses one persistent connection
          and Python agent per target, whatever the play's strategy.
        - Starts a spindle daemon for the run (binary from E(SPINDLE_BIN), else the C(spindle)
          that the spindle-ansible wheel installed beside the Python running Ansible, else on
          E(PATH)) and stops it when Ansible exits, unless E(SPINDLE_SOCKET) names a daemon that
          is already running.
        - Does the same as the C(spindle_linear) and C(spindle_free) strategies, without a
          third-party strategy plugin (ansible-core deprecates those).
    author: spindle
    version_added: historical
    requirements:
        - enable in configuration (callbacks_enabled = spindle, callback_plugins pointing here)
"""

import json
import os

from ansible.plugins.callback import CallbackBase

from spindle_ansible.client import Client, SpindleError
from spindle_ansible.plugins.strategy import LoaderPatch, ensure_daemon


def _paths(socket_path):
    """The daemon's module-path counters (``stats`` → ``paths``), or None."""
    try:
        client = Client(socket_path)
        try:
            return client.stats(call_timeout=5.0).get('paths')
        finally:
            client.close()
    except (OSError, SpindleError, ValueError):
        return None


def paths_summary(before, after):
    """(counts, text) of the module runs between two ``paths`` snapshots."""
    before = before or {}
    counts = {}
    for key in ('in_agent', 'forked', 'stock'):
        counts[key] = int(after.get(key, 0)) - int(before.get(key, 0))
    reasons = {}
    old = before.get('stock_reasons') or {}
    for reason, n in (after.get('stock_reasons') or {}).items():
        n = int(n) - int(old.get(reason, 0))
        if n > 0:
            reasons[reason] = n
    counts['stock_reasons'] = reasons
    total = counts['in_agent'] + counts['forked'] + counts['stock']
    text = ("spindle: %d module task runs: %d in the agent, %d in a forked child of the agent, "
            "%d on Ansible's stock command path" % (total, counts['in_agent'], counts['forked'],
                                                     counts['stock']))
    if reasons:
        text += " (%s)" % "; ".join("%s: %d" % (r, n) for r, n in sorted(reasons.items()))
    return counts, text


class CallbackModule(CallbackBase):
    """Daemon and connection routing for the whole playbook run."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = 'aggregate'
    CALLBACK_NAME = 'spindle'
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super(CallbackModule, self).__init__(*args, **kwargs)
        self._patch = None
        self._socket = None
        self._before = None

    def v2_playbook_on_play_start(self, play):
        # Sent by the task queue manager before the play's strategy queues any task.
        socket_path = ensure_daemon()
        if self._patch is None:
            self._patch = LoaderPatch().apply()
            self._socket = socket_path
            self._before = _paths(socket_path)  # a daemon given by SPINDLE_SOCKET counts on

    def v2_playbook_on_stats(self, stats):
        if self._patch is not None:
            self._patch.restore()
            self._patch = None
            self._report_paths()

    def _report_paths(self):
        """Where this run's module tasks ran: at -v always, and at default verbosity when any
        ran on the stock path (each reason was also a warning once per host). With
        E(SPINDLE_PATHS_FILE), the counts are written there as JSON (tests, the bench)."""
        after = _paths(self._socket)
        if after is None:
            return
        counts, text = paths_summary(self._before, after)
        if counts['stock']:
            self._display.display(text, color='bright purple')
        else:
            self._display.v(text)
        out = os.environ.get('SPINDLE_PATHS_FILE')
        if out:
            with open(out, 'w') as f:
                json.dump(counts, f, sort_keys=True)
