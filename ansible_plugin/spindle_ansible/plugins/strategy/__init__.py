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

from ansible.errors import AnsibleError
from ansible.plugins.loader import action_loader, connection_loader
from ansible.utils.display import Display

from spindle_ansible import daemon, paths
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


# -- connection routing ---------------------------------------------------------------------

def _route(loader_get_with_context):
    def get_with_context(name, *args, **kwargs):
        transport = ROUTES.get(name)
        if transport is None:
            return loader_get_with_context(name, *args, **kwargs)
        result = loader_get_with_context(CONNECTION_NAME, *args, **kwargs)
        obj = result[0]
        if obj is None:
            raise AnsibleError("spindle: the connection plugin %r was not found (looked in %s)"
                               % (CONNECTION_NAME, CONNECTION_DIR))
        if not kwargs.get('class_only') and hasattr(obj, 'spindle_route'):
            obj.spindle_route(transport)
        return result

    get_with_context.spindle_routed = True
    return get_with_context


def _routed_get(routed_get_with_context):
    def get(name, *args, **kwargs):
        return routed_get_with_context(name, *args, **kwargs)[0]

    get.spindle_routed = True
    return get


def _routed_action_get(action_get):
    from spindle_ansible import asyncrun
    from spindle_ansible.copyfast import route_action

    def get(name, *args, **kwargs):
        obj = action_get(name, *args, **kwargs)
        if kwargs.get('class_only'):
            return obj
        connection = kwargs.get('connection')
        return asyncrun.route_action(route_action(name, obj, connection), connection)

    get.spindle_routed = True
    return get


class LoaderPatch(object):
    """Routes ssh/smart/local/docker/podman to spindle on ``connection_loader`` (and gives
    the copy action spindle's one-round-trip ``_copy_file``) until ``restore()``."""

    def __init__(self, loader=connection_loader, actions=action_loader):
        self.loader = loader
        self.actions = actions
        self.saved = None
        self.saved_action_get = None

    def apply(self):
        loader = self.loader
        if getattr(loader.get_with_context, 'spindle_routed', False):
            return self  # already routed (nested or repeated run): leave it to its owner
        loader.add_directory(CONNECTION_DIR)
        # Load it here, before Ansible forks a worker per task: each worker then inherits
        # the imported module and its option definitions instead of compiling the source
        # and parsing its DOCUMENTATION again (~20 ms per task).
        loader.get(CONNECTION_NAME, class_only=True)
        own = loader.__dict__
        self.saved = {k: own[k] for k in ('get', 'get_with_context') if k in own}
        routed = _route(loader.get_with_context)
        loader.get_with_context = routed
        loader.get = _routed_get(routed)
        if self.actions is not None and not getattr(self.actions.get, 'spindle_routed', False):
            self.saved_action_get = self.actions.__dict__.get('get')
            self.actions.get = _routed_action_get(self.actions.get)
        return self

    def restore(self):
        if self.saved is None:
            return
        for key in ('get', 'get_with_context'):
            if key in self.saved:
                setattr(self.loader, key, self.saved[key])
            else:
                self.loader.__dict__.pop(key, None)
        if self.actions is not None and getattr(self.actions.get, 'spindle_routed', False):
            if self.saved_action_get is not None:
                self.actions.get = self.saved_action_get
            else:
                self.actions.__dict__.pop('get', None)
        self.saved = None
        self.saved_action_get = None


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
