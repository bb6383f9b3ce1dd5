"""Ansible connection plugin ``spindle``: run Ansible's commands and file transfers through
the spindle daemon, which keeps one persistent connection and Python agent per target.

Options mirror the ssh plugin's variables, so an inventory written for ssh needs no change.
The daemon's socket comes from ``SPINDLE_SOCKET`` (the spindle strategies start a daemon and
export it). One daemon client per worker process; the client re-opens after fork.
"""

from __future__ import annotations

DOCUMENTATION = """
    name: spindle
    short_description: run tasks through the spindle daemon (one persistent agent per target)
    description:
        - Sends every command and file transfer of a task to the spindle daemon, which keeps one
          persistent ssh connection (or local pipe) and one Python agent per target and reuses
          them for all tasks, so no ssh handshake and no new channel per task.
        - Commands run on the target with C(/bin/sh -c), like the remote shell of the ssh plugin.
        - The options mirror those of the ssh plugin (same variables, ini keys and environment),
          so an inventory written for ssh works unchanged.
        - The strategies C(spindle_linear) and C(spindle_free) start a daemon, export
          E(SPINDLE_SOCKET) and route hosts whose connection is C(ssh), C(smart) or C(local)
          to this plugin.
    author: spindle
    version_added: historical
    notes:
        - The ssh plugin's default O(ssh_args) (ControlMaster/ControlPersist) is not applied,
          since spindle keeps one connection per target itself; a value you set is honoured.
        - Privilege escalation (become) runs in a nested agent on the target, one per become
          method, user, flags and password, started once through the command the become
          plugin builds (sudo, su, doas, ...) and reused by later tasks; a password is typed
          by the target's agent when the prompt appears (on the command's stdin for
          C(sudo -S), on its terminal for C(su)). Idle nested agents beyond
          E(SPINDLE_MAX_INTERPRETERS) (default 20) per target are closed, least recently
          used first.
        - Modules run in the agent whatever O(pipelining) says, under exactly the interpreter
          Ansible resolved for the task (configured or discovered); a task whose interpreter
          is not the host agent's runs in a second agent started under it on the same
          connection. A module that cannot run in an agent (old-style, WANT_JSON, binary or
          non-Python modules) says why once per host and reason.
        - Async tasks (C(async)/C(poll)) start in the agent as a detached job that writes the
          job's status file where and as Ansible's async_wrapper does and keeps its time
          limit, so Ansible's polling and C(async_status) (also in a later run) work as
          usual; async tasks of modules the agent does not run use async_wrapper.
        - O(timeout) is ssh's C(ConnectTimeout), as with the ssh plugin (TCP connect and the
          ssh handshake). The agent's start after that has its own period, 4 x O(timeout) and
          at least 120 s, restarted whenever the target shows progress (output, or reading
          the agent's code), at most 5 periods in all; a slow, loaded host is not marked
          unreachable while it is making progress.
    extends_documentation_fragment:
        - connection_pipelining
    options:
      host:
          description: Hostname/IP to connect to.
          default: inventory_hostname
          type: string
          vars:
               - name: inventory_hostname
               - name: ansible_host
               - name: ansible_ssh_host
               - name: delegated_vars['ansible_host']
               - name: delegated_vars['ansible_ssh_host']
      host_key_checking:
          description: Determines if SSH should reject or not a connection after checking host keys.
          default: True
          type: boolean
          ini:
              - section: defaults
                key: 'host_key_checking'
              - section: ssh_connection
                key: 'host_key_checking'
          env:
              - name: ANSIBLE_HOST_KEY_CHECKING
              - name: ANSIBLE_SSH_HOST_KEY_CHECKING
          vars:
              - name: ansible_host_key_checking
              - name: ansible_ssh_host_key_checking
      password:
          description: Authentication password for the O(remote_user). Can be supplied as CLI option.
          type: string
          vars:
              - name: ansible_password
              - name: ansible_ssh_pass
              - name: ansible_ssh_password
      ssh_args:
          description:
              - Arguments to pass to all SSH CLI tools.
              - Unlike the ssh plugin there is no default (its ControlPersist arguments are
                pointless here); a value you set is passed to ssh.
          type: string
          ini:
              - section: 'ssh_connection'
                key: 'ssh_args'
          env:
              - name: ANSIBLE_SSH_ARGS
          vars:
              - name: ansible_ssh_args
      ssh_common_args:
          description: Common extra args for all SSH CLI tools.
          type: string
          ini:
              - section: 'ssh_connection'
                key: 'ssh_common_args'
          env:
              - name: ANSIBLE_SSH_COMMON_ARGS
          vars:
              - name: ansible_ssh_common_args
          cli:
              - name: ssh_common_args
          default: ''
      ssh_extra_args:
          description: Extra exclusive to the SSH CLI.
          type: string
          vars:
              - name: ansible_ssh_extra_args
          env:
            - name: ANSIBLE_SSH_EXTRA_ARGS
          ini:
            - key: ssh_extra_args
              section: ssh_connection
          cli:
            - name: ssh_extra_args
          default: ''
      ssh_executable:
          default: ssh
          description: The ssh client binary the daemon runs; the first C(ssh) in $PATH by default.
          type: string
          env: [{name: ANSIBLE_SSH_EXECUTABLE}]
          ini:
          - {key: ssh_executable, section: ssh_connection}
          vars:
              - name: ansible_ssh_executable
      port:
          description: Remote port to connect to.
          type: int
          ini:
            - section: defaults
              key: remote_port
          env:
            - name: ANSIBLE_REMOTE_PORT
          vars:
            - name: ansible_port
            - name: ansible_ssh_port
          keyword:
            - name: port
      remote_user:
          description:
              - User name with which to login to the remote server, normally set by the remote_user keyword.
              - If no user is supplied, the ssh client chooses the user as it normally does.
          type: string
          ini:
            - section: defaults
              key: remote_user
          env:
            - name: ANSIBLE_REMOTE_USER
          vars:
            - name: ansible_user
            - name: ansible_ssh_user
          cli:
            - name: user
          keyword:
            - name: remote_user
      pipelining:
          description:
            - Accepted for compatibility and ignored. Modules run in the target's agent whatever
              it says (only ANSIBLE_KEEP_REMOTE_FILES runs modules from files, and each such
              task says so).
          env:
            - name: ANSIBLE_PIPELINING
            - name: ANSIBLE_SSH_PIPELINING
          ini:
            - section: defaults
              key: pipelining
            - section: connection
              key: pipelining
            - section: ssh_connection
              key: pipelining
          vars:
            - name: ansible_pipelining
            - name: ansible_ssh_pipelining
      private_key_file:
          description: Path to private key file to use for authentication.
          type: string
          ini:
            - section: defaults
              key: private_key_file
          env:
            - name: ANSIBLE_PRIVATE_KEY_FILE
          vars:
            - name: ansible_private_key_file
            - name: ansible_ssh_private_key_file
          cli:
            - name: private_key_file
              option: '--private-key'
      use_tty:
          description:
            - As the ssh plugin's (C(ssh -tt)); commands Ansible runs without a module on stdin
              (raw, script, modules run from files) run on a pseudo-terminal on the target,
              under the login user's shell, so their output is stock's (stderr merged into
              stdout, CRLF line ends). Set to false to get them without a terminal.
          default: true
          type: bool
          ini:
            - section: ssh_connection
              key: usetty
          env:
            - name: ANSIBLE_SSH_USETTY
          vars:
            - name: ansible_ssh_use_tty
      timeout:
          default: 10
          description: Seconds ssh waits for the TCP connection and the ssh handshake (its ConnectTimeout), as the ssh plugin's; the agent's start has its own, longer period (see notes).
          env:
            - name: ANSIBLE_TIMEOUT
            - name: ANSIBLE_SSH_TIMEOUT
          ini:
            - key: timeout
              section: defaults
            - key: timeout
              section: ssh_connection
          vars:
            - name: ansible_ssh_timeout
            - name: ansible_timeout
          cli:
            - name: timeout
          type: integer
      spindle_transport:
          description:
              - How the daemon reaches the target, C(ssh), C(local) (the controller itself),
                or C(docker)/C(podman) (C(exec -i) into the running container named by
                O(host), as O(remote_user) when set).
              - The spindle strategies set it from the host's connection (C(local),
                C(docker), C(community.docker.docker), C(podman), C(containers.podman.podman),
                and the stock enter plugins C(kubernetes.core.kubectl), C(community.general.lxd),
                C(community.general.incus), C(containers.podman.buildah),
                C(community.general.jail), C(community.general.lxc), whose own variables the
                C(spindle_kubectl_*), C(spindle_lxd_*), C(spindle_incus_*) and C(spindle_lxc_host)
                options carry).
          default: ssh
          type: string
          choices: [ssh, local, docker, podman, chroot, setns, kubectl, lxd, incus, buildah, jail, lxc]
          vars:
            - name: ansible_spindle_transport
      spindle_container_executable:
          description: docker/podman transports, the engine's client binary (default C(docker) or C(podman)).
          type: string
          env:
            - name: ANSIBLE_PODMAN_EXECUTABLE
          vars:
            - name: ansible_podman_executable
            - name: ansible_docker_executable
      spindle_container_extra_args:
          description: docker/podman transports, extra arguments placed before C(exec) (like the docker and podman plugins' C(extra_args)).
          type: string
          env:
            - name: ANSIBLE_DOCKER_EXTRA_ARGS
            - name: ANSIBLE_PODMAN_EXTRA_ARGS
          vars:
            - name: ansible_docker_extra_args
            - name: ansible_podman_extra_args
      # -- enter transports routed from stock collection plugins (spindle_ansible/specs.py): each
      # option carries the stock plugin's own variables, so an inventory written for it works.
      spindle_kubectl_pod:
          description: "kubectl transport (kubernetes.core.kubectl), the stock option C(kubectl_pod): the pod, when not O(host)."
          type: string
          vars:
            - name: ansible_kubectl_pod
          env:
            - name: K8S_AUTH_POD
      spindle_kubectl_container:
          description: "kubectl transport (kubernetes.core.kubectl), the stock option C(kubectl_container) (C(-c) after the pod)."
          type: string
          vars:
            - name: ansible_kubectl_container
          env:
            - name: K8S_AUTH_CONTAINER
      spindle_kubectl_namespace:
          description: "kubectl transport (kubernetes.core.kubectl), the stock option C(kubectl_namespace) (C(-n))."
          type: string
          vars:
            - name: ansible_kubectl_namespace
          env:
            - name: K8S_AUTH_NAMESPACE
      spindle_kubectl_extra_args:
          description: "kubectl transport (kubernetes.core.kubectl), the stock option C(kubectl_extra_args), split on spaces like the stock plugin."
          type: string
          vars:
            - name: ansible_kubectl_extra_args
          env:
            - name: K8S_AUTH_EXTRA_ARGS
      spindle_kubectl_local_env_vars:
          description: "kubectl transport (kubernetes.core.kubectl), the stock option C(kubectl_local_env_vars): environment added to the kubectl command."
          type: dict
          vars:
            - name: ansible_kubectl_local_env_vars
      spindle_kubectl_kubeconfig:
          description: "kubectl transport (kubernetes.core.kubectl), the stock option C(kubectl_kubeconfig) (C(--kubeconfig)); a path (a dictionary is refused)."
          type: raw
          vars:
            - name: ansible_kubectl_kubeconfig
            - name: ansible_kubectl_config
          env:
            - name: K8S_AUTH_KUBECONFIG
      spindle_kubectl_context:
          description: "kubectl transport (kubernetes.core.kubectl), the stock option C(kubectl_context) (C(--context))."
          type: string
          vars:
            - name: ansible_kubectl_context
          env:
            - name: K8S_AUTH_CONTEXT
      spindle_kubectl_host:
          description: "kubectl transport (kubernetes.core.kubectl), the stock option C(kubectl_host) (C(--server))."
          type: string
          vars:
            - name: ansible_kubectl_host
            - name: ansible_kubectl_server
          env:
            - name: K8S_AUTH_HOST
            - name: K8S_AUTH_SERVER
      spindle_kubectl_username:
          description: "kubectl transport (kubernetes.core.kubectl), the stock option C(kubectl_username) (C(--username))."
          type: string
          vars:
            - name: ansible_kubectl_username
            - name: ansible_kubectl_user
          env:
            - name: K8S_AUTH_USERNAME
      spindle_kubectl_password:
          description: "kubectl transport (kubernetes.core.kubectl), the stock option C(kubectl_password). Refused: spindle does not put a secret on a command line; use a kubeconfig."
          type: string
          vars:
            - name: ansible_kubectl_password
          env:
            - name: K8S_AUTH_PASSWORD
      spindle_kubectl_token:
          description: "kubectl transport (kubernetes.core.kubectl), the stock option C(kubectl_token). Refused: spindle does not put a secret on a command line; use a kubeconfig."
          type: string
          vars:
            - name: ansible_kubectl_token
            - name: ansible_kubectl_api_key
          env:
            - name: K8S_AUTH_TOKEN
            - name: K8S_AUTH_API_KEY
      spindle_kubectl_client_cert:
          description: "kubectl transport (kubernetes.core.kubectl), the stock option C(client_cert) (C(--client-certificate))."
          type: string
          vars:
            - name: ansible_kubectl_cert_file
            - name: ansible_kubectl_client_cert
          env:
            - name: K8S_AUTH_CERT_FILE
      spindle_kubectl_client_key:
          description: "kubectl transport (kubernetes.core.kubectl), the stock option C(client_key) (C(--client-key))."
          type: string
          vars:
            - name: ansible_kubectl_key_file
            - name: ansible_kubectl_client_key
          env:
            - name: K8S_AUTH_KEY_FILE
      spindle_kubectl_ca_cert:
          description: "kubectl transport (kubernetes.core.kubectl), the stock option C(ca_cert) (C(--certificate-authority))."
          type: string
          vars:
            - name: ansible_kubectl_ssl_ca_cert
            - name: ansible_kubectl_ca_cert
          env:
            - name: K8S_AUTH_SSL_CA_CERT
      spindle_kubectl_validate_certs:
          description: "kubectl transport (kubernetes.core.kubectl), the stock option C(validate_certs), passed as the stock plugin passes it."
          type: raw
          vars:
            - name: ansible_kubectl_verify_ssl
            - name: ansible_kubectl_validate_certs
          env:
            - name: K8S_AUTH_VERIFY_SSL
      spindle_lxd_host:
          description: "lxd transport (community.general.lxd), the stock option C(remote_addr) from C(ansible_lxd_host) (else O(host)); the part before the first dot is the instance."
          type: string
          vars:
            - name: ansible_lxd_host
      spindle_lxd_remote:
          description: "lxd transport (community.general.lxd), the stock option C(remote): the instance is C(REMOTE:NAME)."
          type: string
          default: local
          vars:
            - name: ansible_lxd_remote
      spindle_lxd_project:
          description: "lxd transport (community.general.lxd), the stock option C(project) (C(--project))."
          type: string
          vars:
            - name: ansible_lxd_project
      spindle_lxd_become_method:
          description: "lxd transport (community.general.lxd), the stock option C(lxd_become_method): run inside the instance as C(METHOD USER -c) when O(remote_user) is not root."
          type: string
          default: /bin/su
          vars:
            - name: lxd_become_method
      spindle_incus_host:
          description: "incus transport (community.general.incus), the stock option C(remote_addr) from C(ansible_incus_host) (else O(host)); the part before the first dot is the instance."
          type: string
          vars:
            - name: ansible_incus_host
      spindle_incus_remote:
          description: "incus transport (community.general.incus), the stock option C(remote): the instance is C(REMOTE:NAME)."
          type: string
          default: local
          vars:
            - name: ansible_incus_remote
      spindle_incus_project:
          description: "incus transport (community.general.incus), the stock option C(project) (C(--project))."
          type: string
          default: default
          vars:
            - name: ansible_incus_project
      spindle_incus_become_method:
          description: "incus transport (community.general.incus), the stock option C(incus_become_method): run inside the instance as C(METHOD USER -c) when O(remote_user) is not root."
          type: string
          default: /bin/su
          vars:
            - name: incus_become_method
      spindle_lxc_host:
          description: "lxc transport (community.general.lxc, run with C(lxc-attach)), the stock option C(remote_addr) from C(ansible_lxc_host) (else O(host))."
          type: string
          vars:
            - name: ansible_lxc_host
      # -- end of the enter transports' options
      spindle_task_isolation:
          description:
            - How modules run on the target. C(warm) runs them inside the persistent agent
              with process state restored after each run and the module and its other code
              unloaded, keeping only ansible-core's own module_utils loaded (their per-run
              globals reset), which saves re-importing them every task. C(inproc) is the same
              but unloads everything after each run. C(fork) runs each module in a forked
              child of the agent, C(off) as stock Ansible does (a new interpreter per task).
              A built-in list of modules always forks; a custom module_utils that shadows a
              core one turns C(warm) into C(inproc) for that task.
          type: string
          default: warm
          choices: [warm, inproc, fork, 'off']
          env:
            - name: SPINDLE_TASK_ISOLATION
          vars:
            - name: spindle_task_isolation
      spindle_via:
          description:
            - Connection delegation. The inventory name of a host through which this host is
              reached (a bastion, a jump host); that host's agent starts this host's ssh
              command and relays its traffic. The hop's own connection is built from its own
              variables (C(ansible_host), C(ansible_port), C(ansible_user), its private key,
              ssh args, C(ansible_connection)) and may have its own O(spindle_via), so chains
              of any depth (up to 8 hops) work.
            - Without it, a C(ProxyJump) (C(-J host) or C(-o ProxyJump=host)) in the ssh
              arguments names the hop the same way, when the jump host is an inventory host
              (else ssh itself does the jump, as usual).
            - The key file and ssh options of the target are used by ssh on the hop, so paths
              must be valid there.
          type: string
          vars:
            - name: spindle_via
            - name: ansible_spindle_via
      nsenter_pid:
          description:
            - setns transport (hosts whose connection is C(community.docker.nsenter)), the pid
              whose namespaces (ipc, mount, net, pid, uts) to enter, as root, like that plugin.
          type: int
          default: 1
          vars:
            - name: ansible_nsenter_pid
          env:
            - name: ANSIBLE_NSENTER_PID
          ini:
            - section: nsenter_connection
              key: nsenter_pid
      spindle_socket:
          description: The spindle daemon's Unix socket; the spindle strategies set it.
          type: string
          env:
            - name: SPINDLE_SOCKET
          vars:
            - name: ansible_spindle_socket
"""

