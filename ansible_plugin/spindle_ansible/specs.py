"""Where the daemon must start a host's agent: the ``TargetSpec`` for a host from the spindle
connection plugin's options, whatever connection the inventory gave it (ssh, local,
docker/podman, chroot, nsenter, the stock enter plugins kubectl/lxd/incus/buildah/jail/lxc),
and for the hosts it is reached through (``spindle_via``, or a ProxyJump naming an inventory
host), each hop's spec built from that hop's own variables.
"""

import json
import os
import re
import shlex

from ansible import constants as C
from ansible.errors import AnsibleError
from ansible.module_utils.common.text.converters import to_text

from spindle_ansible.client import TargetSpec
from spindle_ansible.modexec import plain_program

#: Longest spindle_via chain.
MAX_VIA_DEPTH = 8
#: Longest connect timeout the daemon accepts, in seconds (one week; docs/api.md).
MAX_CONNECT_TIMEOUT = 7 * 24 * 3600
_DIGITS = re.compile(r'\s*[0-9]+\s*')


def int_option(value, what, host, lo, hi):
    """The integer value of option ``what`` (port, timeout) for ``host`` within lo..hi, or
    None when unset (None or ''). Anything else, such as ``'2201 x'``, ``22.5``, ``True`` or a
    value out of range, is an AnsibleError naming the option and the host: never a silently
    different number."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    n = None
    if isinstance(value, bool):
        pass
    elif isinstance(value, int):
        n = value
    elif isinstance(value, float) and value.is_integer():
        n = int(value)
    elif isinstance(value, str) and _DIGITS.fullmatch(value):
        n = int(value)
    if n is None or not lo <= n <= hi:
        raise AnsibleError(
            "spindle: %s %r of host %s is not an integer from %d to %d" % (what, value, host, lo, hi)
        )
    return n


def seconds(timeout, host):
    """The connect timeout option as the daemon's ``connect_timeout`` (see int_option); 0
    means the default, as it always did here."""
    if int_option(timeout, 'timeout', host, 0, MAX_CONNECT_TIMEOUT) == 0:
        return None
    return int_option(timeout, 'timeout', host, 1, MAX_CONNECT_TIMEOUT)


#: ansible_connection values a hop may use -> spindle transport.
HOP_TRANSPORTS = {}
for _name, _transport in (
    ('ssh', 'ssh'),
    ('smart', 'ssh'),
    ('local', 'local'),
    ('docker', 'docker'),
    ('podman', 'podman'),
):
    for _prefix in ('', 'ansible.builtin.', 'ansible.legacy.'):
        HOP_TRANSPORTS[_prefix + _name] = _transport
HOP_TRANSPORTS['community.docker.docker'] = 'docker'
HOP_TRANSPORTS['containers.podman.podman'] = 'podman'


def proxy_jump(*arg_strings):
    """The ProxyJump destination named in ssh argument strings (``-J x``, ``-Jx``,
    ``-o ProxyJump=x``, ``-oProxyJump x``), or None, and the arguments without it (each
    string as it was when it names none: shlex, slow, runs only when one might)."""
    if not any(s and ('-J' in s or 'proxyjump' in s.lower()) for s in arg_strings):
        return None, list(arg_strings)
    found, kept = None, []
    for s in arg_strings:
        words = shlex.split(s) if s else []
        out, i = [], 0
        while i < len(words):
            w = words[i]
            nxt = words[i + 1] if i + 1 < len(words) else None
            if w == '-J' and nxt is not None:
                found, i = nxt, i + 2
                continue
            if w.startswith('-J') and len(w) > 2:
                found, i = w[2:], i + 1
                continue
            opt, skip = None, 1
            if w == '-o' and nxt is not None:
                opt, skip = nxt, 2
            elif w.startswith('-o') and len(w) > 2:
                opt = w[2:]
            if opt is not None:
                key, _, value = opt.replace('=', ' ', 1).partition(' ')
                if key.lower() == 'proxyjump' and value.strip():
                    found, i = value.strip(), i + skip
                    continue
            out.append(w)
            i += 1
        kept.append(' '.join(shlex.quote(w) for w in out) if s else s)
    if found is not None and found.lower() == 'none':
        found = None
    return found, kept


#: Transports routed from stock enter plugins; options mapped by SpecBuilder.enter_spec.
ENTER_MODES = frozenset(('kubectl', 'lxd', 'incus', 'buildah', 'jail', 'lxc'))

#: kubernetes.core.kubectl's options that become flags, in the order its plugin adds them.
_KUBECTL_FLAGS = (
    ('spindle_kubectl_namespace', '-n'),
    ('spindle_kubectl_kubeconfig', '--kubeconfig'),
    ('spindle_kubectl_context', '--context'),
    ('spindle_kubectl_host', '--server'),
    ('spindle_kubectl_username', '--username'),
    ('spindle_kubectl_password', '--password'),
    ('spindle_kubectl_token', '--token'),
    ('spindle_kubectl_client_cert', '--client-certificate'),
    ('spindle_kubectl_client_key', '--client-key'),
    ('spindle_kubectl_ca_cert', '--certificate-authority'),
    ('spindle_kubectl_validate_certs', '--insecure-skip-tls-verify'),
)


def kubectl_words(option):
    """The words kubernetes.core.kubectl puts between ``kubectl`` and ``exec``, and the
    environment it adds to kubectl's, from that plugin's options."""
    words = []
    for opt, flag in _KUBECTL_FLAGS:
        value = option(opt)
        if value in (None, ''):
            continue
        if opt in ('spindle_kubectl_password', 'spindle_kubectl_token'):
            raise AnsibleError(
                "spindle: the kubectl %s option puts a secret on kubectl's command line (the "
                "stock plugin does that); spindle does not: put the credentials in a kubeconfig "
                "file (ansible_kubectl_kubeconfig)" % opt.rsplit('_', 1)[1]
            )
        if opt == 'spindle_kubectl_kubeconfig' and not isinstance(value, str):
            raise AnsibleError(
                "spindle: ansible_kubectl_kubeconfig must be a file path; a kubeconfig given as "
                "a dictionary is not supported (the stock plugin writes it to a temporary file)"
            )
        if opt == 'spindle_kubectl_validate_certs' and not value:
            continue  # the stock plugin adds it only when true
        words += [flag, to_text(value)]
    extra = option('spindle_kubectl_extra_args')
    if extra:
        words += to_text(extra).split(' ')  # as the stock plugin does
    env = option('spindle_kubectl_local_env_vars')
    if env:
        if isinstance(env, str):
            env = json.loads(env)
        env = {to_text(k): to_text(v) for k, v in env.items()}
    return words, env or None


class SpecBuilder(object):
    """Builds specs for one task's host: ``load_name`` is the connection plugin's (for its
    option definitions), ``remote_addr`` the play context's address, ``hostvars`` the task's
    (not templated) host variables and ``inventory_name`` the host's own name."""

    def __init__(self, load_name, remote_addr, hostvars, inventory_name):
        self.load_name = load_name
        self.remote_addr = remote_addr
        self.hostvars = hostvars
        self.inventory_name = inventory_name

    def target(self, option, mode):
        """The host's spec, with ``spec.via`` set to its hop's (recursively) when it has one;
        ``option(name)`` gives the host's option values (the plugin's ``get_option``)."""
        spec = self.spec_from(option, mode)
        if spec.transport == 'local':
            return spec
        via = option('spindle_via')
        if not via and spec.transport == 'ssh':
            jump, kept = proxy_jump(spec.ssh_args, spec.ssh_common_args, spec.ssh_extra_args)
            if jump and self.hop_host(jump) is not None:
                via = jump
                spec.ssh_args, spec.ssh_common_args, spec.ssh_extra_args = (k or None for k in kept)
        me = to_text(self.inventory_name or self.remote_addr)
        if via and to_text(via) != me:  # a hop is not its own hop (-e spindle_via=gateway)
            spec.via = self.hop_spec(via, [me]).to_dict()
        return spec

    def hop_host(self, name):
        """The inventory name for a ProxyJump destination ``[user@]host[:port]``, if any."""
        hv = self.hostvars
        if hv is None or ',' in name:
            return None
        host = name.rsplit('@', 1)[-1]
        if host.count(':') == 1:
            host = host.split(':', 1)[0]
        return host if host in hv else None

    def hop_spec(self, name, chain):
        """The TargetSpec of hop ``name`` from its own (templated) host variables."""
        name = to_text(name)
        if name in chain:
            raise AnsibleError("spindle_via loop: %s" % ' -> '.join(chain + [name]))
        if len(chain) > MAX_VIA_DEPTH:
            raise AnsibleError(
                "spindle_via: more than %d hops: %s" % (MAX_VIA_DEPTH, ' -> '.join(chain + [name]))
            )
        hv = self.hostvars
        if hv is None:
            raise AnsibleError(
                "spindle_via=%s: the host variables of other hosts are not "
                "available to this connection" % name
            )
        if name not in hv:
            jump = self.hop_host(name)
            if jump is None:
                raise AnsibleError("spindle_via=%s is not a host of the inventory" % name)
            name = jump
        hvars = hv[name]
        defs = C.config.get_configuration_definitions('connection', self.load_name) or {}

        def option(opt):
            # Ansible's precedence for one host: its variables (the later names of an
            # option's list win), else ini/env/default.
            value = None
            for var in (defs.get(opt) or {}).get('vars') or []:
                vname = var.get('name') if isinstance(var, dict) else var
                if vname and vname in hvars and not vname.startswith('delegated_vars'):
                    value = hvars[vname]
            if value is None and opt == 'host':
                value = name
            if value is None:
                try:
                    value = C.config.get_config_value(
                        opt, plugin_type='connection', plugin_name=self.load_name
                    )
                except Exception:
                    value = None
            return value

        conn = hvars['ansible_connection'] if 'ansible_connection' in hvars else 'ssh'
        mode = HOP_TRANSPORTS.get(to_text(conn))
        if mode is None:
            raise AnsibleError(
                "spindle_via=%s: its connection %r cannot carry other hosts "
                "(ssh, local, docker or podman can)" % (name, conn)
            )
        spec = self.spec_from(option, mode, name=name)
        # The hop's own tasks run under its configured interpreter: its agent starts there
        # (a start hint), so they need no second agent when they come after its targets'.
        python = hvars['ansible_python_interpreter'] if 'ansible_python_interpreter' in hvars else None
        if isinstance(python, str) and plain_program(python):
            spec.python = python
        via = option('spindle_via')
        if via and to_text(via) != name:
            spec.via = self.hop_spec(via, chain + [name]).to_dict()
        return spec

    def spec_from(self, option, mode, name=None):
        """A TargetSpec from option values; ``option(name)`` gives one (``get_option`` for
        this host, the hop's variables for a spindle_via hop)."""
        host = option('host') or self.remote_addr
        if mode == 'local':
            return TargetSpec(transport='local', name=name or host)
        if mode == 'chroot':  # like the chroot plugin: host is the directory, no user
            timeout = option('timeout')
            return TargetSpec(
                host=host, transport='chroot', name=name, connect_timeout=seconds(timeout, name or host)
            )
        if mode == 'setns':  # like community.docker.nsenter: host is the pid, always root
            timeout = option('timeout')
            return TargetSpec(
                host=str(option('nsenter_pid') or 1),
                transport='setns',
                name=name,
                connect_timeout=seconds(timeout, name or host),
            )
        if mode in ENTER_MODES:
            return self.enter_spec(option, mode, host, name)
        if mode in ('docker', 'podman'):
            timeout = option('timeout')
            return TargetSpec(
                host=host,
                transport=mode,
                user=option('remote_user') or None,
                executable=option('spindle_container_executable') or None,
                extra_args=option('spindle_container_extra_args') or None,
                connect_timeout=seconds(timeout, name or host),
            )
        ssh_args = option('ssh_args') or ''
        if option('host_key_checking') is False:
            ssh_args = (ssh_args + ' -o StrictHostKeyChecking=no').strip()
        key = option('private_key_file')
        timeout = option('timeout')
        port = option('port')
        return TargetSpec(
            host=host,
            transport='ssh',
            port=int_option(port, 'port', name or host, 1, 65535),
            user=option('remote_user') or None,
            identity_file=os.path.expanduser(key) if key else None,
            ssh_executable=option('ssh_executable') or None,
            ssh_args=ssh_args or None,
            ssh_common_args=option('ssh_common_args') or None,
            ssh_extra_args=option('ssh_extra_args') or None,
            password=option('password') or None,
            connect_timeout=seconds(timeout, name or host),
        )

    def enter_spec(self, option, mode, host, name):
        """The TargetSpec for a host whose connection was a stock enter plugin (kubectl, lxd,
        incus, buildah, jail, lxc): the daemon runs the command that plugin would run (same
        container, namespace, user, kubeconfig, ...), built from that plugin's own options."""
        timeout = option('timeout')
        spec = TargetSpec(
            host=host, transport=mode, name=name, connect_timeout=seconds(timeout, name or host)
        )
        if mode == 'kubectl':
            words, env = kubectl_words(option)
            spec.host = option('spindle_kubectl_pod') or host
            spec.container = option('spindle_kubectl_container') or None
            spec.extra_args = ' '.join(shlex.quote(w) for w in words) or None
            spec.env = env
        elif mode in ('lxd', 'incus'):
            instance = option('spindle_%s_host' % mode) or host
            instance = to_text(instance).split('.', 1)[0]
            spec.host = '%s:%s' % (option('spindle_%s_remote' % mode) or 'local', instance)
            project = option('spindle_%s_project' % mode)
            if project:
                spec.extra_args = '--project %s' % shlex.quote(to_text(project))
            spec.user = option('remote_user') or 'root'
            spec.su = option('spindle_%s_become_method' % mode) or None
        elif mode == 'buildah':
            user = option('remote_user')
            spec.user = user if user and user != 'root' else None  # as the stock plugin
        elif mode == 'jail':
            spec.user = option('remote_user') or None
        elif mode == 'lxc':
            spec.host = option('spindle_lxc_host') or host
            spec.extra_args = '--clear-env'  # the stock plugin attaches with LXC_ATTACH_CLEAR_ENV
        return spec
