# spindle agent, 30_contexts: nested contexts (become, interpreters, via hops): start, relay, close.
# One of the parts src/agent/parts/*.py joined in name order into one source (one
# namespace) by transport::bootstrap; see 00_channel.py.


# ---- nested contexts (become) ------------------------------------------------------------
# A context is a second agent started through a privilege-escalation command (sudo, su, doas,
# ... as Ansible's become plugin built it on the controller). Its frames travel over this
# agent's stream: the controller addresses it by `dst`, and this agent relays its output with
# `src` set to the context id. Passwords are typed here, on the stdin pipe when the prompt
# came on stderr (sudo -S) or on the child's controlling pty when it came there (su, doas).

BOOT_PLACEHOLDER = "__SPINDLE_BOOT__"
# Stage 1 for a nested agent: no quote, dollar, backquote or backslash, so it survives any
# depth of the become plugins' shell quoting, and one line, so a login shell that has no
# newline inside quotes (csh: su to such a user, a via target's login) takes it; `b` stays a
# global for the next level.
CHILD_STAGE1 = (
    "import os,zlib;n=%d;r=[];[r.append(c) for c in iter(lambda:os.read(0,n-sum(map(len,r))),bytes())];"
    "b=bytes().join(r);len(b)<n and os._exit(1);del r;exec(zlib.decompress(b))"
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
                    if not CONTEXTS.claim(src, self.ctx):
                        log.warning("context %d claimed id %d of another route: dropped", self.ctx, src)
                        continue
                else:
                    src = self.ctx
                chan.send(kind, flags, handle, reply_to, payload, src=src)
        except (FrameError, OSError) as exc:
            reason = "nested agent stream broken: %s" % exc
        self.close()
        CONTEXTS.remove(self.ctx)
        try:
            status = os.waitpid(self.pid, 0)[1]
        except OSError:
            status = None
        if status is not None:
            if os.WIFSIGNALED(status):
                reason += " (killed by signal %d)" % os.WTERMSIG(status)
            elif os.WIFEXITED(status):
                reason += " (exit status %d)" % os.WEXITSTATUS(status)
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
        packed, plain = CODE.for_child(refs)
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
    if CONTEXTS.has(ctx):
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
            # for the controller to report as stock Ansible does (rc, stdout, stderr). What
            # the terminal showed came first (the line end after a typed password).
            raise AgentError(
                reason,
                dumps(
                    {
                        "rc": status,
                        "stdout": _tail(bytes(out)),
                        "stderr": _tail(bytes(tty)) + _tail(bytes(err)),
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
    CONTEXTS.add(ctx, context)
    context.start(chan)
    return {"ctx": ctx, "pid": pid}