import copy
import getpass
import json
import os
import re
import shlex
import stat
import subprocess
import time

from ansible import constants as C
from ansible.errors import AnsibleConnectionFailure, AnsibleError, AnsibleFileNotFound
from ansible.module_utils.common.text.converters import to_bytes, to_text
from ansible.plugins.connection import ConnectionBase
from ansible.utils.display import Display

from spindle_ansible import compat, filemod, lazyoptions, opening
from spindle_ansible.asyncrun import AsyncStock
from spindle_ansible.client import Client, SpindleError
from spindle_ansible.modexec import (
    StockPath,
    file_module_reason,
    plain_program,
    run_async_in_agent,
    run_in_agent,
)
from spindle_ansible.specs import SpecBuilder

display = Display()

#: Error kinds that mean "the target cannot be reached": Ansible reports UNREACHABLE.
UNREACHABLE_KINDS = frozenset(
    ("unreachable", "auth_failed", "host_key_mismatch", "no_python", "timeout", "connection_lost")
)

#: How a nested (become or interpreter) agent's end tells its status (``agent_ended``).
_ENDED = re.compile(r'\((?:exit status (\d{1,3})|killed by signal (\d{1,2}))\)')

#: Where the target's agent puts the command starting the nested agent (become).
BOOT_PLACEHOLDER = '__SPINDLE_BOOT__'
#: Wrapped commands remembered per connection (the last few tasks' commands).
_BECOME_MEMORY = 16
#: Seconds to wait for the daemon's answer to ``open`` (daemon-local: it answers at once).
_OPEN_WAIT = 10


