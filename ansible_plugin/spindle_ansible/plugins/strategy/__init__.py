"""What the spindle strategies share: the daemon's lifetime and the connection routing.

``SpindleStrategyMixin.run`` (mixed into Ansible's linear and free strategies):

* makes sure a spindle daemon runs: the one named by ``SPINDLE_SOCKET`` if the user set it,
  else one started here (binary: see ``find_binary``) on a private socket, exported as
  ``SPINDLE_SOCKET`` for the forked workers.  A daemon started here serves every play of
  the run (connections persist across plays) and is stopped when the controller process
  exits (``atexit``; the kernel also signals it if the controller dies);
* while the play runs, wraps the connection loader so that a request for the ``ssh``
  (also ``smart``), ``local``, ``docker`` or ``podman`` connection (also by their
  collection names) returns the ``spindle`` connection with that transport.  Other
  connections (paramiko, winrm, network ones, ...) are left to their own plugins.  The wrap is idempotent and undone
  when the play ends.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import site
import socket
import struct
import subprocess
import sys
import sysconfig
import tempfile
import time

from ansible.errors import AnsibleError
from ansible.plugins.loader import action_loader, connection_loader
from ansible.utils.display import Display

from spindle_ansible import modexec, paths
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

_START_TIMEOUT = 15.0


# -- the daemon ---------------------------------------------------------------------------

def install_dirs():
    """Where ``pip install spindle-ansible`` puts the ``spindle`` binary for the running Python.

    The wheel ships it as a script, so it lands in the scripts directory of the scheme it
    was installed with: ``sysconfig``'s for this Python (a venv's ``bin/``, next to
    ``ansible-playbook``), the user scheme's (``~/.local/bin``) if this package was
    installed with ``--user``; and, for interpreters whose scheme says otherwise, the
    directory of ``sys.executable``.  In that order, without duplicates.
    """
    dirs = [sysconfig.get_path('scripts')]
    try:
        user_site = site.getusersitepackages()
    except AttributeError:  # a site module without user sites (some embedders)
        user_site = None
    if user_site and os.path.abspath(__file__).startswith(os.path.join(user_site, '')):
        scheme = getattr(sysconfig, 'get_preferred_scheme', lambda _: 'posix_user')('user')
        dirs.append(sysconfig.get_path('scripts', scheme))
    dirs.append(os.path.dirname(sys.executable))
    out = []
    for d in dirs:
        if d and os.path.abspath(d) not in out:
            out.append(os.path.abspath(d))
    return out


def _executable(path):
    return os.path.isfile(path) and os.access(path, os.X_OK)


def find_binary():
    """The spindle binary to run, or an AnsibleError listing every place it looked.

    1. ``SPINDLE_BIN`` if set (and then only there: a wrong path is an error, not a fallback);
    2. ``spindle`` in ``install_dirs()``: where the spindle-ansible wheel installed it;
    3. ``spindle`` on ``PATH``.
    """
    env = os.environ.get('SPINDLE_BIN')
    if env:
        if _executable(env):
            return env
        raise AnsibleError("spindle: SPINDLE_BIN=%s is not an executable file" % env)
    tried = ['SPINDLE_BIN (not set)']
    for d in install_dirs():
        candidate = os.path.join(d, 'spindle')
        if _executable(candidate):
            return candidate
        tried.append(candidate)
    found = shutil.which('spindle')
    if found:
        return found
    tried.append('spindle on PATH (%s)' % os.environ.get('PATH', os.defpath))
    raise AnsibleError(
        "spindle: cannot find the spindle daemon binary; tried: %s. Install the spindle-ansible "
        "wheel (it ships the binary) into the environment of the Python running Ansible (%s), "
        "or set SPINDLE_BIN to the binary's path, or start `spindle serve --socket PATH` "
        "yourself and set SPINDLE_SOCKET" % (', '.join(tried), sys.executable)
    )


def _parent_death_signal():
    """A preexec_fn asking Linux to SIGTERM the daemon when the controller dies, or None."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError, ImportError):
        return None
    pr_set_pdeathsig = 1

    def preexec():
        prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)

    return preexec


