# spindle agent, 10_exec: child processes and the exec op (argv or shell, stdin, timeout, a pty for raw).
# One of the parts src/agent/parts/*.py joined in name order into one source (one
# namespace) by transport::bootstrap; see 00_channel.py.


# ---- child processes ---------------------------------------------------------------


class ProcessGroups(object):
    """The commands running now (each the leader of its own process group), so that an agent
    that dies takes them with it."""

    def __init__(self):
        self._lock = threading.Lock()
        self._procs = set()

    def add(self, p):
        with self._lock:
            self._procs.add(p)

    def discard(self, p):
        with self._lock:
            self._procs.discard(p)

    def kill_all(self):
        with self._lock:
            for p in list(self._procs):
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except OSError:
                    pass


CHILDREN = ProcessGroups()


def kill_children():
    CHILDREN.kill_all()


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


class RunningCalls(object):
    """The threaded calls in flight: call id -> Running (what `cancel` reaches)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._calls = {}

    def start(self, call_id):
        with self._lock:
            self._calls[call_id] = Running()

    def get(self, call_id):
        with self._lock:
            return self._calls.get(call_id)

    def finish(self, call_id):
        """The call's record, forgotten (None if it had none)."""
        with self._lock:
            return self._calls.pop(call_id, None)


CALLS = RunningCalls()


def running(call_id):
    """The Running record of call `call_id` (a fresh one when it has none: called directly)."""
    r = CALLS.get(call_id)
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
    CHILDREN.add(p)
    run = running(call_id)
    run.attach(p)
    try:
        out, err, timed_out, truncated = _collect(p, data, timeout, run)
        rc = -9 if timed_out else p.wait()  # killed, or _collect saw it exit
    finally:
        CHILDREN.discard(p)
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
    CHILDREN.add(p)
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
        CHILDREN.discard(p)
    res = {
        "rc": rc,
        "stdout_b64": base64.b64encode(bytes(out)).decode("ascii"),
        "stderr_b64": "",
        "timed_out": timed_out,
    }
    if truncated:
        res["output_truncated"] = True
    return res
