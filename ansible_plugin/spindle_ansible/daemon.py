"""The spindle daemon the Ansible plugin talks to: find the binary, attach to one that runs, or
start one.

Which daemon a run uses (``ensure_daemon``):

1. ``SPINDLE_SOCKET``, when the user set it: a daemon they run themselves (never stopped here).
2. Otherwise a **persistent** per-user daemon, like ssh's ControlPersist: it outlives the
   playbook by ``SPINDLE_PERSIST`` seconds (default 60) without an API client, so the next
   run attaches to live agents whose module code is cached.  It lives in a private directory
   ``$XDG_RUNTIME_DIR/spindle-<uid>/<key>/`` (``$TMPDIR`` or /tmp when there is no runtime
   directory; refused unless it is ours and mode 0700), where ``<key>`` hashes everything a
   daemon's behaviour depends on: the binary (path, inode, size, mtime), the ansible-core
   version, and the environment (minus volatile variables such as ``PWD``): ssh reads
   ``SSH_AUTH_SOCK``, and agents for ``local`` hosts inherit the daemon's environment.  A
   changed binary, ansible-core or environment therefore starts a fresh daemon (and the old
   one exits once idle); ``SPINDLE_PERSIST_IGNORE_ENV`` (comma-separated names) leaves out
   variables that change per run without mattering (a CI job id, a log path).  A changed inventory spec is a different stream anyway.  Two runs
   starting at once serialise on a lock file, so they share one daemon.  Its log is
   ``<dir>/daemon.log``, cut back to empty when a run finds it over 8 MiB.
3. A **private** daemon for this run, stopped when the controller exits (the behaviour before
   persistence), when ``SPINDLE_PERSIST=0`` or at ``-vvv`` and above, where the daemon must log
   at the run's verbosity to the run's stderr (said at -vvv).

``python -m spindle_ansible --stop`` stops this user's persistent daemons.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import hashlib
import json
import os
import shutil
import signal
import site
import socket
import stat
import struct
import subprocess
import sys
import sysconfig
import tempfile
import time

from ansible.errors import AnsibleError
from ansible.utils.display import Display

display = Display()

_START_TIMEOUT = 15.0
DEFAULT_PERSIST = 60
#: Longest idle time accepted from SPINDLE_PERSIST (one day).
MAX_PERSIST = 86400
LOG_LIMIT = 8 << 20
#: Environment variables that change between runs of one shell without changing what the
#: daemon does (they stay out of the daemon key).
VOLATILE_ENV = frozenset(
    (
        'PWD',
        'OLDPWD',
        '_',
        'SHLVL',
        'COLUMNS',
        'LINES',
        'TERM',
        'SSH_TTY',
        'WINDOWID',
        'SPINDLE_SOCKET',
        'SPINDLE_PATHS_FILE',
        'SPINDLE_PERSIST',
        'SPINDLE_RUN_ID',
        'SPINDLE_PERSIST_IGNORE_ENV',
    )
)


# -- the binary -------------------------------------------------------------------------------


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


# -- talking to a daemon without Client -------------------------------------------------------


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


def accepts(path):
    """Whether a daemon accepts connections on the socket ``path``."""
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


# -- where a persistent daemon lives ----------------------------------------------------------


def persist_seconds():
    """SPINDLE_PERSIST as whole seconds (default 60; 0: a private daemon per run)."""
    raw = os.environ.get('SPINDLE_PERSIST', '').strip()
    if not raw:
        return DEFAULT_PERSIST
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_PERSIST:
        raise AnsibleError(
            "spindle: SPINDLE_PERSIST=%r: must be whole seconds 0..%d (0: stop the "
            "daemon when the run ends)" % (raw, MAX_PERSIST)
        )
    return value


def runtime_base():
    """``$XDG_RUNTIME_DIR`` if it is a directory, else the temp directory."""
    base = os.environ.get('XDG_RUNTIME_DIR')
    if base and os.path.isdir(base):
        return base
    return tempfile.gettempdir()


def _private_dir(path):
    """Create ``path`` (mode 0700) if missing; refuse one that is not a real directory owned
    by us with no group/other access (a socket there could be someone else's)."""
    try:
        os.mkdir(path, 0o700)
    except OSError as e:
        if e.errno != errno.EEXIST:
            raise AnsibleError("spindle: cannot create %s: %s" % (path, e))
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise AnsibleError("spindle: %s is not a directory; remove it, or set SPINDLE_PERSIST=0" % path)
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise AnsibleError(
            "spindle: refusing %s: owned by uid %d with mode %04o (it must be "
            "yours, mode 0700); remove it, or set SPINDLE_PERSIST=0"
            % (path, st.st_uid, stat.S_IMODE(st.st_mode))
        )
    return path


def user_path():
    """Where this user's directory of persistent daemons is (made or not)."""
    return os.path.join(runtime_base(), 'spindle-%d' % os.getuid())


def user_dir():
    """This user's directory of persistent daemons."""
    return _private_dir(user_path())


def kept_dir():
    """Where spindle keeps what outlives a run besides the daemon (spindle_ansible.depcache):
    this user's directory of persistent daemons, when runs persist (SPINDLE_PERSIST > 0) and
    it exists (a run with a persistent daemon made it). Never created here: a run with a
    private daemon (SPINDLE_PERSIST=0, -vvv, SPINDLE_SOCKET) leaves nothing behind. None when
    there is none (the AnsibleError of a directory that is not private is raised)."""
    if persist_seconds() == 0:
        return None
    path = user_path()
    if not os.path.isdir(path):
        return None
    return _private_dir(path)


def daemon_key(binary, environ=None):
    """What a persistent daemon's behaviour depends on, hashed (see the module doc)."""
    import ansible

    environ = os.environ if environ is None else environ
    # Variables a user knows change per run without mattering (a CI job id, a log path).
    ignore = set(v.strip() for v in environ.get('SPINDLE_PERSIST_IGNORE_ENV', '').split(',') if v.strip())
    st = os.stat(binary)
    ident = {
        'binary': [os.path.realpath(binary), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns],
        'ansible': ansible.__version__ if hasattr(ansible, '__version__') else _core_version(),
        'python': sys.version,
        'env': sorted(
            (k, v)
            for k, v in environ.items()
            if k not in VOLATILE_ENV and k not in ignore and not k.startswith('ANSIBLE_')
        ),
    }
    raw = json.dumps(ident, sort_keys=True).encode('utf-8', 'surrogateescape')
    return hashlib.sha256(raw).hexdigest()[:20]


def _core_version():
    from ansible.release import __version__

    return __version__


# -- a daemon started here --------------------------------------------------------------------


class Daemon(object):
    """A ``spindle serve`` started by this controller process.

    ``persist`` > 0: in ``directory`` (a persistent daemon's), exiting by itself after that
    many idle seconds; else private to this run (a fresh temp directory, stopped at exit, and
    signalled by the kernel if the controller dies)."""

    def __init__(self, binary, persist=0, directory=None):
        self.persist = persist
        if persist:
            self.dir = directory
        else:
            self.dir = tempfile.mkdtemp(prefix='spindle-', dir=runtime_base())  # mode 0700
        self.socket = os.path.join(self.dir, 'sock')
        self.log_path = os.path.join(self.dir, 'daemon.log')
        self.owner = os.getpid()
        argv = [binary, 'serve', '--socket', self.socket]
        if persist:
            argv += ['--idle-exit', str(persist)]
        # A private daemon at -vvv: its log on our stderr at info (agent log lines,
        # failures); -vvvv debug (calls, streams); -vvvvv trace.
        inherit = not persist and display.verbosity >= 3
        if inherit:
            argv.append('-' + 'v' * min(display.verbosity - 2, 3))
        display.vvv("spindle: starting %s" % ' '.join(argv))
        log = None
        if not inherit:
            log = open(self.log_path, 'ab')  # O_APPEND: cutting it back (LOG_LIMIT) is safe
            log.truncate(0)
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                close_fds=True,
                start_new_session=True,  # no terminal signals (Ctrl-C)
                # a persistent daemon outlives us: no parent-death signal, and no cwd pinned
                cwd='/' if persist else None,
                preexec_fn=None if persist else _parent_death_signal(),
            )
        except OSError as e:
            if not persist:
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
                if not self.persist:
                    shutil.rmtree(self.dir, ignore_errors=True)
                raise AnsibleError(
                    "spindle: the daemon exited with status %s at start%s"
                    % (self.proc.returncode, (': ' + tail) if tail else '')
                )
            if os.path.exists(self.socket) and accepts(self.socket):
                return
            if time.monotonic() > deadline:
                self.stop(force=True)
                raise AnsibleError(
                    "spindle: the daemon did not accept connections on %s within %ss"
                    % (self.socket, _START_TIMEOUT)
                )
            time.sleep(0.01)

    def alive(self):
        return self.proc.poll() is None

    def stop(self, force=False):
        """The API's shutdown op, then wait; kill if it lingers.  Only in the owning process,
        and a persistent daemon only when ``force``d (it stops itself once idle)."""
        if os.getpid() != self.owner or (self.persist and not force):
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
        if not self.persist:
            shutil.rmtree(self.dir, ignore_errors=True)


