# spindle agent, 48_blob_store: module code by content hash (the blobs the controller pushes),
# least recently used dropped past a byte bound.
# One of the parts src/agent/parts/*.py joined in name order into one source (one
# namespace) by transport::bootstrap; see 00_channel.py.

#: Bytes of module code the agent keeps (plain and packed forms together). Past it the least
#: recently used blobs go; a call that names one gone is answered `missing_blobs` before it
#: runs anything, the daemon forgets what it sent this stream, and the plugin calls once more
#: with the code pushed again. SPINDLE_AGENT_CODE_MAX (bytes) in the agent's environment sets
#: another bound (tests).
CODE_MAX = int(os.environ.get("SPINDLE_AGENT_CODE_MAX") or 0) or 128 << 20


class BlobStore(object):
    """Code blobs (module and module_utils sources) by sha256 hex, and as they came (base64 of
    zlib) when packed, to pass on to nested contexts as they are. Bounded by ``limit`` bytes,
    least recently used first out (one blob is always kept, whatever its size). Written by the
    dispatch thread, read by module runs on other threads: under a lock."""

    def __init__(self, limit=CODE_MAX):
        self.limit = limit
        self.plain = collections.OrderedDict()
        self.packed = {}
        self.size = 0
        self.lock = threading.Lock()

    def _drop(self, digest):
        data = self.plain.pop(digest, None)
        packed = self.packed.pop(digest, None)
        self.size -= (len(data) if data is not None else 0) + (len(packed) if packed is not None else 0)

    def put(self, digest, data, packed=None):
        with self.lock:
            self._drop(digest)
            self.plain[digest] = data
            self.size += len(data)
            if packed is not None:
                self.packed[digest] = packed
                self.size += len(packed)
            while self.size > self.limit and len(self.plain) > 1:
                self._drop(next(iter(self.plain)))

    def get(self, digest):
        with self.lock:
            data = self.plain.get(digest)
            if data is not None:
                self.plain.move_to_end(digest)
            return data

    def hashes(self):
        with self.lock:
            return sorted(self.plain)

    def for_child(self, refs):
        """(packed, plain base64) of the blobs ``refs`` names; KeyError for one not held."""
        with self.lock:
            packed = dict((h, self.packed[h]) for h in refs if h in self.packed)
            plain = dict(
                (h, base64.b64encode(self.plain[h]).decode("ascii")) for h in refs if h not in packed
            )
        return packed, plain


CODE = BlobStore()
