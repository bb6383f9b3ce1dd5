"""spindle target-side agent: speaks the framed protocol of docs/protocol.md on its stdin/stdout.

It is exec()'d from RAM by stage 1 (nothing is written on the target), answers CALLs
(ops: ping, exec, put_file, fetch_file, run_module, copy_fast, copy_stream, cache_put,
cache_drop, relay_put, store_blobs, blob_list, spawn_context, close_context, cancel,
log_level, shutdown) and exits when its input closes,
killing the process groups of the commands it still runs. Standard library only,
Python 3.8 and later.
"""

import sys

# Stage 1 leaves the compressed agent in the global `b`: kept to start nested agents.
_BOOT_BLOB = globals().get("b") if isinstance(globals().get("b"), bytes) else None
sys.dont_write_bytecode = True

import base64, collections, grp, hashlib, json, logging, os, platform, pwd, signal, socket  # noqa: E401
import stat, struct, subprocess, tempfile, threading, time, traceback, types, zlib  # noqa: E401

# --- wire constants: generated from src/proto (proto::python); do not edit ---
PROTO = 1
MAGIC = b"SP"
HEADER = struct.Struct(">2sBBIIIII")  # magic kind flags len dst src handle reply_to
HEADER_LEN = 24
MAX_PAYLOAD = 4194304
HELLO, CALL, REPLY, DATA, LOG, CREDIT = 1, 2, 3, 4, 5, 6
MORE, ERROR, EOF, ABORT, REFS, SIZE = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
CONTROLLER, SELF = 0, 1
# --- end of wire constants ---
READ_CHUNK = 1024 * 1024
FETCH_CHUNK = 256 * 1024
# An exec keeps at most this much of its command's stdout + stderr together (then the command
# is killed and the reply says output_truncated): base64 makes it 4/3 larger, and the daemon
# refuses replies over 64 MiB.
OUTPUT_MAX = 44 * 1024 * 1024
# A regular file whose size reads 0 (a /proc or /sys pseudo-file) is fetched to its end, but
# at most this much: past it the fetch fails (pagemap-like files have no useful end).
PSEUDO_FILE_MAX = 16 * 1024 * 1024
LEVELS = {
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
    "CRITICAL": logging.CRITICAL,
}

log = logging.getLogger("spindle.agent")


def dumps(obj):
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


class FrameError(Exception):
    """The input stream cannot be trusted any more (fatal)."""


class AgentError(Exception):
    """A call failed with one of the protocol's error kinds."""

    def __init__(self, kind, message):
        Exception.__init__(self, message)
        self.kind = kind
        self.message = message


def os_error(exc):
    """Map an OSError to an AgentError with the protocol's error kind."""
    if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
        return AgentError("not_found", str(exc))
    return AgentError("permission" if isinstance(exc, PermissionError) else "io", str(exc))


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class Channel(object):
    """Private frame fds: buffered reads on `rfd`, whole-frame locked writes on `wfd`."""

    def __init__(self, rfd, wfd):
        self.rfd, self.wfd = rfd, wfd
        self.buf, self.pos = bytearray(), 0  # unconsumed input is buf[pos:]
        self.lock = threading.Lock()

    def _read_exact(self, n):
        """Return exactly n bytes (bytearray), or None at end of input."""
        while len(self.buf) - self.pos < n:
            chunk = os.read(self.rfd, max(READ_CHUNK, n - (len(self.buf) - self.pos)))
            if not chunk:
                return None
            if self.pos:  # drop consumed bytes once per read, not once per frame
                del self.buf[: self.pos]
                self.pos = 0
            self.buf += chunk
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def read_frame(self):
        """Return (kind, flags, handle, reply_to, payload, dst, src), or None at end of input."""
        head = self._read_exact(HEADER.size)
        if head is None:
            return None
        magic, kind, flags, length, dst, src, handle, reply_to = HEADER.unpack(bytes(head))
        if magic != MAGIC:
            raise FrameError("bad magic %r" % (magic,))
        if kind not in (HELLO, CALL, REPLY, DATA, LOG, CREDIT):
            raise FrameError("unknown frame kind %d" % kind)
        if length > MAX_PAYLOAD:
            raise FrameError("payload length %d exceeds %d" % (length, MAX_PAYLOAD))
        payload = self._read_exact(length) if length else bytearray()
        if payload is None:
            return None  # truncated frame: the connection closed
        return kind, flags, handle, reply_to, payload, dst, src

    def send(self, kind, flags, handle, reply_to, payload=b"", src=SELF):
        """Write one frame to the controller; `src` names a nested context when relaying."""
        head = HEADER.pack(MAGIC, kind, flags, len(payload), CONTROLLER, src, handle, reply_to)
        try:
            with self.lock:
                if len(payload) <= 65536:
                    write_all(self.wfd, head + payload)
                else:  # large payload: no concatenation copy
                    write_all(self.wfd, head)
                    write_all(self.wfd, payload)
        except OSError:
            die(1, "spindle agent: output closed")

    def reply(self, call_id, obj, error=False):
        """Send a REPLY, split in MORE-flagged frames when larger than MAX_PAYLOAD."""
        base, view = ERROR if error else 0, memoryview(dumps(obj))
        while len(view) > MAX_PAYLOAD:
            self.send(REPLY, base | MORE, call_id, call_id, view[:MAX_PAYLOAD])
            view = view[MAX_PAYLOAD:]
        self.send(REPLY, base, call_id, call_id, view)

    def reply_error(self, call_id, kind, message):
        self.reply(call_id, {"error": kind, "message": message}, error=True)


class LogHandler(logging.Handler):
    """Forward log records as LOG frames; the root logger's level is the filter."""

    def __init__(self, chan):
        logging.Handler.__init__(self)
        self.chan = chan
        self.local = threading.local()

    def emit(self, record):
        if getattr(self.local, "busy", False):
            return  # a record logged while sending a record: drop it, no recursion
        self.local.busy = True
        try:
            msg = {"level": record.levelname, "name": record.name, "msg": self.format(record)}
            self.chan.send(LOG, 0, 0, 0, dumps(msg))
        except Exception:
            pass
        finally:
            self.local.busy = False


# ---- child processes ---------------------------------------------------------------

procs = set()
procs_lock = threading.Lock()


def kill_children():
    with procs_lock:
        for p in list(procs):
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass


def die(code, message=None):
    """Kill the process groups of running commands and exit at once."""
    try:
        if message:
            os.write(2, (message + "\n").encode("utf-8", "replace"))
    except OSError:
        pass
    kill_children()
    os._exit(code)


UMASK = 0o022  # read in main() while single-threaded: os.umask can only set-and-restore


class Running(object):
    """A threaded call in flight. `cancel` (op cancel, from the controller) marks it: a
    command it runs is killed with its process group, a fetch stops sending, and its reply
    is discarded (the controller has forgotten the call)."""

    def __init__(self):
        self.cancelled = False
        self.proc = None
        self.lock = threading.Lock()

    def attach(self, p):
        """The call's command; killed at once if the call was cancelled before it started."""
        with self.lock:
            self.proc = p
            cancelled = self.cancelled
        if cancelled:
            _killpg(p)

    def cancel(self):
        with self.lock:
            self.cancelled = True
            p = self.proc
        if p is not None:
            _killpg(p)


RUNNING = {}  # call id -> Running, for the threaded calls in flight
RUNNING_LOCK = threading.Lock()


def running(call_id):
    """The Running record of call `call_id` (a fresh one when it has none: called directly)."""
    with RUNNING_LOCK:
        r = RUNNING.get(call_id)
    return r if r is not None else Running()


def _killpg(p):
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except OSError:
        pass


# ---- operations ---------------------------------------------------------------------


def op_ping(chan, call_id, call):
    return {"pong": True, "pid": os.getpid()}


MAX_TIMEOUT = 7 * 24 * 3600  # seconds: the longest timeout a call may give (one week)