def _cut_log(path):
    """Empty a persistent daemon's log once it passes LOG_LIMIT (it appends: safe to cut)."""
    try:
        if os.path.getsize(path) > LOG_LIMIT:
            with open(path, 'r+b') as f:
                f.truncate(0)
                f.write(b"spindle: log cut back at %d bytes by a run attaching\n" % LOG_LIMIT)
    except OSError:
        pass


class _Lock(object):
    """An exclusive flock on ``path`` (two runs starting at once share one daemon)."""

    def __init__(self, path):
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def __enter__(self):
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _is_dir(path):
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _prune(base, keep):
    """Remove the directories of this user's daemons that are gone (another binary or
    environment, now idle-exited), each under its own lock, skipping any in use; and their lock
    files once a day old. Keeps ``base`` from growing with every rebuilt binary."""
    try:
        names = os.listdir(base)
    except OSError:
        return
    for name in names:
        path = os.path.join(base, name)
        if name.endswith('.lock') or path == keep or not _is_dir(path):
            continue  # a lock, the daemon in use, or a file kept here (spindle_ansible.depcache)
        try:
            fd = os.open(path + '.lock', os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if not accepts(os.path.join(path, 'sock')):
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass  # in use: someone is starting it
        finally:
            os.close(fd)
    day_ago = time.time() - 86400
    for name in names:
        lock = os.path.join(base, name)
        if name.endswith('.lock') and not os.path.exists(lock[: -len('.lock')]):
            try:
                if os.stat(lock).st_mtime < day_ago:
                    os.unlink(lock)
            except OSError:
                pass


def attach_or_start(binary, persist):
    """(socket, Daemon or None): this user's persistent daemon for ``binary`` and this
    environment, started if none accepts connections."""
    base = user_dir()
    key = daemon_key(binary)
    directory = os.path.join(base, key)
    with _Lock(directory + '.lock'):
        _private_dir(directory)
        sock = os.path.join(directory, 'sock')
        if os.path.exists(sock) and accepts(sock):
            _cut_log(os.path.join(directory, 'daemon.log'))
            display.vv("spindle: attached to the running daemon on %s" % sock)
            return sock, None
        _prune(base, directory)
        daemon = Daemon(binary, persist, directory)
        display.vv(
            "spindle: started daemon pid %d on %s (it exits %ds after the last run; "
            "SPINDLE_PERSIST)" % (daemon.proc.pid, sock, persist)
        )
        return sock, daemon


def stop_all():
    """Stop this user's persistent daemons (``python -m spindle_ansible --stop``); the number
    stopped."""
    base = user_path()
    stopped = 0
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return 0
    for name in names:
        sock = os.path.join(base, name, 'sock')
        if os.path.exists(sock) and accepts(sock):
            try:
                request_shutdown(sock, 5.0)
                stopped += 1
            except (OSError, ValueError) as e:
                sys.stderr.write("spindle: %s: %s\n" % (sock, e))
    return stopped


# -- the run's daemon -------------------------------------------------------------------------

_daemon = None  # the Daemon this process started, if any
_exported = None  # the SPINDLE_SOCKET value this process exported
_at_exit = False  # _stop_at_exit registered


def _stop_at_exit():
    global _daemon, _exported
    daemon, _daemon = _daemon, None
    if daemon is not None and os.getpid() == daemon.owner:
        daemon.stop()
        if os.environ.get('SPINDLE_SOCKET') == _exported:
            os.environ.pop('SPINDLE_SOCKET', None)
        _exported = None


def run_id():
    """This playbook run's id (the daemon warns about a stock path once per run): set once in
    the controller process, inherited by the workers it forks."""
    rid = os.environ.get('SPINDLE_RUN_ID')
    if not rid:
        rid = '%d-%d' % (os.getpid(), int(time.time() * 1000))
        os.environ['SPINDLE_RUN_ID'] = rid
    return rid


def ensure_daemon():
    """The socket path of a running daemon: the user's (SPINDLE_SOCKET), else the persistent
    one, else a private one (module doc). Called in the controller before the workers fork:
    what they would each work out again is worked out here once, whichever daemon it is."""
    from spindle_ansible import compat, modexec

    sock = _daemon_socket()
    modexec.prime_core_hashes()  # warm mode compares module_utils with the installed ones
    modexec.prime_worker_imports()
    compat.prime()
    return sock


def _daemon_socket():
    global _daemon, _exported, _at_exit

    run_id()
    given = os.environ.get('SPINDLE_SOCKET')
    if given and given != _exported:
        if not accepts(given):
            raise AnsibleError(
                "spindle: SPINDLE_SOCKET=%s, but no spindle daemon accepts connections there" % given
            )
        return given
    if _exported is not None and accepts(_exported):
        return _exported
    if _exported is not None:
        display.warning(
            "spindle: the daemon on %s is gone%s; starting a new one"
            % (
                _exported,
                '' if _daemon is None or _daemon.alive() else ' (exit status %s)' % _daemon.proc.returncode,
            )
        )
        if _daemon is not None:
            _daemon.stop(force=True)
            _daemon = None
    persist = persist_seconds()
    if persist and display.verbosity >= 3:
        display.vvv(
            "spindle: -vvv: a private daemon for this run, logging here at this "
            "verbosity (the persistent one, SPINDLE_PERSIST, logs to its directory)"
        )
        persist = 0
    binary = find_binary()
    if persist:
        sock, started = attach_or_start(binary, persist)
        _daemon = started
    else:
        if not _at_exit:
            atexit.register(_stop_at_exit)
            _at_exit = True
        _daemon = Daemon(binary)
        sock = _daemon.socket
        display.vv("spindle: daemon pid %d on %s" % (_daemon.proc.pid, sock))
    _exported = sock
    os.environ['SPINDLE_SOCKET'] = sock
    return sock
