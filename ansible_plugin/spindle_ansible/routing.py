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

from spindle_ansible import compat
from spindle_ansible.specs import HOP_TRANSPORTS

CONNECTION_NAME = 'spindle'
CONNECTION_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'plugins', 'connection')

#: requested connection name -> spindle transport: those a spindle_via hop may use too
#: (ssh, local, docker, podman), and these
ROUTES = dict(HOP_TRANSPORTS)
ROUTES['community.general.chroot'] = 'chroot'
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


class LoaderPatch(compat.LoaderPatch):
    """Routes ``ROUTES`` to spindle on ``connection_loader`` (and gives the copy action
    spindle's one-round-trip ``_copy_file``) until ``restore()``."""

    def __init__(self, loader=None, actions=None):
        from ansible.plugins.loader import action_loader, connection_loader

        super(LoaderPatch, self).__init__(
            loader or connection_loader, actions or action_loader, ROUTES, CONNECTION_NAME, CONNECTION_DIR
        )