def _read_umask():
    try:  # Linux: no set-and-restore race with other threads
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('Umask:'):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()

#: Transports where a container without Python is still served (raw, files) by the engine's
#: own exec and cp, as the stock plugins do; elsewhere no Python leaves the host unreachable.
PLAIN_EXEC_MODES = ('docker', 'podman')

# One client per socket path in this process; the client itself drops an inherited
# connection after fork, so a worker opens its own on first use.
_clients = {}


def client_for(socket_path):
    """The process-wide ``Client`` for ``socket_path``."""
    client = _clients.get(socket_path)
    if client is None:
        client = _clients[socket_path] = Client(socket_path)
    return client


class Connection(ConnectionBase):
    """Commands and file transfers through the spindle daemon."""

    transport = 'spindle'
    has_pipelining = True

    def __init__(self, *args, **kwargs):
        super(Connection, self).__init__(*args, **kwargs)
        # Set by the spindle strategies when they route a 'local' connection here.
        self._spindle_forced_transport = None
        self.cwd = None
        self._become_inner = {}  # command as the become plugin wrapped it -> as it was
        # Set by spindle_ansible.copyfast while it lets Ansible build module invocations:
        # called with (cmd, in_data, spec) before anything is sent; a non-None return is
        # the command's (rc, stdout, stderr).
        self._spindle_intercept = None
        self._spindle_hostvars = None  # the task's hostvars: spindle_via hops' variables
        self._spindle_python = None  # the configured interpreter: a start hint for the agent
        self._spindle_inventory_name = None
        # Set by spindle_ansible.asyncrun while an async task's module is built: the job's id
        # prefix and time limit (the module run starts as a detached job in the agent); and
        # why an async task takes the stock async_wrapper path (said with its warning).
        self._spindle_async = None
        self._spindle_async_reason = None
        # Set by spindle_ansible.filemod while an old-style, WANT_JSON or binary module is
        # built: the placeholder temp dir Ansible was given and the files it put there (one
        # agent call runs them); and why such a module takes the stock path.
        self._spindle_file = None
        self._spindle_file_reason = None
        self._spindle_opened = False  # spindle_open_early asked the daemon once

    def set_become_plugin(self, plugin):
        """Keep Ansible's become plugin, remembering each command it wraps: spindle runs the
        unwrapped command in a nested agent that already runs as the become user."""
        super(Connection, self).set_become_plugin(plugin)
        compat.wrap_become(plugin, self._become_inner, _BECOME_MEMORY)  # (the become-wrap patch)

    def is_pipelining_enabled(self, wrap_async=False):
        """Modules go to the agent whatever ``pipelining`` says (ansible-core 2.19+ asks this).

        The setting exists for what a module on stdin of a fresh ``sudo python`` cannot do
        (sudo's requiretty) and to skip the temp-file dance; neither applies to a module sent
        to a live agent, and a nested agent took any become password when it started (su
        included). So, like Mitogen, only ANSIBLE_KEEP_REMOTE_FILES (the user wants the files)
        keeps the file path, and the connection says so for each such task (see
        ``_stock_path``). Async tasks ask with ``wrap_async`` and get False: Ansible's
        async_wrapper runs from files; spindle_ansible.asyncrun has the action build them
        pipelined instead, and the agent starts them."""
        return bool(not C.DEFAULT_KEEP_REMOTE_FILES and (not wrap_async or self.has_native_async))

    def set_options(self, task_keys=None, var_options=None, direct=None):
        """Ansible's, but the options only an enter route reads are resolved when first read
        (:mod:`spindle_ansible.lazyoptions`)."""
        lazyoptions.set_options(self, task_keys=task_keys, var_options=var_options, direct=direct)

    def get_option_and_origin(self, option, hostvars=None):
        # As if set_options had resolved it: its value wins over ``hostvars`` (Ansible's)
        lazyoptions.resolve(self, option)
        return super(Connection, self).get_option_and_origin(option, hostvars=hostvars)

    def get_option(self, option, hostvars=None):
        # ansible-core 2.18 decides pipelining in the action from this option (and refuses it
        # for su): the same answer as is_pipelining_enabled above, for the same reasons.
        if option == 'pipelining':
            return True
        if option == 'remote_user' and self._mode() in ('local', 'setns'):
            # The stock local and nsenter plugins have no remote_user: Ansible's actions then
            # take the user the connection runs as (the controller's; root) for '~' in temp
            # paths, never the inventory's ansible_user (a delegated copy would stage in that
            # user's home on the controller, as root).
            return self._local_user() if self._mode() == 'local' else 'root'
        return super(Connection, self).get_option(option, hostvars=hostvars)

    @staticmethod
    def _local_user():
        try:
            return getpass.getuser()
        except KeyError:
            import pwd

            return pwd.getpwuid(os.getuid()).pw_name

    def spindle_route(self, transport):
        """Used by the spindle strategies: serve a host whose connection was ``transport``.

        For ``local`` this also takes the local plugin's name as ``transport``, so Ansible
        keeps its local-only behaviour (commands run in the playbook's directory).
        """
        self._spindle_forced_transport = transport
        if transport == 'local':
            self.transport = 'local'

    # -- helpers -----------------------------------------------------------------------

    def _mode(self):
        return self._spindle_forced_transport or self.get_option('spindle_transport') or 'ssh'

    def _client(self):
        path = self.get_option('spindle_socket')
        if not path:
            raise AnsibleError(
                "the spindle connection needs a running spindle daemon: use the strategy "
                "spindle_linear or spindle_free (they start one), or set SPINDLE_SOCKET"
            )
        return client_for(path)

    def _resolve_option_variables(self, variables, templar):
        # Keep the task's ``hostvars`` (not templated: each hop's variables are templated on
        # access, and only the few this plugin reads) to build spindle_via hops' specs.
        self._spindle_hostvars = variables.get('hostvars')
        self._spindle_inventory_name = variables.get('inventory_hostname')
        # The interpreter a stream opened by this task starts its agent with (a hint: the
        # stream's identity does not include it): the configured one when it is a plain
        # path, so that module calls that arrive while the agent starts need no second agent.
        python = variables.get('ansible_python_interpreter')
        self._spindle_python = python if isinstance(python, str) and plain_program(python) else None
        return super(Connection, self)._resolve_option_variables(variables, templar)

    def _spec(self):
        """Where the daemon starts this host's agent (:mod:`spindle_ansible.specs`)."""
        builder = SpecBuilder(
            self._load_name,
            self._play_context.remote_addr,
            self._spindle_hostvars,
            self._spindle_inventory_name,
        )
        spec = builder.target(self.get_option, self._mode())
        spec.python = self._spindle_python
        return spec

    def _failure(self, err, what):
        """The Ansible exception for SpindleError ``err`` raised while doing ``what``."""
        host = err.host or self._play_context.remote_addr
        if err.kind in UNREACHABLE_KINDS:
            return AnsibleConnectionFailure(
                "Failed to connect to the host via spindle: %s: %s: %s" % (host, err.kind, err.message)
            )
        return AnsibleError("spindle: %s failed on %s: %s: %s" % (what, host, err.kind, err.message))

    def _agent_ended(self, err, spec):
        """The agent running this task ended mid-task, ssh saying nothing of the connection
        (docs/api.md, ``agent_ended``): killed on the target, by the task itself (``pkill
        python3``, ``kill $PPID``) or the OOM killer. Stock Ansible runs each module in a
        Python of its own, so there the module fails and the host stays in the play. So here:
        if the host answers (``ping`` opens a new stream), the task fails like a module that
        died without output (Ansible's MODULE FAILURE, rc 255, what ssh returns for a remote
        command that ended on a signal, or the status a nested agent's end reports, with the
        reason on stderr); if not, it is unreachable."""
        host = err.host or self._play_context.remote_addr
        bare = copy.copy(spec)
        bare.become = None
        try:
            self._client().ping(bare, call_timeout=(spec.connect_timeout or 10) + 5)
        except SpindleError as e:
            raise AnsibleConnectionFailure(
                "Failed to connect to the host via spindle: %s: the agent running the task ended (%s),"
                " and the host does not answer: %s: %s" % (host, err.message, e.kind, e.message)
            ) from None
        display.vvv("SPINDLE the agent ended mid-task; the host answers: the task fails", host=host)
        why = (
            "spindle: the agent running this task on %s ended before the task finished: %s. "
            "What the task did on the target is unknown. The host answers: its next task "
            "gets a new agent." % (host, err.message)
        )
        # A nested agent's end comes with its status (docs/api.md): give it as the shell would.
        status = _ENDED.search(err.message or '')
        rc = 255
        if status and status.group(1):
            rc = int(status.group(1))
        elif status:
            rc = 128 + int(status.group(2))
        return rc, b'', to_bytes(why)

    def _unwrap_become(self, cmd):
        """``cmd`` without the become wrapping, or None. Ansible may wrap the become command
        once more in its executable (``/bin/sh -c '<become cmd> && sleep 0'``)."""
        memory = self._become_inner
        if cmd in memory:
            return memory[cmd]
        try:
            words = shlex.split(cmd)
        except ValueError:
            return None
        if len(words) == 3 and words[1] == '-c':
            for wrapped, inner in memory.items():
                if wrapped in words[2]:
                    return '%s -c %s' % (words[0], shlex.quote(words[2].replace(wrapped, inner)))
        return None

    def _become_password(self, become):
        try:
            return become.get_option('become_pass', playcontext=self._play_context)
        except (KeyError, AttributeError):
            return getattr(self._play_context, 'become_pass', None)

    def _become_spec(self):
        """The daemon's ``become`` for this task: the become plugin's own command line
        around the boot placeholder, its success marker and password prompt."""
        become = copy.copy(self.become)  # building sets attributes: leave Ansible's alone
        cmd = type(become).build_become_command(become, BOOT_PLACEHOLDER, self._shell)
        name = become.name
        if name == 'su':
            prompts = become.get_option('prompt_l10n') or become.SU_PROMPT_LOCALIZATIONS
            prompt = r"(?i)(?:%s)\s*[:：]" % "|".join(re.escape(p) for p in prompts)
        elif isinstance(getattr(become, 'prompt', None), str) and become.prompt:
            prompt = re.escape(become.prompt)
        else:
            prompt = r"(?i)password[^\n:]*[:：]\s*$"
        options = []
        for opt in ('become_exe', 'become_flags'):
            try:
                options.append(str(become.get_option(opt) or ''))
            except KeyError:
                options.append('')
        try:
            user = become.get_option('become_user') or ''
        except KeyError:
            user = ''
        return {
            'method': name,
            'user': user,
            'flags': '|'.join(options),
            'password': self._become_password(become) or None,
            'cmd': cmd,
            'success': become.success,
            'prompt': prompt,
        }

    @staticmethod
    def _become_command_output(err):
        """``(rc, stdout, stderr)`` of a become command that exited instead of starting the
        nested agent (unknown user, bad flags...), or None. Stock Ansible gets exactly that
        from the command and reports it (a module run: MODULE FAILURE with rc, module_stdout,
        module_stderr; raw: rc, stdout, stderr)."""
        reason, _, output = (err.message or '').partition(': ')
        if reason != 'exited':
            return None
        try:
            out = json.loads(output)
            return int(out['rc']), to_bytes(out['stdout']), to_bytes(out['stderr'])
        except (ValueError, KeyError, TypeError):
            return None

    def _become_password_failure(self, err, ran=None):
        """Stock's "Incorrect/Missing <method> password" error when the output of a become
        command that did not start says so (doas prints its complaint and exits), or None.
        ``ran``: its (rc, stdout, stderr) when the caller has them already."""
        become = self.become
        reason, _, output = (err.message or '').partition(': ')
        ran = ran if ran is not None else self._become_command_output(err)
        b_output = ran[1] + ran[2] if ran is not None else to_bytes(output)
        if reason == 'incorrect_password' or become.check_incorrect_password(b_output):
            return AnsibleError('Incorrect %s password' % become.name)
        if reason == 'missing_password' and not getattr(become, 'missing', None):
            # A method that cannot tell a missing password (su): stock sends nothing at its
            # prompt and gives up at the timeout, as UNREACHABLE. Same outcome here, without
            # the wait (the agent saw the prompt and had no password to type).
            return AnsibleConnectionFailure(
                'Timeout waiting for privilege escalation password: %s asked for one and no '
                'become password was given' % become.name
            )
        if reason == 'missing_password' or become.check_missing_password(b_output):
            return AnsibleError('Missing %s password' % become.name)
        return None

    def _become_failure(self, err):
        """The Ansible error for a become context that did not start (stock's wording)."""
        become = self.become
        password = self._become_password_failure(err)
        if password is not None:
            return password
        reason, _, output = (err.message or '').partition(': ')
        if reason == 'incorrect_password':
            return AnsibleError('Incorrect %s password' % become.name)
        if reason == 'missing_password':
            return AnsibleError('Missing %s password' % become.name)
        if reason == 'timeout':
            return AnsibleError(
                'Timeout (%ss) waiting for privilege escalation prompt: %s'
                % (self.get_option('timeout'), output)
            )
        b_output = to_bytes(output)
        if become.check_incorrect_password(b_output):
            return AnsibleError('Incorrect %s password' % become.name)
        if become.check_missing_password(b_output):
            return AnsibleError('Missing %s password' % become.name)
        host = err.host or self._play_context.remote_addr
        return AnsibleError(
            'spindle: privilege escalation (%s) failed on %s: %s' % (become.name, host, err.message)
        )

    # -- ConnectionBase ----------------------------------------------------------------

    def _connect(self):
        if not self._connected:
            if self._mode() == 'local':
                # Like the local plugin: the controller's user, whatever remote_user says.
                try:
                    self._play_context.remote_user = self._local_user()
                except KeyError:
                    pass
            elif self._mode() == 'setns':  # like community.docker.nsenter: always root
                self._play_context.remote_user = 'root'
            display.vvv(
                "ESTABLISH SPINDLE CONNECTION (%s) FOR USER: %s"
                % (self._mode(), self._play_context.remote_user),
                host=self._play_context.remote_addr,
            )
            self._connected = True
        return self

    def exec_command(self, cmd, in_data=None, sudoable=True):
        super(Connection, self).exec_command(cmd, in_data=in_data, sudoable=sudoable)
        # Ansible wrapped cmd in the become command iff it carries this run's success marker.
        become = self.become
        escalate = bool(sudoable and become and become.success and become.success in to_text(cmd))
        spec = self._spec()
        as_given = to_text(cmd)
        if escalate:
            inner = self._unwrap_become(to_text(cmd))
            if inner is None:
                raise AnsibleError(
                    "spindle: cannot run %r with %s: the command was not built by "
                    "this task's become plugin" % (to_text(cmd), become.name)
                )
            cmd = inner
            spec.become = self._become_spec()
            display.vvv(
                "SPINDLE EXEC (%s to %s) %s" % (become.name, spec.become['user'], to_text(cmd)),
                host=self._play_context.remote_addr,
            )
        else:
            display.vvv("SPINDLE EXEC %s" % to_text(cmd), host=self._play_context.remote_addr)
        if self._spindle_intercept is not None:
            intercepted = self._spindle_intercept(cmd, in_data, spec)
            if intercepted is not None:
                return intercepted
        cwd = None
        if self.cwd and self._mode() == 'local':  # set by Ansible for transport 'local'
            cwd = to_text(self.cwd, errors='surrogate_or_strict')
        started = time.monotonic()
        # As sshd runs what the ssh plugin sends: under the login user's shell, and on a
        # terminal when the plugin would use `ssh -tt`.
        ssh = self._mode() == 'ssh'
        tty = bool(ssh and not in_data and sudoable and self.get_option('use_tty'))
        # A become method that cannot pipeline (su, doas) always runs under stock as a file on
        # a terminal: what such a command prints comes back in that shape here too.
        tty_shape = tty or bool(
            ssh and escalate and self.get_option('use_tty') and not getattr(become, 'pipelining', True)
        )
        try:
            if self._spindle_async is not None:
                ran = self._run_async(spec, cmd, in_data, sudoable, cwd)
                if ran is not None:
                    self._timing('async job started in the agent', started, spec)
                    return ran
            pending = self._spindle_file
            if pending is not None and pending['tmp'] in to_text(cmd):
                if filemod.step(pending, to_text(cmd)) == 'tool':
                    return 0, b'', b''  # chmod/setfacl/rm of the placeholder: the agent's job
                ran = filemod.run(self, pending, spec, to_text(cmd), cwd, ssh and not escalate, tty)
                self._timing('file module run in the agent', started, spec)
                return self._as_ssh_tty(*ran) if tty_shape else ran
            try:
                ran = run_in_agent(
                    self._client(),
                    spec,
                    to_text(cmd),
                    in_data,
                    self.get_option('spindle_task_isolation'),
                    cwd,
                )
            except StockPath as e:
                ran = None
                self._stock_path(spec, str(e))
            else:
                if ran is None:
                    reason = file_module_reason(to_text(cmd), in_data, sudoable)
                    if reason and self._spindle_async_reason and 'async_wrapper' in to_text(cmd):
                        reason = 'async task: %s' % self._spindle_async_reason
                    elif reason and self._spindle_file_reason and reason.startswith(filemod.STYLE):
                        reason = self._spindle_file_reason
                    if reason:
                        self._stock_path(spec, reason)
            if ran is not None:
                self._timing('module run in the agent', started, spec)
                return ran
            res = self._client().exec(
                spec,
                shell=to_text(cmd),
                stdin=compat.expand_token(in_data),
                cwd=cwd,
                login_shell=ssh and not escalate,
                tty=tty,
            )
        except SpindleError as e:
            self._timing('failed (%s)' % e.kind, started, spec)
            if e.kind == 'no_python' and self._mode() in PLAIN_EXEC_MODES:
                return self._plain_exec(as_given, compat.expand_token(in_data))
            if e.kind == 'become_failed':
                output = self._become_command_output(e)
                if output is not None and self._become_password_failure(e, output) is None:
                    return self._as_ssh_tty(*output) if tty_shape else output
                raise self._become_failure(e) from None
            if e.kind == 'agent_ended':
                return self._agent_ended(e, spec)
            raise self._failure(e, 'exec') from None
        self._timing('command (rc %s)' % res.rc, started, spec)
        if tty_shape:
            return self._as_ssh_tty(res.rc, res.stdout, res.stderr)
        return res.rc, res.stdout, res.stderr

    def spindle_open_early(self, task_uuid):
        """Called (file-module patch) just before Ansible builds this task's module: for the
        host's first module task of the run, the daemon starts its ssh stream (or checks an
        idle one) meanwhile (:mod:`spindle_ansible.opening`). Best effort: a daemon that
        cannot is said at -vvv, and the stream opens with the module call as before."""
        if self._spindle_opened or self._mode() != 'ssh':
            return
        self._spindle_opened = True
        if not opening.wanted(self._spindle_inventory_name, task_uuid):
            return
        host = self._play_context.remote_addr
        try:
            got = self._client().open(self._spec(), call_timeout=_OPEN_WAIT)
        except (SpindleError, AnsibleError) as e:
            display.vvv("spindle: the stream is not opened ahead of the module build (%s)" % (e,), host=host)
            return
        display.vvv("SPINDLE OPEN ahead of the module build: %s" % (got.get('stream'),), host=host)

    # -- old-style, WANT_JSON and binary modules (spindle_ansible.filemod) ------------------

    def spindle_file_module(self):
        """Why an old-style, WANT_JSON or binary module cannot run in the agent, or None
        (asked by spindle_ansible.filemod before Ansible would make the temp dir)."""
        if self.get_option('spindle_task_isolation') == 'off':
            return 'spindle_task_isolation is off'
        return None

    def spindle_file_module_begin(self, placeholder, base, name):
        """Ansible was given ``placeholder`` as its remote temp dir (the agent makes
        ``<base>/<name>`` when the module runs)."""
        self._spindle_file = {'tmp': placeholder, 'base': base, 'name': name, 'files': {}, 'ran': False}

    def spindle_file_module_end(self, placeholder):
        if self._spindle_file is not None and self._spindle_file['tmp'] == placeholder:
            self._spindle_file = None

    def _engine_argv(self, *words):
        """``<engine> [extra args] WORDS...`` for this docker/podman host."""
        spec = self._spec()
        argv = [spec.executable or self._mode()]
        if spec.extra_args:
            argv += shlex.split(spec.extra_args)
        return argv + list(words)

    def _no_python(self, what):
        """Says (once per host, as a warning; every time at -vvv) that this container has no
        Python, so commands and files go by the engine's own commands, as the stock plugin."""
        spec = self._spec()
        host = self._play_context.remote_addr
        display.vvv(
            "SPINDLE no Python in the container: %s with `%s`" % (what, spec.executable or self._mode()),
            host=host,
        )
        reason = 'no Python on the target: raw commands and files by %s exec/cp' % self._mode()
        try:
            first = self._client().request('note', spec, path='stock', reason=reason).get('first')
        except SpindleError:
            first = False
        if first:
            display.warning(
                "spindle: %s: no Python interpreter in the container: commands run "
                "with `%s exec` and files go by `%s cp`, as with the stock plugin "
                "(raw works; modules fail until Python is installed)."
                % (spec.label or host, self._mode(), self._mode())
            )

    def _plain_exec(self, cmd, in_data):
        """A command in a container without Python (no agent can start there): ``<engine> exec
        [-i] [-u USER] NAME /bin/sh -c CMD``, as the docker plugin runs every command. (The
        stock podman plugin splits CMD into words without a shell; a shell gives raw the same
        meaning as over ssh.) Become commands arrive wrapped, as Ansible built them."""
        self._no_python('exec')
        spec = self._spec()
        words = ['exec']
        if in_data is not None:
            words.append('-i')
        if spec.user:
            words += ['-u', spec.user]
        cmd = to_text(cmd)
        if in_data is not None:
            # Read what the command left of stdin before exiting: `podman exec -i` (4.3)
            # drops the process's stderr about half the time when it exits while stdin is
            # still being fed (a module's interpreter that is not there, say).
            cmd = '(\n%s\n)\n__rc=$?; cat >/dev/null 2>&1; exit $__rc' % cmd
        argv = self._engine_argv(*words) + [spec.host, '/bin/sh', '-c', cmd]
        display.vvv("SPINDLE RUN %s" % (argv,), host=self._play_context.remote_addr)
        try:
            p = subprocess.run(
                [to_bytes(a, errors='surrogate_or_strict') for a in argv],
                input=in_data if in_data is not None else None,
                stdin=None if in_data is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except OSError as e:
            raise AnsibleConnectionFailure("spindle: %s: cannot run %s: %s" % (spec.host, argv[0], e))
        return p.returncode, p.stdout, p.stderr

    def _plain_copy(self, src, dest, what):
        """``<engine> cp SRC DEST`` for a container without Python."""
        self._no_python(what)
        argv = self._engine_argv('cp', src, dest)
        display.vvv("SPINDLE RUN %s" % (argv,), host=self._play_context.remote_addr)
        p = subprocess.run(
            [to_bytes(a, errors='surrogate_or_strict') for a in argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        if p.returncode != 0:
            raise AnsibleError(
                "spindle: %s of %s to %s failed: %s" % (what, src, dest, to_text(p.stderr).strip())
            )

    def spindle_run_async(self):
        """Whether async tasks may start in the agent (spindle_ansible.asyncrun asks)."""
        return True

    def _run_async(self, spec, cmd, in_data, sudoable, cwd):
        """An async task's module run, started as a detached job in the agent: the
        ``(rc, stdout, stderr)`` of its start (async_wrapper's reply); None for a command that
        runs no module (interpreter discovery...); :class:`AsyncStock` (nothing run) for a
        module the agent does not run."""
        job = self._spindle_async
        try:
            ran = run_async_in_agent(
                self._client(),
                spec,
                to_text(cmd),
                in_data,
                job,
                self.get_option('spindle_task_isolation'),
                cwd,
            )
        except StockPath as e:
            raise AsyncStock(str(e))
        if ran is None:
            reason = file_module_reason(to_text(cmd), in_data, sudoable)
            if reason:
                raise AsyncStock(reason)
            return None
        job['started'] = True
        self._spindle_async = None  # one module run per task
        return ran

    def _as_ssh_tty(self, rc, stdout, stderr):
        """``(rc, stdout, stderr)`` as the ssh plugin returns a command run with ``-tt``: one
        terminal carries both streams (CRLF line ends), and ssh's multiplexing master
        (the ssh plugin's default ControlMaster) reports on stderr that the session closed."""
        if stderr:  # a become command that failed before its terminal existed
            stdout = stdout + stderr.replace(b'\r\n', b'\n').replace(b'\n', b'\r\n')
        ssh_args = self.get_option('ssh_args')
        stderr = b''
        if not ssh_args or 'controlmaster' in ssh_args.lower():
            stderr = to_bytes('Shared connection to %s closed.\r\n' % self._play_context.remote_addr)
        return rc, stdout, stderr

    def spindle_inline_limit(self):
        """The largest file copy_fast sends inline in its call (see copyfast.VIA_INLINE)."""
        from spindle_ansible import copyfast

        return copyfast.VIA_INLINE if self._spec().via else copyfast.MAX_INLINE

    def spindle_copy_fast(self, copy_run, file_run, dest, follow, checksum, staged, data, source=None):
        """One ``copy_fast`` call: :func:`spindle_ansible.copyfast.agent_copy`."""
        from spindle_ansible import copyfast

        return copyfast.agent_copy(self, copy_run, file_run, dest, follow, checksum, staged, data, source)

    def _stock_path(self, spec, reason):
        """A module that runs on Ansible's stock command path (a new Python per task): said
        at -vvv for every task, and once per host and reason as a warning (the daemon, which
        every worker shares, counts it and answers whether it is the first)."""
        host = self._play_context.remote_addr
        display.vvv("SPINDLE stock path (not in the agent): %s" % reason, host=host)
        try:
            first = (
                self._client()
                .request(
                    'note', spec, path='stock', reason=reason, run=os.environ.get('SPINDLE_RUN_ID') or None
                )
                .get('first')
            )
        except SpindleError as e:
            display.vvv("spindle: could not count the stock path: %s" % (e,), host=host)
            first = False
        if first:
            display.warning(
                "spindle: %s: a module runs on Ansible's stock command path (a new "
                "Python per task), not in spindle's agent: %s. (Said once per host "
                "and reason; every such task at -vvv; counted in `spindle stats`.)"
                % (spec.label or host, reason)
            )

    def _timing(self, what, started, spec=None):
        """-vvv: how long spindle took for this step (daemon round trip included)."""
        where = ''
        if spec is not None and spec.become:
            where = ' as %s via %s' % (spec.become['user'], spec.become['method'])
        display.vvv(
            "SPINDLE %s%s: %.1f ms" % (what, where, (time.monotonic() - started) * 1000.0),
            host=self._play_context.remote_addr,
        )

    def put_file(self, in_path, out_path):
        super(Connection, self).put_file(in_path, out_path)
        pending = self._spindle_file
        if pending is not None and to_text(out_path).startswith(pending['tmp'] + '/'):
            return filemod.keep_file(self, pending, in_path, out_path)
        display.vvv("SPINDLE PUT %s TO %s" % (in_path, out_path), host=self._play_context.remote_addr)
        if not os.path.exists(to_bytes(in_path, errors='surrogate_or_strict')):
            raise AnsibleFileNotFound("file or module does not exist: %s" % to_text(in_path))
        # Like the ssh plugin's sftp: a new file gets the local file's permissions less the
        # target's umask (the local plugin's copyfile leaves the default mode).
        mode = None
        if self._mode() != 'local':
            mode = stat.S_IMODE(os.stat(to_bytes(in_path, errors='surrogate_or_strict')).st_mode) & 0o777
        started = time.monotonic()
        try:
            self._client().put(self._spec(), to_text(in_path), to_text(out_path), mode=mode, apply_umask=True)
            self._timing('put', started)
        except SpindleError as e:
            if e.kind == 'no_python' and self._mode() in PLAIN_EXEC_MODES:
                return self._plain_copy(
                    to_text(in_path), '%s:%s' % (self._spec().host, to_text(out_path)), 'put'
                )
            raise self._failure(e, 'transfer of %s to %s' % (in_path, out_path)) from None

    def fetch_file(self, in_path, out_path):
        super(Connection, self).fetch_file(in_path, out_path)
        display.vvv("SPINDLE FETCH %s TO %s" % (in_path, out_path), host=self._play_context.remote_addr)
        try:
            prior = stat.S_IMODE(os.stat(out_path).st_mode)
        except OSError:
            prior = None
        started = time.monotonic()
        try:
            res = self._client().fetch(self._spec(), to_text(in_path), to_text(out_path))
            self._timing('fetch', started)
        except SpindleError as e:
            if e.kind == 'no_python' and self._mode() in PLAIN_EXEC_MODES:
                return self._plain_copy(
                    '%s:%s' % (self._spec().host, to_text(in_path)), to_text(out_path), 'fetch'
                )
            raise self._failure(e, 'fetch of %s to %s' % (in_path, out_path)) from None
        # The daemon renames a fresh file into place; give it the mode the stock plugin
        # leaves: an existing file keeps its mode; a new one gets sftp's (remote mode plus
        # owner-write) or, for local (shutil.copyfile) and the chroot and nsenter plugins
        # (open()), 0666, less the umask. containers.podman.podman copies out of the
        # container's mounted root with shutil.copyfile where it can mount it (rootful podman
        # on this machine), else with `podman cp`, which keeps the remote mode as it is, as
        # community.docker.docker's `docker cp` does.
        if prior is None:
            remote = res.get('mode')
            mode_of = self._mode()
            if isinstance(remote, int) and (
                mode_of == 'docker' or (mode_of == 'podman' and not self._podman_mounts())
            ):
                mode = remote & 0o777
            elif mode_of in ('local', 'chroot', 'setns', 'podman') or not isinstance(remote, int):
                mode = 0o666 & ~_UMASK
            else:
                mode = ((remote & 0o777) | 0o200) & ~_UMASK
        else:
            mode = prior
        os.chmod(out_path, mode)

    def _podman_mounts(self):
        """Whether the stock podman plugin would fetch through ``podman mount`` (root, a local
        engine) rather than ``podman cp``: rootless podman cannot mount outside ``podman
        unshare``, and a remote engine's mount is not on this machine."""
        if os.geteuid() != 0:
            return False
        extra = self.get_option('spindle_container_extra_args') or ''
        words = shlex.split(to_text(extra)) if extra else []
        return not any(
            w in ('-r', '--remote') or w.startswith(('--url', '--connection', '-c=')) or w == '-c'
            for w in words
        )

    def reset(self):
        """Shut the daemon's stream to this target; the next task opens a new one."""
        try:
            self._client().close_target(self._spec())
        except SpindleError as e:
            display.vvv("spindle: reset: %s" % (e,), host=self._play_context.remote_addr)
        self._connected = False

    def close(self):
        # The daemon keeps the target's stream for the next task; nothing to do here.
        self._connected = False