def seconds(call, key, default=None):
    """call[key] as a number of seconds in (0, MAX_TIMEOUT], or bad_request naming it."""
    value = call.get(key, default)
    if value is None:
        return None
    if (
        isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_TIMEOUT
    ):  # NaN fails both comparisons
        raise AgentError(
            "bad_request", "%s must be a number of seconds > 0 and <= %d, not %r" % (key, MAX_TIMEOUT, value)
        )
    return value


def c_string(what, value):
    """A string bound for argv, the environment or a path: no NUL byte."""
    if "\0" in value:
        raise AgentError("bad_request", "%s must not contain a NUL byte" % what)
    return value


def op_exec(chan, call_id, call):
    argv, shell = call.get("argv"), call.get("shell")
    if shell is not None:
        if argv is not None or not isinstance(shell, str):
            raise AgentError("bad_request", "give either argv (list) or shell (string)")
        args, use_shell = c_string("shell", shell), True
    elif isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv):
        args, use_shell = [c_string("argv", a) for a in argv], False
    else:
        raise AgentError("bad_request", "argv must be a non-empty list of strings")
    extra = call.get("env") or {}
    if not isinstance(extra, dict) or not all(isinstance(v, str) for v in extra.values()):
        raise AgentError("bad_request", "env must be an object of strings")
    for k, v in extra.items():
        if not k or "=" in k:
            raise AgentError("bad_request", "env names a variable %r (empty or with '=')" % k)
        c_string("env", k + v)
    env = dict(os.environ)
    env.update(extra)
    stdin_b64 = call.get("stdin_b64")
    try:
        data = base64.b64decode(stdin_b64) if stdin_b64 is not None else None
    except (TypeError, ValueError) as exc:
        raise AgentError("bad_request", "stdin_b64: %s" % exc)
    timeout, cwd = seconds(call, "timeout"), call.get("cwd")
    if cwd is not None and not isinstance(cwd, str):
        raise AgentError("bad_request", "cwd must be a string")
    if cwd is not None:
        c_string("cwd", cwd)
    executable = "/bin/sh"
    if use_shell and call.get("login_shell"):
        executable = _login_shell()
    if call.get("tty"):
        if data is not None:
            raise AgentError("bad_request", "tty: a command on a terminal takes no stdin_b64")
        return _exec_tty(args, use_shell, executable, env, cwd, timeout, running(call_id))
    try:
        p = subprocess.Popen(
            args,
            shell=use_shell,
            executable=executable if use_shell else None,
            stdin=subprocess.PIPE if data is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as exc:
        # No such command or bad cwd (Python reports a failed chdir in the child with the
        # same exception types): 127 like a shell's "not found"; anything else (EACCES,
        # ENOEXEC, ...): 126 like a shell's "cannot execute". The reason goes on stderr.
        rc = 127 if isinstance(exc, (FileNotFoundError, NotADirectoryError)) else 126
        err = ("spindle: %s\n" % exc).encode("utf-8", "replace")
        return {
            "rc": rc,
            "stdout_b64": "",
            "timed_out": False,
            "stderr_b64": base64.b64encode(err).decode("ascii"),
        }
    with procs_lock:
        procs.add(p)
    run = running(call_id)
    run.attach(p)
    try:
        out, err, timed_out, truncated = _collect(p, data, timeout, run)
        rc = -9 if timed_out else p.wait()  # killed, or _collect saw it exit
    finally:
        with procs_lock:
            procs.discard(p)
    res = {
        "rc": rc,
        "stdout_b64": base64.b64encode(out).decode("ascii"),
        "stderr_b64": base64.b64encode(err).decode("ascii"),
        "timed_out": timed_out,
    }
    if truncated:
        res["output_truncated"] = True
    return res


def _collect(p, data, timeout, run):
    """Feed `data` to a command's stdin and read its stdout and stderr until both close,
    keeping at most OUTPUT_MAX bytes of the two together: past that the command's process
    group is killed and reading stops (`truncated`, with a note on stderr). At `timeout` the
    group is killed and what it wrote is still read for 5 s (a child in another session may
    hold a pipe open). A cancelled call is killed and read no further.
    Returns (stdout, stderr, timed_out, truncated); the command has exited or been killed."""
    import selectors

    if data is not None:

        def feed():
            try:
                p.stdin.write(data)
            except (OSError, ValueError):  # the command exited or was killed first
                pass
            try:
                p.stdin.close()
            except (OSError, ValueError):
                pass

        t = threading.Thread(target=feed, name="exec-stdin-%d" % p.pid)
        t.daemon = True
        t.start()
    ofd, efd = p.stdout.fileno(), p.stderr.fileno()
    bufs = {ofd: bytearray(), efd: bytearray()}
    sel = selectors.DefaultSelector()
    for fd in bufs:
        sel.register(fd, selectors.EVENT_READ)
    start = time.monotonic()
    deadline = None if timeout is None else start + timeout
    timed_out = truncated = False
    killed_at, total, lost = None, 0, False
    try:
        while sel.get_map() and not run.cancelled:
            now = time.monotonic()
            if killed_at is None and deadline is not None and now >= deadline:
                timed_out, killed_at = True, now
                _killpg(p)
            if killed_at is not None and now >= killed_at + 5:
                lost = True
                break
            wait = 0.5  # how soon a cancel is seen when the command's pipes stay open
            if killed_at is None and deadline is not None:
                wait = min(wait, deadline - now)
            for key, _ in sel.select(max(0.0, wait)):
                try:
                    chunk = os.read(key.fd, 65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    sel.unregister(key.fd)
                    continue
                room = OUTPUT_MAX - total
                if len(chunk) > room:
                    chunk, truncated = chunk[:room], True
                bufs[key.fd] += chunk
                total += len(chunk)
                if truncated:
                    break
            if truncated:
                _killpg(p)
                break
    finally:
        sel.close()
        p.stdout.close()
        p.stderr.close()
    while not (run.cancelled or truncated or timed_out):  # pipes closed: wait for its exit
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            timed_out = True
            _killpg(p)
            break
        try:
            p.wait(timeout=0.5 if deadline is None else max(0.0, min(0.5, deadline - now)))
            break
        except subprocess.TimeoutExpired:
            pass
    if run.cancelled:
        _killpg(p)
    out, err = bufs[ofd], bufs[efd]
    if lost:
        err += b"spindle: the rest of the output lost after the timeout kill\n"
    if truncated:
        err += (
            b"spindle: output truncated at %d MiB (stdout and stderr together); "
            b"the command was killed\n" % (OUTPUT_MAX >> 20)
        )
    return out, err, timed_out, truncated


def _login_shell():
    """The login shell of the user this agent runs as (what sshd runs a command with)."""
    try:
        shell = pwd.getpwuid(os.getuid()).pw_shell
    except KeyError:
        shell = None
    return shell if shell and os.path.isabs(shell) and os.access(shell, os.X_OK) else "/bin/sh"


def _exec_tty(args, use_shell, executable, env, cwd, timeout, run):
    """Run a command on a new pseudo-terminal, as sshd does for `ssh -tt`: stdin, stdout and
    stderr are the terminal, so its output (stderr included) comes back as stdout with the
    terminal's line ends. Done when the command exits and its terminal falls silent (a
    daemon it started may keep the terminal open, as under sshd). Output is kept up to
    OUTPUT_MAX bytes, as for a command on pipes (then killed, `output_truncated`)."""
    import fcntl, pty, select, termios  # noqa: E401

    master, slave = pty.openpty()

    def controlling_tty():  # runs in the child after setsid and the dup2s
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    try:
        p = subprocess.Popen(
            args,
            shell=use_shell,
            executable=executable if use_shell else None,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
            preexec_fn=controlling_tty,
        )
    except OSError as exc:
        os.close(master)
        os.close(slave)
        rc = 127 if isinstance(exc, (FileNotFoundError, NotADirectoryError)) else 126
        err = ("spindle: %s\r\n" % exc).encode("utf-8", "replace")
        return {
            "rc": rc,
            "stdout_b64": base64.b64encode(err).decode("ascii"),
            "stderr_b64": "",
            "timed_out": False,
        }
    os.close(slave)
    with procs_lock:
        procs.add(p)
    run.attach(p)
    out, timed_out, drained_by, truncated = bytearray(), False, None, False
    deadline = None if timeout is None else time.monotonic() + max(0.0, float(timeout))
    try:
        while not run.cancelled:
            exited = p.poll() is not None
            if exited and drained_by is None:
                drained_by = time.monotonic() + 2.0  # what it wrote before it exited
            if exited and time.monotonic() > drained_by:
                break
            wait = 0.05 if exited else 0.5
            if deadline is not None and not exited:
                left = deadline - time.monotonic()
                if left <= 0:
                    timed_out = True
                    try:
                        os.killpg(p.pid, signal.SIGKILL)
                    except OSError:
                        pass
                    p.wait()
                    continue
                wait = min(wait, left)
            ready, _, _ = select.select([master], [], [], wait)
            if not ready:
                if exited:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every holder of the terminal closed it
                chunk = b""
            if not chunk:
                if exited or p.wait() is not None:
                    break
            if len(chunk) > OUTPUT_MAX - len(out):
                chunk, truncated = chunk[: OUTPUT_MAX - len(out)], True
            out += chunk
            if truncated:
                _killpg(p)
                out += b"\r\nspindle: output truncated at %d MiB; the command was killed\r\n" % (
                    OUTPUT_MAX >> 20
                )
                break
        if run.cancelled:
            _killpg(p)
        rc = -9 if timed_out else p.wait()
    finally:
        os.close(master)
        with procs_lock:
            procs.discard(p)
    res = {
        "rc": rc,
        "stdout_b64": base64.b64encode(bytes(out)).decode("ascii"),
        "stderr_b64": "",
        "timed_out": timed_out,
    }
    if truncated:
        res["output_truncated"] = True
    return res


def op_fetch_file(chan, call_id, call):
    """Send a regular file as DATA frames: first a SIZE frame with the size fstat reported at
    open, then at most that many bytes (a file growing while it is read is cut at that size,
    the snapshot sftp would read; one shrinking ends early, and the reply says what was sent).
    A regular file reporting size 0 (a /proc or /sys pseudo-file) is read to its end, up to
    PSEUDO_FILE_MAX. Anything else (a device, a FIFO, a socket, a directory) is refused
    before it is opened: /dev/zero has no end. A cancel stops the sending."""
    path = call.get("path")
    if not isinstance(path, str) or not path:
        raise AgentError("bad_request", "path must be a non-empty string")
    c_string("path", path)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise os_error(exc)
    if stat.S_ISDIR(st.st_mode):
        raise AgentError("io", "%s: is a directory" % path)
    if not stat.S_ISREG(st.st_mode):
        raise AgentError("io", "%s: not a regular file (fetch reads regular files only)" % path)
    try:  # O_NONBLOCK: if a FIFO took its place since the stat, opening it does not hang
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise os_error(exc)
    run = running(call_id)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise AgentError("io", "%s: not a regular file (fetch reads regular files only)" % path)
        pseudo = st.st_size == 0
        limit = PSEUDO_FILE_MAX if pseudo else st.st_size
        chan.send(DATA, SIZE, call_id, 0, struct.pack(">Q", limit))
        digest, size = hashlib.sha256(), 0
        try:
            cur = os.read(fd, min(FETCH_CHUNK, limit))
            while not run.cancelled:  # one chunk ahead so that the last DATA frame has EOF
                left = limit - size - len(cur)
                nxt = os.read(fd, min(FETCH_CHUNK, left)) if cur and left > 0 else b""
                if pseudo and not nxt and cur and left <= 0 and os.read(fd, 1):
                    chan.send(DATA, EOF, call_id, 0, b"")
                    raise AgentError(
                        "io",
                        "%s: reports size 0 but is longer than %d MiB "
                        "(a pseudo-file); not fetched" % (path, PSEUDO_FILE_MAX >> 20),
                    )
                digest.update(cur)
                size += len(cur)
                chan.send(DATA, 0 if nxt else EOF, call_id, 0, cur)
                if not nxt:
                    break
                cur = nxt
        except OSError as exc:
            chan.send(DATA, EOF, call_id, 0, b"")  # close the transfer, then the ERROR reply
            raise os_error(exc)
    finally:
        os.close(fd)
    return {"size": size, "sha256": digest.hexdigest(), "mode": stat.S_IMODE(st.st_mode)}


def _owner_id(value, db, what):
    """Name or number of a user/group to an id; -1 (unchanged) for null."""
    if value is None or isinstance(value, int):
        return -1 if value is None else value
    try:
        return int(value) if value.isdigit() else db(value)[2]
    except (KeyError, TypeError, AttributeError):
        raise AgentError("bad_request", "unknown %s %r" % (what, value))


class Put(object):
    """One put_file transfer, driven by the frame-reading thread."""

    def __init__(self, call):
        self.fd, self.tmp, self.error = None, None, None
        self.digest, self.received = hashlib.sha256(), 0
        try:
            self.path = call.get("path")
            if not isinstance(self.path, str) or not self.path:
                raise AgentError("bad_request", "path must be a non-empty string")
            self.size, mode = call.get("size"), call.get("mode")
            if self.size is not None and (not isinstance(self.size, int) or self.size < 0):
                raise AgentError("bad_request", "size must be a non-negative integer")
            if mode is not None and (not isinstance(mode, int) or not 0 <= mode <= 0o7777):
                raise AgentError("bad_request", "mode must be an integer permission value")
            self.mode = (0o666 & ~UMASK) if mode is None else mode
            if mode is not None and call.get("apply_umask"):
                self.mode = mode & ~UMASK
            self.uid = _owner_id(call.get("owner"), pwd.getpwnam, "user")
            self.gid = _owner_id(call.get("group"), grp.getgrnam, "group")
            base = os.path.basename(self.path)
            try:
                self.fd, self.tmp = tempfile.mkstemp(
                    dir=os.path.dirname(self.path) or ".", prefix="." + base + ".spindle-"
                )
            except OSError as exc:
                raise os_error(exc)
        except AgentError as exc:
            self.fail(exc)

    def fail(self, exc):
        if self.error is None:
            self.error = exc
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.tmp is not None:
            try:
                os.unlink(self.tmp)
            except OSError:
                pass
            self.tmp = None

    def write(self, payload):
        if self.error is not None:
            return  # discard until EOF or ABORT
        self.received += len(payload)
        if self.size is not None and self.received > self.size:
            return self.fail(AgentError("io", "more data than the declared size %d" % self.size))
        self.digest.update(payload)
        try:
            write_all(self.fd, payload)
        except OSError as exc:
            self.fail(os_error(exc))

    def finish(self):
        """Called at EOF: apply owner and mode, fsync, rename; return the reply."""
        if self.error is None and self.size is not None and self.received != self.size:
            self.fail(AgentError("io", "received %d bytes, declared size %d" % (self.received, self.size)))
        if self.error is not None:
            raise self.error
        try:
            if self.uid != -1 or self.gid != -1:
                os.fchown(self.fd, self.uid, self.gid)
            os.fchmod(self.fd, self.mode)  # after chown, which may clear set-id bits
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = None
            os.replace(self.tmp, self.path)
            self.tmp = None
        except OSError as exc:
            self.fail(os_error(exc))
            raise self.error
        return {"path": self.path, "size": self.received, "sha256": self.digest.hexdigest()}


# ---- dispatch -----------------------------------------------------------------------

# Code blobs (module and module_utils sources) by sha256 hex, kept for the agent's life,
# and as they came (base64 of zlib) when packed, to pass on to nested contexts as they are.
BLOBS = {}
PACKED = {}

# ---- nested contexts (become) ------------------------------------------------------------
# A context is a second agent started through a privilege-escalation command (sudo, su, doas,
# ... as Ansible's become plugin built it on the controller). Its frames travel over this
# agent's stream: the controller addresses it by `dst`, and this agent relays its output with
# `src` set to the context id. Passwords are typed here, on the stdin pipe when the prompt
# came on stderr (sudo -S) or on the child's controlling pty when it came there (su, doas).

CONTEXTS = {}
CONTEXTS_LOCK = threading.Lock()
# Deeper contexts (a via hop's children, their become contexts, ...): context id -> the id of
# the direct child they were seen behind. Context ids are unique per root stream (the
# controller allocates them), so a hop learns a route from the first frame that comes up
# with that `src` and forwards frames for it unchanged. The first claim wins: a subtree cannot
# take over a route another child already holds.
ROUTES = {}
BOOT_PLACEHOLDER = "__SPINDLE_BOOT__"
# Stage 1 for a nested agent: no quote, dollar, backquote or backslash, so it survives any
# depth of the become plugins' shell quoting; `b` stays a global for the next level.
CHILD_STAGE1 = (
    "import os,zlib\nn=%d;b=bytes()\nwhile len(b)<n:\n c=os.read(0,n-len(b))\n"
    " if not c:raise SystemExit(1)\n b+=c\nexec(zlib.decompress(b))\n"
)
SAFE_PATH = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./+-")
TAIL = 4096
FOR_CHILD, FOR_BEHIND, OWN = 0, 1, 2  # where a frame queued for a context comes from
CREDIT_EVERY = 256 * 1024  # controller bytes written to a context before a CREDIT goes up
RELAY_QUEUE = 1024 * 1024  # relay_put bytes queued per context before the relay waits


def _read_some(fd):
    """Up to 64 KiB from fd; b"" at end of input or on error (EIO: a pty's other side closed)."""
    try:
        return os.read(fd, 65536)
    except OSError:
        return b""


def _reap(pid, grace):
    """The exit status of child `pid`, given `grace` seconds to exit on its own, then SIGKILL
    (it may run as another user: closing its pipes and pty usually ends it first); None when
    it had to be killed."""
    deadline = time.monotonic() + grace
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except OSError:
            return None
        if done:
            if os.WIFEXITED(status):
                return os.WEXITSTATUS(status)
            return None
        if time.monotonic() >= deadline:
            break
        time.sleep(0.01)
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except OSError:
        pass
    return None


def _tail(data):
    return data[-TAIL:].decode("utf-8", "replace")


class Context(object):
    """A running nested agent: a writer thread feeding its stdin from a queue (frames in),
    a relay thread for its output and a drainer for its stderr.

    The reading thread only queues frames for it, so a child that reads slowly (a throttled
    link behind a via hop, a stuck become context) never blocks the frames of its siblings.
    What the controller may queue here is bounded by the controller: it keeps at most a
    window of bytes in flight per context and sends more as this agent reports them written
    (CREDIT frames, docs/protocol.md); frames for contexts further down are bounded by their
    own windows. A relay_put (this agent's own data) waits while RELAY_QUEUE bytes of it are
    queued.
    """

    def __init__(self, ctx, pid, wfd, rfd, efd, ptys, pending):
        self.ctx, self.pid, self.wfd = ctx, pid, wfd
        self.master, self.ptys = ptys[0], ptys  # (master, slave): kept open while it runs
        self.cond = threading.Condition()
        self.queue = collections.deque()  # (header, payload, FOR_CHILD | FOR_BEHIND | OWN)
        self.own = 0  # bytes of relay_put frames queued
        self.closing = False  # no more frames: the writer closes its stdin once drained
        self.broken = False  # its stdin failed: queued and later frames are dropped
        self.stderr = bytearray()
        self.reader = Channel(rfd, -1)
        self.reader.buf += pending  # bytes read after the success marker: its first frames
        self.efd = efd

    def start(self, chan):
        self.drainer = threading.Thread(target=self._drain, name="context-%d-err" % self.ctx)
        relay = threading.Thread(target=self._relay, args=(chan,), name="context-%d" % self.ctx)
        writer = threading.Thread(target=self._write, args=(chan,), name="context-%d-in" % self.ctx)
        for t in (self.drainer, relay, writer):
            t.daemon = True
            t.start()

    def forward(self, kind, flags, handle, reply_to, payload, dst=SELF):
        """Queue one frame from the controller: for the nested agent itself (dst 1: its
        bytes are credited back once written) or for a context behind it (credited by the
        agent that writes it into that context's own input). Never blocks."""
        head = HEADER.pack(MAGIC, kind, flags, len(payload), dst, CONTROLLER, handle, reply_to)
        with self.cond:
            if not (self.closing or self.broken):
                self.queue.append((head, payload, FOR_CHILD if dst == SELF else FOR_BEHIND))
                self.cond.notify()

    def send_own(self, kind, flags, handle, payload):
        """Queue one frame of this agent's own (relay_put); waits while too much is queued.
        False if the context is gone."""
        head = HEADER.pack(MAGIC, kind, flags, len(payload), SELF, CONTROLLER, handle, 0)
        with self.cond:
            self.cond.wait_for(lambda: self.own < RELAY_QUEUE or self.closing or self.broken)
            if self.closing or self.broken:
                return False
            self.own += len(head) + len(payload)
            self.queue.append((head, payload, OWN))
            self.cond.notify_all()
        return True

    def close(self):
        """End its input once queued frames are written: the nested agent exits (it may run
        as another user: no kill)."""
        with self.cond:
            self.closing = True
            self.cond.notify_all()

    def _write(self, chan):
        owed = 0  # bytes from the controller written since the last CREDIT
        while True:
            with self.cond:
                while not self.queue and not self.closing and not owed:
                    self.cond.wait()
                item = self.queue.popleft() if self.queue else None
                if item is None and self.closing:
                    break
            if item is None:  # idle: report what was written
                chan.send(CREDIT, 0, owed, 0, src=self.ctx)
                owed = 0
                continue
            head, payload, origin = item
            n = len(head) + len(payload)  # credited as the controller sent it
            frames = [(head, payload)]
            if origin == FOR_CHILD and head[3] & REFS:
                frames = with_blobs(head, payload)
            if not self.broken:
                try:
                    for head, payload in frames:
                        write_all(self.wfd, head)
                        write_all(self.wfd, payload)
                except OSError as exc:
                    log.warning("context %d: write failed: %s", self.ctx, exc)
                    self.broken = True
            if origin == FOR_CHILD:  # a dropped frame is credited too: no stall upstream
                owed += n
                if owed >= CREDIT_EVERY:
                    chan.send(CREDIT, 0, owed, 0, src=self.ctx)
                    owed = 0
            elif origin == OWN:
                with self.cond:
                    self.own -= n
                    self.cond.notify_all()
        if owed:
            chan.send(CREDIT, 0, owed, 0, src=self.ctx)
        try:
            os.close(self.wfd)
        except OSError:
            pass

    def _drain(self):
        # Its stderr (and anything written on its pty) is copied to ours, tail kept; ends
        # when its stderr closes (the pty stays open: we hold the slave).
        import select

        fds = [self.efd, self.master]
        while self.efd in fds:
            try:
                ready, _, _ = select.select(fds, [], [])
            except (OSError, ValueError):
                return
            for fd in ready:
                data = _read_some(fd)
                if not data:
                    fds.remove(fd)
                    continue
                self.stderr += data
                del self.stderr[:-TAIL]
                if fd == self.efd:
                    try:
                        os.write(2, data)
                    except OSError:
                        pass

    def _relay(self, chan):
        reason = "nested agent ended"
        try:
            while True:
                frame = self.reader.read_frame()
                if frame is None:
                    break
                kind, flags, handle, reply_to, payload, _dst, src = frame
                if src > SELF:  # from a context behind it: keep its id, learn the route
                    with CONTEXTS_LOCK:
                        if src not in CONTEXTS:
                            ROUTES.setdefault(src, self.ctx)
                    if ROUTES.get(src) != self.ctx:
                        log.warning("context %d claimed id %d of another route: dropped", self.ctx, src)
                        continue
                else:
                    src = self.ctx
                chan.send(kind, flags, handle, reply_to, payload, src=src)
        except (FrameError, OSError) as exc:
            reason = "nested agent stream broken: %s" % exc
        self.close()
        with CONTEXTS_LOCK:
            CONTEXTS.pop(self.ctx, None)
            for k in [k for k, v in ROUTES.items() if v == self.ctx]:
                del ROUTES[k]
        try:
            os.waitpid(self.pid, 0)
        except OSError:
            pass
        self.drainer.join(5)
        for fd in (self.reader.rfd, self.efd) + self.ptys:
            try:
                os.close(fd)
            except OSError:
                pass
        text = _tail(bytes(self.stderr)).strip()
        msg = {"error": "connection_lost", "message": reason + (": " + text if text else "")}
        chan.send(REPLY, ERROR | EOF, 0, 0, dumps(msg), src=self.ctx)


def with_blobs(head, payload):
    """The frames to write for a CALL that names code blobs by hash (flag REFS, "blob_refs"):
    the blobs put in from this agent's store, so they cross the links above it once for all
    its contexts. A ref it cannot resolve is left as it is: the nested agent answers that
    call with a clear error."""
    _magic, kind, flags, _n, dst, src, handle, reply_to = HEADER.unpack(head)
    try:
        call = json.loads(bytes(payload).decode("utf-8"))
        refs = call.pop("blob_refs")
        packed = dict((h, PACKED[h]) for h in refs if h in PACKED)
        plain = dict((h, base64.b64encode(BLOBS[h]).decode("ascii")) for h in refs if h not in packed)
    except (ValueError, KeyError, TypeError, AttributeError):
        return [(head, payload)]
    if packed:
        call["blobs_z"] = packed
    if plain:
        call["blobs"] = plain
    body = dumps(call)
    frames = []
    for at in range(0, len(body), MAX_PAYLOAD):
        part = body[at : at + MAX_PAYLOAD]
        more = MORE if at + MAX_PAYLOAD < len(body) else 0
        fl = (flags & ~REFS) | more
        frames.append((HEADER.pack(MAGIC, kind, fl, len(part), dst, src, handle, reply_to), part))
    return frames


def _spawn_child(cmd):
    """Fork `/bin/sh -c cmd` in a new session whose controlling terminal is a fresh pty."""
    import fcntl, pty, termios  # noqa: E401

    master, slave = pty.openpty()
    attrs = termios.tcgetattr(slave)
    attrs[3] &= ~termios.ECHO  # a password typed on the pty is never echoed back
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: only async-signal-safe-ish calls until exec
        try:
            os.setsid()
            fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
            os.dup2(in_r, 0)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            os.closerange(3, 65536)
            os.execv("/bin/sh", ["/bin/sh", "-c", cmd])
        finally:
            os._exit(127)
    for fd in (in_r, out_w, err_w):
        os.close(fd)
    # The slave stays open here too: when its last descriptor closes, the master sees EIO
    # and closing the master would hang up (SIGHUP) the child's session.
    return pid, in_w, out_r, err_r, (master, slave)


def op_spawn_context(chan, call_id, call):
    """Start a nested agent through a become command; reply once it runs (or why not)."""
    import re, select  # noqa: E401

    ctx, cmd, success = call.get("ctx"), call.get("cmd"), call.get("success")
    password, prompt = call.get("password"), call.get("prompt")
    timeout, python = seconds(call, "timeout", 30), call.get("python")
    if not (
        isinstance(ctx, int)
        and SELF < ctx < 2**32
        and isinstance(cmd, str)
        and BOOT_PLACEHOLDER in cmd
        and "\0" not in cmd
        and isinstance(success, str)
        and success
    ):
        raise AgentError(
            "bad_request",
            "spawn_context needs 1 < ctx < 2**32, cmd with %s (no NUL), success" % BOOT_PLACEHOLDER,
        )
    if password is not None and not isinstance(password, str):
        raise AgentError("bad_request", "password must be a string")
    if python is not None and not (
        isinstance(python, str) and python and set(python) <= SAFE_PATH and python[0] != "-"
    ):
        raise AgentError("bad_request", "python must be a plain interpreter path or name")
    try:
        prompt_re = re.compile(prompt) if prompt else None
    except (re.error, TypeError) as exc:
        raise AgentError("bad_request", "bad prompt pattern: %s" % exc)
    if _BOOT_BLOB is None:
        raise AgentError("internal", "this agent does not hold its own code (not started by stage 1)")
    if not sys.executable or not set(sys.executable) <= SAFE_PATH:
        raise AgentError("internal", "interpreter path %r cannot be quoted safely" % sys.executable)
    with CONTEXTS_LOCK:
        if ctx in CONTEXTS:
            raise AgentError("bad_request", "context %d already exists" % ctx)
    # Our interpreter if the become user may run it (a per-user install may be private),
    # else the first python3 on that user's PATH.
    stage1 = CHILD_STAGE1 % len(_BOOT_BLOB)
    if python:  # named by the controller (a via hop's target: ansible_python_interpreter)
        boot = 'exec %s -c "%s"' % (python, stage1)
    else:
        boot = 'if [ -x %s ]; then exec %s -c "%s"; fi; exec python3 -c "%s"' % (
            sys.executable,
            sys.executable,
            stage1,
            stage1,
        )
    pid, wfd, rfd, efd, ptys = _spawn_child(cmd.replace(BOOT_PLACEHOLDER, boot))
    master = ptys[0]
    out, err, tty = bytearray(), bytearray(), bytearray()
    marker = success.encode("utf-8")
    answered, reason = False, None
    deadline = time.monotonic() + timeout
    open_fds = [rfd, efd, master]
    while reason is None:
        at = out.find(marker)
        if at >= 0 and out.find(b"\n", at) >= 0:
            break
        left = deadline - time.monotonic()
        if left <= 0:
            reason = "timeout"
            break
        if not open_fds or rfd not in open_fds:
            reason = "exited"
            break
        ready, _, _ = select.select(open_fds, [], [], left)
        for fd in ready:
            data = _read_some(fd)
            if not data:
                open_fds.remove(fd)
                continue
            buf = out if fd == rfd else err if fd == efd else tty
            buf += data
            if fd == rfd or prompt_re is None:
                continue
            if not prompt_re.search(buf.decode("utf-8", "replace")):
                continue
            if password is None:
                reason = "missing_password"
            elif answered:
                reason = "incorrect_password"
            else:
                answered = True
                try:
                    write_all(wfd if fd == efd else master, password.encode("utf-8") + b"\n")
                except OSError:
                    pass
                del buf[:]
    if reason is not None:
        for fd in (wfd, rfd, efd) + ptys:
            try:
                os.close(fd)
            except OSError:
                pass
        status = _reap(pid, 2.0 if reason == "exited" else 0)
        text = (_tail(bytes(err)) + _tail(bytes(tty))).strip()
        if reason == "exited" and status is not None:
            # The become command itself failed (unknown user, bad flags, ...): what it said,
            # for the controller to report as stock Ansible does (rc, stdout, stderr).
            raise AgentError(
                reason,
                dumps(
                    {
                        "rc": status,
                        "stdout": _tail(bytes(out)),
                        "stderr": _tail(bytes(err)) + _tail(bytes(tty)),
                    }
                ).decode("utf-8"),
            )
        raise AgentError(reason, text or "(no output)")
    end = out.find(b"\n", out.find(marker)) + 1
    try:
        write_all(wfd, _BOOT_BLOB)
    except OSError as exc:
        raise AgentError("exited", "nested agent did not read its code: %s" % exc)
    context = Context(ctx, pid, wfd, rfd, efd, ptys, bytes(out[end:]))
    with CONTEXTS_LOCK:
        CONTEXTS[ctx] = context
    context.start(chan)
    return {"ctx": ctx, "pid": pid}


# ---- file cache on a via hop -------------------------------------------------------------
# A file sent to many targets behind this agent crosses the link to it once: the controller
# stores it here (cache_put, in RAM: a memfd, never on disk) and asks this agent to send it
# to each child (relay_put) as that child's own put_file. The controller bounds what is
# cached per hop and drops entries (cache_drop); a relay writes into the child's pipe as the
# child reads, so a slow child slows only its own relay thread.

FILE_CACHE = {}  # sha256 hex -> (fd, size)
FILE_CACHE_LOCK = threading.Lock()
STARTING = set()  # contexts whose spawn_context runs (a relay_put for one waits for it)
STARTING_COND = threading.Condition()


class CachePut(Put):
    """A cache_put transfer: like put_file, into a memfd kept under its sha256."""

    def __init__(self, call):
        self.fd, self.tmp, self.error = None, None, None
        self.digest, self.received = hashlib.sha256(), 0
        self.sha, self.size = call.get("sha256"), call.get("size")
        try:
            if not (
                isinstance(self.sha, str)
                and len(self.sha) == 64
                and isinstance(self.size, int)
                and self.size >= 0
            ):
                raise AgentError("bad_request", "cache_put needs sha256 and size")
            if not hasattr(os, "memfd_create"):
                raise AgentError("io", "no memfd_create here: files are not cached on this hop")
            try:
                self.fd = os.memfd_create("spindle-cache")
            except OSError as exc:
                raise os_error(exc)
        except AgentError as exc:
            self.fail(exc)

    def finish(self):
        if self.error is None and self.received != self.size:
            self.fail(AgentError("io", "received %d bytes, declared size %d" % (self.received, self.size)))
        if self.error is None and self.digest.hexdigest() != self.sha:
            self.fail(AgentError("io", "content does not match sha256 %s" % self.sha))
        if self.error is not None:
            raise self.error
        with FILE_CACHE_LOCK:
            old = FILE_CACHE.pop(self.sha, None)
            FILE_CACHE[self.sha] = (self.fd, self.size)
        if old is not None:
            os.close(old[0])
        self.fd = None
        return {"sha256": self.sha, "size": self.size}


def op_cache_drop(chan, call_id, call):
    with FILE_CACHE_LOCK:
        entry = FILE_CACHE.pop(call.get("sha256"), None)
    if entry is not None:
        os.close(entry[0])
    return {"dropped": entry is not None}


def op_relay_put(chan, call_id, call):
    """Send a cached file to direct child `ctx` as CALL `call` (handle `handle`) + DATA."""
    ctx, sha, handle, inner = call.get("ctx"), call.get("sha256"), call.get("handle"), call.get("call")
    if not (isinstance(handle, int) and 0 < handle < 2**32 and isinstance(inner, dict)):
        raise AgentError("bad_request", "relay_put needs ctx, sha256, handle and call")
    with STARTING_COND:  # queued behind its spawn_context, which runs in another thread
        STARTING_COND.wait_for(lambda: ctx not in STARTING, timeout=600)
    context = CONTEXTS.get(ctx)
    if context is None:
        raise AgentError("not_found", "no context %r here" % (ctx,))
    with FILE_CACHE_LOCK:
        entry = FILE_CACHE.get(sha)
        fd = os.dup(entry[0]) if entry is not None else None  # survives a concurrent drop
    if fd is None:
        raise AgentError("not_found", "file %s is not cached here" % (sha,))
    try:
        size = entry[1]
        if not context.send_own(CALL, 0, handle, dumps(inner)):
            raise AgentError("not_found", "context %r ended" % (ctx,))
        offset = 0
        while True:
            chunk = os.pread(fd, min(FETCH_CHUNK, size - offset), offset) if offset < size else b""
            offset += len(chunk)
            last = offset >= size or not chunk
            if not context.send_own(DATA, EOF if last else 0, handle, chunk):
                raise AgentError("not_found", "context %r ended" % (ctx,))
            if last:
                break
    finally:
        os.close(fd)
    return {"size": size}


# ---- modules in the agent (src/agent/modrun.py, embedded by the controller as base64) ---
_MODRUN = []
MODULE_LOCK = threading.Lock()  # one in-process module run at a time (they share the process)
TEMPLATE_STREAMS = []  # the interpreter's own stdout/stderr: encodings a fresh one gets


def modrun():
    if not _MODRUN:
        src = globals().get("_SPINDLE_MODRUN_B64")
        if src is None:
            raise AgentError("internal", "this agent was started without the module runner")
        mod = types.ModuleType("spindle_modrun")
        exec(compile(base64.b64decode(src), "<spindle-modrun>", "exec"), mod.__dict__)
        _MODRUN.append(mod)
    return _MODRUN[0]


def op_run_module(chan, call_id, call):
    """Run an Ansible module from cached blobs: in this process (state restored) or forked."""
    return _run_module(call)


# Module file sets (manifest + warm core list) by the id the controller gave them: a later
# run_module with only "set_id" reuses one (the controller sends each set once per stream, and
# at most MAX_MODULE_SETS of them).
MODULE_SETS = {}
MAX_MODULE_SETS = 1024


def _module_set(call):
    """(manifest, core) of a run_module call: given in it (and kept under its set_id, which
    the controller will send alone from now on), or the kept set its set_id names."""
    manifest, core, set_id = call.get("manifest"), call.get("core") or [], call.get("set_id")
    if isinstance(set_id, str) and manifest is None:
        known = MODULE_SETS.get(set_id)
        if known is None:
            raise AgentError("bad_request", "module set %s is not on the agent" % set_id)
        return known
    if isinstance(set_id, str) and isinstance(manifest, dict) and len(MODULE_SETS) < MAX_MODULE_SETS:
        MODULE_SETS[set_id] = (manifest, core)
    return manifest, core


def _venv_of(executable):
    """The virtualenv `executable` runs in (the real path of the directory whose pyvenv.cfg
    Python finds beside the executable or one level up), or None."""
    here = os.path.dirname(os.path.abspath(executable))
    for d in (here, os.path.dirname(here)):
        if os.path.isfile(os.path.join(d, "pyvenv.cfg")):
            return os.path.realpath(d)
    return None


def _my_venv():
    return os.path.realpath(sys.prefix) if sys.prefix != getattr(sys, "base_prefix", sys.prefix) else None


def _runs_interpreter(interp):
    """Whether this agent is `interp` (a path, or a name looked up on PATH as exec would):
    the same program, and the same virtualenv (a venv's python is a symlink to its base
    interpreter, but sees other packages)."""
    if not isinstance(interp, str):
        return False
    if "/" not in interp:
        import shutil

        interp = shutil.which(interp) or interp
    if os.path.realpath(interp) != os.path.realpath(sys.executable):
        return False
    return _venv_of(interp) == _my_venv()


ASYNC_MAX_LIMIT = 2**31 - 1  # seconds: the longest async time limit accepted


def _async_job(job):
    """The `async` of a run_module call, checked: {"jid": "j<1-12 digits>" (the controller's
    prefix; the job id adds the job's pid, as async_wrapper does), "limit": seconds (0 to
    ASYNC_MAX_LIMIT; 0, as gather_facts gives its parallel jobs: killed at the first check), "ints": 2.18's 1/0 started/finished flags, "blank_junk": trailing blank
    lines after the JSON are junk (before 2.21)}."""
    if not isinstance(job, dict):
        raise AgentError("bad_request", "async must be an object")
    jid, limit = job.get("jid"), job.get("limit")
    if (
        not isinstance(jid, str)
        or not 2 <= len(jid) <= 13
        or jid[0] != "j"
        or any(c not in "0123456789" for c in jid[1:])
    ):
        raise AgentError("bad_request", "async.jid must be j followed by 1 to 12 digits")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit <= ASYNC_MAX_LIMIT:
        raise AgentError("bad_request", "async.limit must be an integer in 0..%d" % ASYNC_MAX_LIMIT)
    return {
        "jid": jid,
        "limit": limit,
        "ints": bool(job.get("ints")),
        "blank_junk": bool(job.get("blank_junk", True)),
    }


def _run_module(call):
    req, mode = call.get("req"), call.get("mode", "inproc")
    manifest, core = _module_set(call)
    if (
        not isinstance(req, dict)
        or not isinstance(manifest, dict)
        or mode not in ("inproc", "warm", "fork")
        or not isinstance(core, list)
    ):
        raise AgentError("bad_request", "run_module needs req, manifest, mode inproc|warm|fork")
    interp = call.get("interpreter")
    if interp and not _runs_interpreter(interp):
        return {"fallback": "interpreter %s is not the agent's %s" % (interp, sys.executable)}
    files = {}
    for path, digest in manifest.items():
        data = BLOBS.get(digest)
        if data is None:
            raise AgentError("bad_request", "blob %s for %s is not on the agent" % (digest, path))
        files[path] = data
    out, err = TEMPLATE_STREAMS or (sys.__stdout__, sys.__stderr__)
    if "async" in call:  # an async task: a detached job, as Ansible's async_wrapper starts it
        r = modrun().start_async(req, files, _async_job(call["async"]), out, err, disk=bool(call.get("disk")))
    elif call.get("disk"):  # may re-execute itself: forked, its payload in a private temp dir
        r = modrun().run(req, files, "fork", out, err, core, disk=True)
    elif mode != "fork" and MODULE_LOCK.acquire(False):
        try:
            r = modrun().run(req, files, mode, out, err, core)
        finally:
            MODULE_LOCK.release()
    else:
        # Asked to fork, or another module runs in this process now (tasks of several hosts
        # delegated to one): in a forked child, alongside it, as stock runs them in parallel.
        r = modrun().run(req, files, "fork", out, err, core)
    return {
        "rc": r["rc"],
        "stdout_b64": base64.b64encode(r["stdout"]).decode("ascii"),
        "stderr_b64": base64.b64encode(r["stderr"]).decode("ascii"),
        "seconds": r["seconds"],
    }


def _sha1_of(path):
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def op_copy_fast(chan, call_id, call):
    """Ansible's copy action for one small file in one call: the decisions the action takes
    on the controller after its remote stat (stat here with the same rules: follow, sha1),
    then the `copy` module on the content staged where the module's src says, or the `file`
    module when the content is already there. Cases the action handles with more steps (dest
    is a directory, an unchanged file reached through a symlink) answer {"outcome": "stock"}
    before anything is changed.

    A large file (op `copy_stream`, which an agent without it refuses as unknown, so the
    controller takes the stock flow) does not come inline: the first call answers {"outcome": "send"}
    when the content differs and `staged` (beside dest: the module's move is a rename) can be
    written; the controller then puts the file there (a stream at line rate) and calls again
    with `prestaged`, which runs the module on it. The staged file never outlives the call."""
    dest, follow = call.get("dest"), bool(call.get("follow"))
    checksum, staged = call.get("checksum"), call.get("staged")
    big, prestaged = call.get("op") == "copy_stream", bool(call.get("prestaged"))
    copy_run, file_run = call.get("copy"), call.get("file")
    for run in (copy_run, file_run):  # keep both sets: the controller sent each once
        if isinstance(run, dict):
            _module_set(run)
    try:
        data = base64.b64decode(call.get("data_b64") or "")
    except (TypeError, ValueError) as exc:
        raise AgentError("bad_request", "data_b64: %s" % exc)
    if (
        not all(isinstance(x, str) for x in (dest, checksum, staged))
        or not isinstance(copy_run, dict)
        or not isinstance(file_run, dict)
    ):
        raise AgentError("bad_request", "copy_fast needs dest, checksum, staged, copy, file")
    path = os.path.expanduser(dest)
    try:
        st = os.stat(path) if follow else os.lstat(path)
    except OSError:
        st = None
    if st is not None and stat.S_ISDIR(st.st_mode):
        return {"outcome": "stock"}
    remote = "1"  # what the action compares with when dest does not exist
    if st is not None and stat.S_ISREG(st.st_mode):
        try:
            remote = _sha1_of(path)
        except OSError:
            remote = ""
    elif st is not None:
        remote = ""
    src = os.path.expanduser(staged)
    if remote == checksum:
        if prestaged:
            _unlink_quietly(src)
        if follow and os.path.islink(path):
            return {"outcome": "stock"}  # the action re-targets dest to the link's source
        out = _run_module(file_run)
        if "fallback" in out:
            return {"outcome": "stock"}
        out["outcome"] = "file"
        return out
    if big and not prestaged:
        where = os.path.dirname(src) or "."
        if not (os.path.isdir(where) and os.access(where, os.W_OK | os.X_OK)):
            return {"outcome": "stock"}
        return {"outcome": "send"}
    if prestaged:
        try:
            if not stat.S_ISREG(os.lstat(src).st_mode):
                return {"outcome": "stock"}
        except OSError:
            return {"outcome": "stock"}
        try:
            out = _run_module(copy_run)
        finally:
            _unlink_quietly(src)  # moved by the module when it succeeded
        if "fallback" in out:
            return {"outcome": "stock"}
        out["outcome"] = "copy"
        return out
    top = os.path.dirname(src)
    made = False  # only a directory made here is removed here
    try:
        os.makedirs(os.path.dirname(top), mode=0o700, exist_ok=True)
        os.mkdir(top, 0o700)
        made = True
        fd = os.open(src, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            write_all(fd, data)
        finally:
            os.close(fd)
    except OSError:  # e.g. a become user without a usable home: the stock flow copes
        if made:
            import shutil

            shutil.rmtree(top, ignore_errors=True)
        return {"outcome": "stock"}
    try:
        out = _run_module(copy_run)
    finally:
        import shutil

        shutil.rmtree(top, ignore_errors=True)
    if "fallback" in out:
        return {"outcome": "stock"}
    out["outcome"] = "copy"
    return out


def _unlink_quietly(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def _after_fork_in_child():
    # A forked module run must never write frames or log records into the parent's stream.
    logging.getLogger().handlers = []


THREADED = {
    "ping": op_ping,
    "exec": op_exec,
    "fetch_file": op_fetch_file,
    "run_module": op_run_module,
    "spawn_context": op_spawn_context,
    "copy_fast": op_copy_fast,
    "copy_stream": op_copy_fast,
    "relay_put": op_relay_put,
    "cache_drop": op_cache_drop,
}


def run_call(chan, call_id, fn, call):
    """Run one operation; every failure becomes an ERROR reply, never an agent death. The
    reply of a call cancelled meanwhile is discarded."""
    try:
        result = fn(chan, call_id, call)
    except AgentError as exc:
        kind, message = exc.kind, exc.message  # `exc` is unbound after the except block
        reply = lambda: chan.reply_error(call_id, kind, message)  # noqa: E731
    except Exception:
        text = traceback.format_exc()
        reply = lambda: chan.reply_error(call_id, "internal", text)  # noqa: E731
    else:
        reply = lambda: chan.reply(call_id, result)  # noqa: E731
    with RUNNING_LOCK:
        run = RUNNING.pop(call_id, None)
    if run is not None and run.cancelled:
        log.debug("call %d was cancelled: reply discarded", call_id)
        return
    reply()


def start_threaded(chan, call_id, fn, call, name):
    """Run a call in its own thread, registered in RUNNING so that `cancel` can reach it."""
    with RUNNING_LOCK:
        RUNNING[call_id] = Running()
    t = threading.Thread(target=run_call, args=(chan, call_id, fn, call), name=name)
    t.daemon = True
    t.start()


def op_cancel(call):
    """`{"op": "cancel", "handle": N}`: the controller gave up on call N (its deadline passed
    or its client went away). A command it runs is killed with its process group, a fetch
    stops sending, and its reply is never sent. -> {"cancelled": bool} (false: no such call
    running, e.g. it just finished)."""
    handle = call.get("handle")
    if isinstance(handle, bool) or not isinstance(handle, int) or not 0 < handle < 2**32:
        raise AgentError("bad_request", "cancel needs a call handle (integer 1..2^32-1)")
    with RUNNING_LOCK:
        run = RUNNING.get(handle)
    if run is None:
        return {"cancelled": False}
    run.cancel()
    log.debug("call %d cancelled", handle)
    return {"cancelled": True}


def store_blobs(blobs, packed=False):
    """Keep code blobs pushed with a CALL (sha256 hex -> base64, of its zlib compression when
    `packed`), checking each hash. The packed form is kept too, for the contexts this agent
    passes them on to."""
    if not isinstance(blobs, dict):
        raise AgentError("bad_request", "blobs must be an object")
    for digest, b64 in blobs.items():
        data = base64.b64decode(b64)
        if packed:
            data = zlib.decompress(data)
        if hashlib.sha256(data).hexdigest() != digest:
            raise AgentError("bad_request", "blob %s does not match its hash" % digest)
        BLOBS[digest] = data
        if packed:
            PACKED[digest] = b64


class Agent(object):
    def __init__(self, chan):
        self.chan = chan
        self.puts = {}
        self.partial = {}  # call id -> payload parts of a CALL split with MORE

    def on_call(self, call_id, payload, flags=0):
        if flags & MORE:
            self.partial.setdefault(call_id, []).append(payload)
            return
        if call_id in self.partial:
            parts = self.partial.pop(call_id)
            parts.append(payload)
            payload = b"".join(parts)
        try:
            call = json.loads(payload.decode("utf-8"))
            if not isinstance(call, dict) or not isinstance(call.get("op"), str):
                raise ValueError("CALL payload must be an object with a string op")
            if "blobs" in call:
                store_blobs(call.pop("blobs"))
            if "blobs_z" in call:
                store_blobs(call.pop("blobs_z"), packed=True)
            if "blob_refs" in call:
                raise AgentError(
                    "missing_blobs",
                    "module code the agent that started this "
                    "one should have sent is not there: %s"
                    % ", ".join(str(h)[:12] for h in call["blob_refs"]),
                )
        except AgentError as exc:
            return self.chan.reply_error(call_id, exc.kind, exc.message)
        except Exception as exc:  # bad UTF-8 or JSON, too deeply nested, bad base64, ...
            return self.chan.reply_error(call_id, "bad_request", str(exc))
        op = call["op"]
        log.debug("call %s handle %d", op, call_id)
        if op == "spawn_context":
            with STARTING_COND:
                STARTING.add(call.get("ctx"))
            fn = THREADED[op]

            def spawn(chan, call_id, call):
                try:
                    return fn(chan, call_id, call)
                finally:
                    with STARTING_COND:
                        STARTING.discard(call.get("ctx"))
                        STARTING_COND.notify_all()

            start_threaded(self.chan, call_id, spawn, call, "%s-%d" % (op, call_id))
        elif op in THREADED:
            start_threaded(self.chan, call_id, THREADED[op], call, "%s-%d" % (op, call_id))
        elif op == "cancel":
            run_call(self.chan, call_id, lambda chan, call_id, call: op_cancel(call), call)
        elif op in ("put_file", "cache_put"):
            if call_id in self.puts:
                return self.chan.reply_error(call_id, "bad_request", "handle already in use")
            # errors are kept and replied after EOF/ABORT
            self.puts[call_id] = Put(call) if op == "put_file" else CachePut(call)
        elif op == "log_level":
            level = LEVELS.get(str(call.get("level")).upper())
            if level is None:
                return self.chan.reply_error(
                    call_id, "bad_request", "unknown level %r" % (call.get("level"),)
                )
            logging.getLogger().setLevel(level)
            self.chan.reply(call_id, {})
        elif op == "store_blobs":  # code for contexts this agent starts (stored above)
            self.chan.reply(call_id, {})
        elif op == "blob_list":
            self.chan.reply(call_id, {"hashes": sorted(BLOBS)})
        elif op == "close_context":
            ctx = CONTEXTS.get(call.get("ctx"))
            if ctx is not None:
                ctx.close()
            self.chan.reply(call_id, {"closed": ctx is not None})
        elif op == "shutdown":
            log.info("shutdown requested")
            self.chan.reply(call_id, {})
            die(0)
        else:
            self.chan.reply_error(call_id, "bad_request", "unknown op %r" % (op,))

    def on_data(self, handle, flags, payload):
        put = self.puts.get(handle)
        if put is None:
            log.debug("DATA for unknown handle %d dropped", handle)
            return
        try:
            if flags & ABORT:
                del self.puts[handle]
                put.fail(AgentError("io", "transfer aborted by the controller"))
                return self.chan.reply_error(handle, put.error.kind, put.error.message)
            if payload:
                put.write(payload)
            if flags & EOF:
                del self.puts[handle]
                run_call(self.chan, handle, lambda chan, call_id, call: put.finish(), None)
        except Exception:
            self.puts.pop(handle, None)
            put.fail(AgentError("internal", traceback.format_exc()))
            self.chan.reply_error(handle, "internal", put.error.message)

    def loop(self):
        while True:
            try:
                frame = self.chan.read_frame()
            except FrameError as exc:
                die(2, "spindle agent: frame error: %s" % exc)
            except OSError as exc:
                die(1, "spindle agent: read error: %s" % exc)
            if frame is None:
                log.debug("input closed, exiting")
                die(0)
            kind, flags, handle, reply_to, payload, dst, _src = frame
            if dst not in (SELF, CONTROLLER):  # for a nested context (become, via): relay it
                ctx = CONTEXTS.get(dst)
                if ctx is not None:
                    ctx.forward(kind, flags, handle, reply_to, payload)
                    continue
                ctx = CONTEXTS.get(ROUTES.get(dst))  # deeper: to the child it is behind
                if ctx is None:
                    log.debug("frame for context %d, which is gone: dropped", dst)
                else:
                    ctx.forward(kind, flags, handle, reply_to, payload, dst=dst)
                continue
            try:
                if kind == CALL:
                    self.on_call(handle, payload, flags)
                elif kind == DATA:
                    self.on_data(handle, flags, payload)
                else:
                    log.warning("ignoring frame of kind %d from the controller", kind)
            except Exception:  # never die on a bad request
                log.error("handling a frame of kind %d failed", kind, exc_info=True)
                if kind == CALL:
                    self.chan.reply_error(handle, "internal", traceback.format_exc())


def main():
    global UMASK
    TEMPLATE_STREAMS[:] = [sys.stdout, sys.stderr]
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork_in_child)
    rfd, wfd = os.dup(0), os.dup(1)  # non-inheritable private frame descriptors
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(2, 1)  # stray output (print, children) goes to stderr
    os.close(null)
    UMASK = os.umask(0o022)
    os.umask(UMASK)
    chan = Channel(rfd, wfd)
    hello = {
        "proto": PROTO,
        "python": platform.python_version(),
        "executable": sys.executable,
        # the program resolved, for the daemon to match interpreters (not in a venv,
        # whose python resolves to its base but sees other packages)
        "realpath": None if _my_venv() else os.path.realpath(sys.executable),
        "hostname": socket.gethostname(),
        "uid": os.getuid(),
        "pid": os.getpid(),
    }
    chan.send(HELLO, 0, 0, 0, dumps(hello))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(LogHandler(chan))
    root.setLevel(logging.INFO)
    log.info("agent started: python %s pid %d", hello["python"], hello["pid"])
    Agent(chan).loop()


if __name__ == "__main__":
    main()