def _accepts(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(1.0)
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def request_shutdown(path, timeout):
    """Send the API's ``shutdown`` op and wait for its reply, without ``Client``.

    ``Client`` reads replies on a thread, and Python 3.12+ refuses to start threads in
    ``atexit`` callbacks, where this runs; so this is one blocking framed request
    (docs/api.md: 4-byte big-endian length, then a JSON object).
    """
    body = json.dumps({'id': 1, 'op': 'shutdown'}).encode('ascii')
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(struct.pack('>I', len(body)) + body)
        buf = b''
        while len(buf) < 4 or len(buf) < 4 + struct.unpack('>I', buf[:4])[0]:
            chunk = s.recv(65536)
            if not chunk:
                raise ValueError('the daemon closed the connection before replying')
            buf += chunk
        reply = json.loads(buf[4:].decode('utf-8'))
        if not reply.get('ok'):
            raise ValueError('shutdown refused: %r' % (reply.get('error'),))
    finally:
        s.close()


class Daemon(object):
    """A ``spindle serve`` child of this controller process, on a private socket."""

    def __init__(self):
        binary = find_binary()
        base = os.environ.get('XDG_RUNTIME_DIR') or tempfile.gettempdir()
        if not os.path.isdir(base):
            base = tempfile.gettempdir()
        self.dir = tempfile.mkdtemp(prefix='spindle-', dir=base)  # mode 0700
        self.socket = os.path.join(self.dir, 'sock')
        self.log_path = os.path.join(self.dir, 'daemon.log')
        self.owner = os.getpid()
        argv = [binary, 'serve', '--socket', self.socket]
        # -vvv: the daemon's log on our stderr at info (agent log lines, failures);
        # -vvvv debug (calls, streams); -vvvvv trace.
        inherit = display.verbosity >= 3
        if display.verbosity >= 3:
            argv.append('-' + 'v' * min(display.verbosity - 2, 3))
        display.vvv("spindle: starting %s" % ' '.join(argv))
        log = None if inherit else open(self.log_path, 'wb')
        try:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                close_fds=True, start_new_session=True,  # no terminal signals (Ctrl-C)
                preexec_fn=_parent_death_signal(),
            )
        except OSError as e:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise AnsibleError("spindle: cannot start %s: %s" % (binary, e))
        finally:
            if log is not None:
                log.close()
        self._wait_ready()

    def _log_tail(self):
        try:
            with open(self.log_path, 'rb') as f:
                return f.read()[-2000:].decode('utf-8', 'replace').strip()
        except OSError:
            return ''

    def _wait_ready(self):
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                tail = self._log_tail()
                shutil.rmtree(self.dir, ignore_errors=True)
                raise AnsibleError("spindle: the daemon exited with status %s at start%s"
                                   % (self.proc.returncode, (': ' + tail) if tail else ''))
            if os.path.exists(self.socket) and _accepts(self.socket):
                return
            if time.monotonic() > deadline:
                self.stop()
                raise AnsibleError("spindle: the daemon did not accept connections on %s within %ss"
                                   % (self.socket, _START_TIMEOUT))
            time.sleep(0.01)

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        """The API's shutdown op, then wait; kill if it lingers.  Only in the owning process."""
        if os.getpid() != self.owner:
            return
        if self.proc.poll() is None:
            try:
                request_shutdown(self.socket, 5.0)
            except (OSError, ValueError) as e:
                display.vvv("spindle: shutdown request failed: %s" % (e,))
            try:
                self.proc.wait(5.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


_daemon = None  # the Daemon this process started, if any
_exported = None  # the SPINDLE_SOCKET value this process exported


def _stop_at_exit():
    global _daemon, _exported
    daemon, _daemon = _daemon, None
    if daemon is not None and os.getpid() == daemon.owner:
        daemon.stop()
        if os.environ.get('SPINDLE_SOCKET') == _exported:
            os.environ.pop('SPINDLE_SOCKET', None)
        _exported = None


def ensure_daemon():
    """The socket path of a running daemon, starting one if the user did not give one."""
    global _daemon, _exported
    given = os.environ.get('SPINDLE_SOCKET')
    if given and given != _exported:
        if not _accepts(given):
            raise AnsibleError("spindle: SPINDLE_SOCKET=%s, but no spindle daemon accepts "
                               "connections there" % given)
        return given
    if _daemon is not None and _daemon.owner == os.getpid() and _daemon.alive():
        return _daemon.socket
    if _daemon is not None:
        display.warning("spindle: the daemon exited (status %s); starting a new one"
                        % _daemon.proc.returncode)
        _daemon.stop()
    else:
        atexit.register(_stop_at_exit)
    _daemon = Daemon()
    modexec.prime_core_hashes()  # before the workers fork (warm mode compares module_utils)
    _exported = _daemon.socket
    os.environ['SPINDLE_SOCKET'] = _daemon.socket
    display.vv("spindle: daemon pid %d on %s" % (_daemon.proc.pid, _daemon.socket))
    return _daemon.socket


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
    from spindle_ansible.copyfast import route_action

    def get(name, *args, **kwargs):
        obj = action_get(name, *args, **kwargs)
        if kwargs.get('class_only'):
            return obj
        return route_action(name, obj, kwargs.get('connection'))

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
