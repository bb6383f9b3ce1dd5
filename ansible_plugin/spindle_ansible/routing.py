"""Which hosts go to spindle: the connection names routed to the ``spindle`` connection plugin
(with the transport each becomes), and the patch of Ansible's connection loader that does it.

A play's host whose connection is ``ssh`` (also ``smart``), ``local``, ``docker`` or
``podman`` (also by their collection names), or one of the stock collection plugins listed in
``ENTER_ROUTES`` (chroot, nsenter, kubectl, lxd, incus, buildah, jail, lxc), is given the
``spindle`` connection with that transport; other connections (paramiko, winrm, network ones,
...) keep their own plugins. The callback and the two strategies apply :class:`LoaderPatch`
for a play or a run; the patch itself lives in :mod:`spindle_ansible.compat` with every other
patch of Ansible internals.
"""

from __future__ import annotations

import os

import hashlib

from ansible.utils.display import Display

from spindle_ansible import compat
from spindle_ansible.specs import HOP_TRANSPORTS

display = Display()

CONNECTION_NAME = 'spindle'
CONNECTION_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'plugins', 'connection')

#: requested connection name -> spindle transport: those a spindle_via hop may use too
#: (ssh, local, docker, podman), and these
ROUTES = dict(HOP_TRANSPORTS)
# chroot by its collection name and by the short names ansible-core redirects to it
for _name in ('community.general.chroot', 'chroot', 'ansible.builtin.chroot', 'ansible.legacy.chroot'):
    ROUTES[_name] = 'chroot'
ROUTES['community.docker.nsenter'] = 'setns'

#: enter transports routed from their stock collection plugins; spindle_ansible.specs maps
#: each one's options (SpecBuilder.enter_spec).
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


#: Connection names said unrouted in this process (a worker runs one task; the controller may
#: load plugins too).
_SAID = set()


def unrouted(name, args):
    """A task whose connection spindle does not serve (paramiko, winrm, a network or custom
    plugin): Ansible's own plugin runs it, as without spindle. Not silent: said once per run
    and connection name, with the first host seen, at default verbosity. Workers are fresh
    forks, so "once" is a marker file in the run's private local temp directory (Ansible's
    ``DEFAULT_LOCAL_TMP``, removed with the run), created exclusively by the first."""
    if name in _SAID:
        return
    _SAID.add(name)
    try:
        from ansible import constants as C

        digest = hashlib.sha256(str(name).encode('utf-8', 'replace')).hexdigest()[:16]
        fd = os.open(
            os.path.join(C.DEFAULT_LOCAL_TMP, 'spindle-unrouted-%s' % digest),
            os.O_CREAT | os.O_EXCL | os.O_WRONLY,
            0o600,
        )
        os.close(fd)
    except FileExistsError:
        return
    except (OSError, AttributeError, TypeError):
        pass  # no run directory: said in this process only
    host = getattr(args[0], 'remote_addr', None) if args else None
    display.warning(
        "spindle: connection %r is not one spindle serves: Ansible's own plugin runs the tasks "
        "of hosts that use it%s, not spindle's agent (spindle serves ssh, local, docker, podman "
        "and the container/chroot plugins in its docs). Said once per run and connection."
        % (str(name), (' (first: %s)' % host) if host else '')
    )


class LoaderPatch(compat.LoaderPatch):
    """Routes ``ROUTES`` to spindle on ``connection_loader`` (and gives the copy action
    spindle's one-round-trip ``_copy_file``) until ``restore()``; says when a task's connection
    is not routed (:func:`unrouted`)."""

    def __init__(self, loader=None, actions=None):
        from ansible.plugins.loader import action_loader, connection_loader

        super(LoaderPatch, self).__init__(
            loader or connection_loader,
            actions or action_loader,
            ROUTES,
            CONNECTION_NAME,
            CONNECTION_DIR,
            unrouted,
        )
