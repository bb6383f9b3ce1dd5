"""What the spindle strategies share: ``SpindleStrategyMixin.run`` (mixed into Ansible's
linear and free strategies) makes sure a spindle daemon runs (:mod:`spindle_ansible.daemon`),
routes the play's connections to spindle while it runs (:mod:`spindle_ansible.routing`), and
reports the run's module paths (:mod:`spindle_ansible.paths`); ``_queue_task`` does, before
each worker forks, what the ``spindle`` callback does from its task events
(``compat.strategy_queued``). The names below stay importable
from here for callers of earlier versions.
"""

from __future__ import annotations

from ansible.utils.display import Display

from spindle_ansible import compat, daemon, paths
from spindle_ansible.routing import CONNECTION_DIR, CONNECTION_NAME, ENTER_ROUTES, ROUTES, LoaderPatch  # noqa: F401

display = Display()
find_binary = daemon.find_binary
install_dirs = daemon.install_dirs
ensure_daemon = daemon.ensure_daemon

_paths_before = None  # the daemon's path counters when this run's first play started


class SpindleStrategyMixin(object):
    """Mixed in before an Ansible strategy: runs its plays through the spindle daemon."""

    def run(self, iterator, play_context, *args, **kwargs):
        socket_path = ensure_daemon()
        patch = LoaderPatch().apply()
        global _paths_before
        if _paths_before is None:
            _paths_before = paths.snapshot(socket_path) or {}
        try:
            return super(SpindleStrategyMixin, self).run(iterator, play_context, *args, **kwargs)
        finally:
            patch.restore()
            paths.report(display, socket_path, _paths_before)  # the run's so far

    def _queue_task(self, host, task, *args, **kwargs):
        # In the controller, before the task's worker forks (compat: strategy-queue-task).
        compat.strategy_queued(host, task)
        return super(SpindleStrategyMixin, self)._queue_task(host, task, *args, **kwargs)
