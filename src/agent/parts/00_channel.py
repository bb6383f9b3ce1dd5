"""spindle target-side agent: speaks the framed protocol of docs/protocol.md on its stdin/stdout.

It is exec()'d from RAM by stage 1 (nothing is written on the target), answers CALLs
(ops: ping, exec, put_file, fetch_file, run_module, copy_fast, copy_stream, cache_put,
cache_drop, relay_put, store_blobs, blob_list, spawn_context, close_context, cancel,
log_level, shutdown) and exits when its input closes,
killing the process groups of the commands it still runs. Standard library only,
Python 3.8 and later.

The source is in parts, src/agent/parts/NN_*.py, each owning one area (this one: the frame
channel and the wire constants; 10 exec, 20 files, 30 nested contexts, 40 a hop's file cache,
50 modules, 60 dispatch and main). transport::bootstrap joins them in name order into one
source, one namespace, and the tests do the same (tests/python/agent_source.py).
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
