# spindle agent, 22_digests: digests of a put's content taken while it is received, and a memo
# of them that the module runner's AnsibleModule.digest_from_file reads (a copy's sha1 and md5
# without reading the file again).
# One of the parts src/agent/parts/*.py joined in name order into one source (one
# namespace) by transport::bootstrap; see 00_channel.py.

#: Algorithms a put may ask for (Ansible's copy checks sha1 and reports md5; sha256 is the
#: put reply's own).
PUT_DIGESTS = ("sha1", "md5", "sha256")
#: From this declared size the digests are taken on a thread beside the frame reader
#: (hashlib releases the GIL): the transfer does not wait for them.
HASH_THREAD_MIN = 4 << 20
#: Chunks queued to that thread at most (the reader waits past it): 16 x 256 KiB.
HASH_QUEUE = 16


class Hasher(object):
    """The digests ``names`` (of PUT_DIGESTS) of the bytes given to ``update``, in order.
    An algorithm this Python lacks (md5 under FIPS) is left out of ``hexdigests``."""

    def __init__(self, names, threaded):
        self._hashes = {}
        for name in names:
            try:
                self._hashes[name] = hashlib.new(name)
            except ValueError:
                pass
        self._queue = self._thread = None
        if threaded and self._hashes:
            import queue

            self._queue = queue.Queue(HASH_QUEUE)
            self._thread = threading.Thread(
                target=self._run, args=(self._queue,), name="put-digests", daemon=True
            )
            self._thread.start()

    def _run(self, chunks):
        while True:
            chunk = chunks.get()
            if chunk is None:
                return
            for h in self._hashes.values():
                h.update(chunk)

    def update(self, chunk):
        if self._queue is not None:
            self._queue.put(chunk)
        else:
            for h in self._hashes.values():
                h.update(chunk)

    def close(self):
        """Stops the thread (a failed put: the digests are not wanted)."""
        if self._queue is not None:
            self._queue.put(None)
            self._queue = None

    def hexdigests(self):
        """{name: hex}, once every chunk given is hashed."""
        if self._thread is not None:
            self.close()
            self._thread.join()
            self._thread = None
        return dict((name, h.hexdigest()) for name, h in self._hashes.items())


class DigestMemo(object):
    """Digests of files this agent wrote whole (a put), by inode, valid while the file's size,
    mtime and ctime are those it had then (any write, chmod, chown or rename changes ctime).
    Bounded: the oldest of MAX entries goes first."""

    MAX = 32

    def __init__(self):
        self._lock = threading.Lock()
        self._entries = collections.OrderedDict()  # (dev, ino) -> ((size, mtime, ctime), {name: hex})

    @staticmethod
    def _key(st):
        return (st.st_dev, st.st_ino), (st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def record(self, path, digests):
        try:
            ident, state = self._key(os.stat(path))
        except OSError:
            return
        with self._lock:
            self._entries.pop(ident, None)
            self._entries[ident] = (state, dict(digests))
            while len(self._entries) > self.MAX:
                self._entries.popitem(last=False)

    def lookup(self, path, name):
        """The ``name`` digest of ``path`` if it is a file recorded here and unchanged since."""
        if not self._entries:
            return None
        try:
            ident, state = self._key(os.stat(path))
        except (OSError, TypeError, ValueError):
            return None
        with self._lock:
            entry = self._entries.get(ident)
        if entry is None or entry[0] != state:
            return None
        return entry[1].get(name)


DIGESTS = DigestMemo()
