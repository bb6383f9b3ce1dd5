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
        - Attaches to this user's persistent spindle daemon, or starts it (binary from
          E(SPINDLE_BIN), else the C(spindle) that the spindle-ansible wheel installed beside
          the Python running Ansible, else on E(PATH)); it exits E(SPINDLE_PERSIST) seconds
          (default 60) after the last run, so the next run finds live agents with cached module
          code. E(SPINDLE_PERSIST=0) starts a private daemon stopped when Ansible exits.
          E(SPINDLE_SOCKET) names a daemon the user runs instead.
        - Does the same as the C(spindle_linear) and C(spindle_free) strategies, without a
          third-party strategy plugin (ansible-core deprecates those).
        - With E(SPINDLE_EE=off) it stands aside (stock Ansible), for images that enable it
          for every job, like spindle's execution environment (containers/ee/), where a job's
          environment (AWX, ansible-runner worker) is set after the image's entrypoint ran.
    author: spindle
    version_added: historical
    requirements:
        - enable in configuration (callbacks_enabled = spindle, callback_plugins pointing here)
"""

import os

from ansible.errors import AnsibleError
from ansible.plugins.callback import CallbackBase

from spindle_ansible import depcache, opening, paths, plancache
from spindle_ansible.daemon import ensure_daemon
from spindle_ansible.routing import LoaderPatch


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
        if os.environ.get('SPINDLE_EE') == 'off':
            return
        try:
            socket_path = ensure_daemon()
        except AnsibleError as e:
            # (Ansible would only say "Callback dispatch failed"): say what it means.
            self._display.warning(
                "spindle is NOT active for this play: it runs on Ansible's stock connections. %s" % (e,)
            )
            return
        if self._patch is None:
            self._patch = LoaderPatch().apply()
            self._socket = socket_path
            self._before = paths.snapshot(socket_path)  # a daemon given by SPINDLE_SOCKET counts on

    def v2_playbook_on_task_start(self, task, is_conditional):
        # In the controller, before the task's workers fork: they inherit the module plans.
        if self._patch is not None:
            plancache.run_cache().preload()
            depcache.refresh()

    v2_playbook_on_handler_task_start = v2_playbook_on_task_start

    def v2_runner_on_start(self, host, task):
        # In the controller, just before this task's worker forks (spindle_ansible.opening).
        if self._patch is not None:
            opening.started(host.get_name(), getattr(task, 'action', None), getattr(task, '_uuid', None))

    def v2_playbook_on_stats(self, stats):
        if self._patch is not None:
            self._patch.restore()
            self._patch = None
            paths.report(self._display, self._socket, self._before)
