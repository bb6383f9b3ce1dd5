# spindle agent, 40_hop_cache: a via hop's file cache (cache_put, cache_drop, relay_put).
# One of the parts src/agent/parts/*.py joined in name order into one source (one
# namespace) by transport::bootstrap; see 00_channel.py.


# ---- file cache on a via hop -------------------------------------------------------------
# A file sent to many targets behind this agent crosses the link to it once: the controller
# stores it here (cache_put, in RAM: a memfd, never on disk) and asks this agent to send it
# to each child (relay_put) as that child's own put_file. The controller bounds what is
# cached per hop and drops entries (cache_drop); a relay writes into the child's pipe as the
# child reads, so a slow child slows only its own relay thread.

FILE_CACHE = {}  # sha256 hex -> (fd, size)
FILE_CACHE_LOCK = threading.Lock()


class StartingContexts(object):
    """Contexts whose spawn_context runs (in its own thread): a relay_put for one waits."""

    def __init__(self):
        self._cond = threading.Condition()
        self._ctxs = set()

    def begin(self, ctx):
        with self._cond:
            self._ctxs.add(ctx)

    def end(self, ctx):
        with self._cond:
            self._ctxs.discard(ctx)
            self._cond.notify_all()

    def wait(self, ctx, timeout):
        """Until ``ctx`` is started (or failed to), at most ``timeout`` seconds."""
        with self._cond:
            self._cond.wait_for(lambda: ctx not in self._ctxs, timeout=timeout)


STARTING = StartingContexts()


class CachePut(Put):
    """A cache_put transfer: like put_file, into a memfd kept under its sha256."""

    def __init__(self, call):
        self.fd, self.tmp, self.error = None, None, None
        self.digest, self.received = Hasher(["sha256"], False), 0
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
        if self.error is None and self.digest.hexdigests().get("sha256") != self.sha:
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
    STARTING.wait(ctx, 600)  # queued behind its spawn_context, which runs in another thread
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
