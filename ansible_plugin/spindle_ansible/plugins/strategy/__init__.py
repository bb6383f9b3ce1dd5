"""What the spindle strategies share: the daemon's lifetime and the connection routing.

``SpindleStrategyMixin.run`` (mixed into Ansible's linear and free strategies):

* makes sure a spindle daemon runs (``spindle_ansible.daemon.ensure_daemon``: the user's
  ``SPINDLE_SOCKET``, else this user's persistent daemon, which outlives the run by
  ``SPINDLE_PERSIST`` seconds, else a private one stopped at exit), exported as
  ``SPINDLE_SOCKET`` for the forked workers; it serves every play of the run (connections
  persist across plays, and across runs while the persistent daemon lives);
* while the play runs, wraps the connection loader so that a request for the ``ssh``
  (also ``smart``), ``local``, ``docker`` or ``podman`` connection (also by their
  collection names) returns the ``spindle`` connection with that transport.  Other
  connections (paramiko, winrm, network ones, ...) are left to their own plugins.  The wrap is idempotent and undone
  when the play ends.
"""

from __future__ import annotations

import os

from ansible.plugins.loader import action_loader, connection_loader
from ansible.utils.display import Display

from spindle_ansible import compat, daemon, paths
from spindle_ansible.specs import HOP_TRANSPORTS

display = Display()

CONNECTION_NAME = 'spindle'
PLUGINS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONNECTION_DIR = os.path.join(PLUGINS_DIR, 'connection')

#: requested connection name -> spindle transport: those a spindle_via hop may use too
#: (ssh, local, docker, podman), and these
ROUTES = dict(HOP_TRANSPORTS)
ROUTES['community.general.chroot'] = 'chroot'
ROUTES['community.docker.nsenter'] = 'setns'

# -- enter transports routed from their stock collection plugins (kubectl, lxd, incus,
# buildah, jail, lxc); spindle_ansible.specs maps each one's options (SpecBuilder.enter_spec).
ENTER_ROUTES = {
    'kubernetes.core.kubectl': 'kubectl',
    'community.general.lxd': 'lxd',
    'community.general.incus': 'incus',
    'containers.podman.buildah': 'buildah',
    'community.general.jail': 'jail',
    'community.general.lxc': 'lxc',
}
for _full, _transport in list(ENTER_ROUTES.items()):
    _short = _full.rsplit('.', 1)[1]
    if _short != 'incus':  # ansible-core redirects the others' short names to these
        for _prefix in ('', 'ansible.builtin.', 'ansible.legacy.'):
            ENTER_ROUTES[_prefix + _short] = _transport
ROUTES.update(ENTER_ROUTES)

# -- the daemon: spindle_ansible.daemon (names kept here for callers of earlier versions) -----

find_binary = daemon.find_binary
install_dirs = daemon.install_dirs
ensure_daemon = daemon.ensure_daemon


# -- connection routing: spindle_ansible.compat (every patch of Ansible internals) ------------


class LoaderPatch(compat.LoaderPatch):
    """Routes ssh/smart/local/docker/podman (and the enter plugins: ``ROUTES``) to spindle on
    ``connection_loader`` (and gives the copy action spindle's one-round-trip ``_copy_file``)
    until ``restore()``."""

    def __init__(self, loader=connection_loader, actions=action_loader):
        super(LoaderPatch, self).__init__(loader, actions, ROUTES, CONNECTION_NAME, CONNECTION_DIR)


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
