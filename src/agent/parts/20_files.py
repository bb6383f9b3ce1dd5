# spindle agent, 20_files: files: fetch_file and put_file (owner, mode, atomic rename).
# One of the parts src/agent/parts/*.py joined in name order into one source (one
# namespace) by transport::bootstrap; see 00_channel.py.


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
    """One put_file transfer, driven by the frame-reading thread. The reply carries the
    content's digests (`digests`, of PUT_DIGESTS; sha256 when not given), taken while it is
    received; asked for explicitly, they are also remembered for the module runner (DIGESTS).
    `sync: false` skips the fsync (a file staged for a module that moves it: stock's transfer
    does not sync either)."""

    def __init__(self, call):
        self.fd, self.tmp, self.error = None, None, None
        self.digest, self.received = None, 0
        try:
            self.path = call.get("path")
            if not isinstance(self.path, str) or not self.path:
                raise AgentError("bad_request", "path must be a non-empty string")
            self.size, mode = call.get("size"), call.get("mode")
            if self.size is not None and (not isinstance(self.size, int) or self.size < 0):
                raise AgentError("bad_request", "size must be a non-negative integer")
            names = call.get("digests")
            self.remember = names is not None
            if names is None:
                names = ["sha256"]
            if not isinstance(names, list) or not all(n in PUT_DIGESTS for n in names):
                raise AgentError("bad_request", "digests must be a list of %s" % ", ".join(PUT_DIGESTS))
            self.sync = call.get("sync", True) is not False
            if mode is not None and (not isinstance(mode, int) or not 0 <= mode <= 0o7777):
                raise AgentError("bad_request", "mode must be an integer permission value")
            self.mode = (0o666 & ~UMASK) if mode is None else mode
            if mode is not None and call.get("apply_umask"):
                self.mode = mode & ~UMASK
            self.uid = _owner_id(call.get("owner"), pwd.getpwnam, "user")
            self.gid = _owner_id(call.get("group"), grp.getgrnam, "group")
            self.digest = Hasher(names, (self.size or 0) >= HASH_THREAD_MIN)
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
        if self.digest is not None:
            self.digest.close()
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
            if self.sync:
                os.fsync(self.fd)
            os.close(self.fd)
            self.fd = None
            os.replace(self.tmp, self.path)
            self.tmp = None
        except OSError as exc:
            self.fail(os_error(exc))
            raise self.error
        digests = self.digest.hexdigests()
        if self.remember:
            DIGESTS.record(self.path, digests)
        reply = {"path": self.path, "size": self.received}
        reply.update(digests)
        return reply
