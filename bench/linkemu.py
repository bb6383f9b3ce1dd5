#!/usr/bin/env python3
"""bench/linkemu.py: a user-space link emulator (this kernel has no netem).

A TCP proxy: each `--map LISTEN=UPSTREAM` listens on LISTEN (host:port) and forwards every
accepted connection to UPSTREAM (host:port).  Every chunk read from either side is queued
with a due time and written to the other side when it is due:

    one-way delay   due = arrival + RTT/2            (both directions, so RTT is added once
                                                      per round trip)
    bandwidth cap   the link of a mapping is busy for len/rate per chunk and per direction,
                    shared by every connection of that mapping (one "wire" per target):
                    due = max(arrival, link_free) + len/rate + RTT/2

Chunks keep their order (due times never decrease within a direction), and connections do
not wait for each other: there is one delay queue per direction per connection, drained by
one event loop (selectors + a timer), never a sleep per connection.  Back-pressure: a
direction stops reading once 4 MiB are queued in it and resumes when the queue drains.

What it does not emulate: the sender's TCP never sees the RTT (it talks to the proxy over
loopback), so congestion-window growth, loss and retransmission are absent; the delay is
added in the proxy's user space, so it has the event loop's jitter (about a millisecond).

    linkemu.py --rtt-ms 50 [--rate-mbit 100] --map 127.0.0.1:40000=10.1.0.2:22 [--map ...]
    linkemu.py --map-file FILE ...       # lines "LISTEN UPSTREAM" (or LISTEN=UPSTREAM)
    linkemu.py --selftest                # checks delay, ordering, parallelism, bandwidth

Prints "LISTEN <i> <host:port>" per mapping (port 0 in LISTEN picks a free port), then
"READY <n>" on stdout once every listener is bound.  SIGTERM/SIGINT stop it; with
`--stats FILE` it then writes per-mapping byte counts as JSON.
"""

import argparse
import collections
import errno
import json
import os
import selectors
import signal
import socket
import sys
import threading
import time

CHUNK = 65536
MAX_QUEUED = 4 << 20


def parse_addr(text):
    host, _, port = text.rpartition(':')
    if not host or not port.isdigit():
        raise ValueError("bad address %r (want host:port)" % text)
    return host.strip('[]'), int(port)


class Link(object):
    """One emulated wire (a mapping): its counters and, per direction, when it is free."""

    def __init__(self, listen, upstream):
        self.listen = listen
        self.upstream = upstream
        self.free_at = {'up': 0.0, 'down': 0.0}
        self.bytes = {'up': 0, 'down': 0}
        self.connections = 0


class Pipe(object):
    """One direction of one proxied connection: a delay queue from src to dst."""

    def __init__(self, conn, src, dst, direction):
        self.conn = conn
        self.src = src
        self.dst = dst
        self.direction = direction
        self.queue = collections.deque()  # (due, bytes or None for EOF)
        self.queued = 0
        self.pending = b''  # a partly written chunk
        self.reading = True
        self.eof_in = False
        self.done = False  # EOF delivered (dst shut for writing)


class Conn(object):
    def __init__(self, link, client, upstream):
        self.link = link
        self.client = client
        self.upstream = upstream
        self.up = Pipe(self, client, upstream, 'up')
        self.down = Pipe(self, upstream, client, 'down')
        self.connected = False
        self.closed = False


class Emulator(object):
    def __init__(self, mappings, rtt_ms=0.0, rate_mbit=0.0):
        self.delay = rtt_ms / 2000.0
        self.rate = rate_mbit * 1e6 / 8.0 if rate_mbit else 0.0  # bytes/s
        self.sel = selectors.DefaultSelector()
        self.links = []
        self.listeners = []
        self.conns = set()
        self.stop = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self.sel.register(self._wake_r, selectors.EVENT_READ, ('wake', None))
        for listen, upstream in mappings:
            link = Link(listen, upstream)
            s = socket.socket(socket.AF_INET6 if ':' in listen[0] else socket.AF_INET)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(listen)
            s.listen(256)
            s.setblocking(False)
            link.listen = s.getsockname()[:2]
            self.sel.register(s, selectors.EVENT_READ, ('accept', link))
            self.links.append(link)
            self.listeners.append(s)

    # -- registration: what each socket waits for -----------------------------------------
    def _interest(self, sock, conn):
        ev = 0
        for p in (conn.up, conn.down):
            if p.src is sock and p.reading and not p.eof_in and conn.connected:
                ev |= selectors.EVENT_READ
            if p.dst is sock and p.pending:
                ev |= selectors.EVENT_WRITE
        if sock is conn.upstream and not conn.connected:
            ev |= selectors.EVENT_WRITE
        try:
            key = self.sel.get_key(sock)
        except KeyError:
            key = None
        if ev and key is None:
            self.sel.register(sock, ev, ('conn', conn))
        elif ev and key.events != ev:
            self.sel.modify(sock, ev, ('conn', conn))
        elif not ev and key is not None:
            self.sel.unregister(sock)

    def _update(self, conn):
        if not conn.closed:
            self._interest(conn.client, conn)
            self._interest(conn.upstream, conn)

    # -- events ----------------------------------------------------------------------------
    def _accept(self, lsock, link):
        while True:
            try:
                client, _ = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            fam = socket.AF_INET6 if ':' in link.upstream[0] else socket.AF_INET
            up = socket.socket(fam, socket.SOCK_STREAM)
            up.setblocking(False)
            up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Conn(link, client, up)
            link.connections += 1
            self.conns.add(conn)
            err = up.connect_ex(link.upstream)
            if err not in (0, errno.EINPROGRESS):
                self._close(conn)
                continue
            self._update(conn)

    def _close(self, conn):
        if conn.closed:
            return
        conn.closed = True
        for s in (conn.client, conn.upstream):
            try:
                self.sel.unregister(s)
            except (KeyError, ValueError):
                pass
            try:
                s.close()
            except OSError:
                pass
        self.conns.discard(conn)

    def _read(self, pipe, now):
        conn = pipe.conn
        while pipe.queued < MAX_QUEUED:
            try:
                data = pipe.src.recv(CHUNK)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._close(conn)
                return
            link = conn.link
            if data:
                link.bytes[pipe.direction] += len(data)
                if self.rate:
                    start = max(now, link.free_at[pipe.direction])
                    link.free_at[pipe.direction] = start + len(data) / self.rate
                    due = link.free_at[pipe.direction] + self.delay
                else:
                    due = now + self.delay
                pipe.queue.append((due, data))
                pipe.queued += len(data)
                if len(data) < CHUNK:
                    break
            else:
                last = pipe.queue[-1][0] if pipe.queue else now + self.delay
                pipe.queue.append((max(last, now + self.delay), None))
                pipe.eof_in = True
                break
        pipe.reading = pipe.queued < MAX_QUEUED

    def _flush(self, pipe, now):
        """Write what is due; True if the connection is still open."""
        conn = pipe.conn
        while True:
            if pipe.pending:
                try:
                    n = pipe.dst.send(pipe.pending)
                except (BlockingIOError, InterruptedError):
                    return True
                except OSError:
                    self._close(conn)
                    return False
                pipe.pending = pipe.pending[n:]
                if pipe.pending:
                    return True
            if not pipe.queue or pipe.queue[0][0] > now:
                return True
            _, data = pipe.queue.popleft()
            if data is None:
                try:
                    pipe.dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                pipe.done = True
                if conn.up.done and conn.down.done:
                    self._close(conn)
                    return False
                return True
            pipe.queued -= len(data)
            if not pipe.reading and pipe.queued < MAX_QUEUED // 2:
                pipe.reading = True
            pipe.pending = data

    def _next_due(self):
        due = None
        for conn in self.conns:
            for p in (conn.up, conn.down):
                if p.queue and not p.pending:
                    d = p.queue[0][0]
                    if due is None or d < due:
                        due = d
        return due

    def run(self):
        while not self.stop:
            due = self._next_due()
            now = time.monotonic()
            timeout = None if due is None else max(0.0, due - now)
            events = self.sel.select(timeout)
            now = time.monotonic()
            touched = set()
            for key, mask in events:
                kind, obj = key.data
                if kind == 'wake':
                    try:
                        os.read(self._wake_r, 512)
                    except OSError:
                        pass
                    continue
                if kind == 'accept':
                    self._accept(key.fileobj, obj)
                    continue
                conn = obj
                if conn.closed:
                    continue
                sock = key.fileobj
                if sock is conn.upstream and not conn.connected and mask & selectors.EVENT_WRITE:
                    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        self._close(conn)
                        continue
                    conn.connected = True
                if mask & selectors.EVENT_READ:
                    for p in (conn.up, conn.down):
                        if p.src is sock and not conn.closed:
                            self._read(p, now)
                touched.add(conn)
            # deliver everything that is due, on every connection
            for conn in list(self.conns):
                for p in (conn.up, conn.down):
                    if conn.closed:
                        break
                    if p.queue or p.pending:
                        if p.queue and p.queue[0][0] <= now or p.pending:
                            self._flush(p, now)
                            touched.add(conn)
            for conn in touched:
                self._update(conn)

    def shutdown(self):
        self.stop = True
        try:
            os.write(self._wake_w, b'x')
        except OSError:
            pass

    def stats(self):
        return [
            {
                'listen': '%s:%d' % tuple(link.listen),
                'upstream': '%s:%d' % tuple(link.upstream),
                'connections': link.connections,
                'bytes_up': link.bytes['up'],
                'bytes_down': link.bytes['down'],
            }
            for link in self.links
        ]


# -- self-test -------------------------------------------------------------------------------


def _echo_server():
    srv = socket.socket()
    srv.bind(('127.0.0.1', 0))
    srv.listen(64)

    def serve(c):
        with c:
            while True:
                d = c.recv(CHUNK)
                if not d:
                    return
                c.sendall(d)

    def loop():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(c,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()
    return srv


def _sink_server():
    srv = socket.socket()
    srv.bind(('127.0.0.1', 0))
    srv.listen(8)

    def serve(c):
        with c:
            n = 0
            while True:
                d = c.recv(CHUNK)
                if not d:
                    break
                n += len(d)
            c.sendall(str(n).encode())

    def loop():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(c,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()
    return srv


def selftest():
    ok = True

    def check(cond, what):
        nonlocal ok
        print(("ok    " if cond else "FAIL  ") + what)
        ok = ok and cond

    echo = _echo_server()
    sink = _sink_server()
    rtt_ms = 100.0
    emu = Emulator(
        [(('127.0.0.1', 0), echo.getsockname()), (('127.0.0.1', 0), sink.getsockname())],
        rtt_ms=rtt_ms,
        rate_mbit=80,
    )
    t = threading.Thread(target=emu.run, daemon=True)
    t.start()
    port = emu.links[0].listen[1]
    sink_port = emu.links[1].listen[1]

    def rt(msg, out, i):
        c = socket.create_connection(('127.0.0.1', port))
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t0 = time.monotonic()
        for k in range(3):
            payload = (msg + str(k)).encode()
            c.sendall(payload)
            got = b''
            while len(got) < len(payload):
                got += c.recv(100)
            if got != payload:
                out[i] = None
                return
        out[i] = time.monotonic() - t0
        c.close()

    out = [0.0]
    rt('solo', out, 0)
    check(
        out[0] is not None and 0.29 <= out[0] < 0.45,
        "3 round trips take 3 x RTT (%.0f ms, want ~300)" % ((out[0] or 0) * 1000),
    )

    # 8 connections at once: delays overlap (a delay queue), they are not serialised
    out = [0.0] * 8
    ths = [threading.Thread(target=rt, args=('par%d-' % i, out, i)) for i in range(8)]
    t0 = time.monotonic()
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    total = time.monotonic() - t0
    check(
        all(o is not None for o in out) and total < 0.6,
        "8 parallel connections x 3 round trips in %.0f ms (serialised would be 2400)" % (total * 1000),
    )

    # ordering: a stream of numbered chunks comes back in order
    c = socket.create_connection(('127.0.0.1', port))
    blob = b''.join(b'%08d' % i for i in range(20000))
    threading.Thread(target=lambda: (c.sendall(blob), c.shutdown(socket.SHUT_WR)), daemon=True).start()
    got = b''
    while True:
        d = c.recv(CHUNK)
        if not d:
            break
        got += d
    c.close()
    check(got == blob, "160 kB echoed in order and complete, EOF passed through")

    # bandwidth: 2 MB at 80 Mbit/s = 10 MB/s takes ~0.2 s plus RTT/2
    c = socket.create_connection(('127.0.0.1', sink_port))
    t0 = time.monotonic()
    c.sendall(b'x' * 2000000)
    c.shutdown(socket.SHUT_WR)
    n = int(c.recv(100) or b'0')
    dt = time.monotonic() - t0
    c.close()
    check(
        n == 2000000 and 0.22 <= dt < 0.6,
        "2 MB through an 80 Mbit/s cap in %.0f ms (want ~300: 200 transfer + RTT)" % (dt * 1000),
    )
    emu.shutdown()
    t.join(2)
    echo.close()
    sink.close()
    print("selftest: %s" % ("passed" if ok else "FAILED"))
    return 0 if ok else 1


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--map', action='append', default=[], help='LISTEN=UPSTREAM, host:port each')
    ap.add_argument('--map-file', help='file of "LISTEN UPSTREAM" lines')
    ap.add_argument('--rtt-ms', type=float, default=0.0)
    ap.add_argument('--rate-mbit', type=float, default=0.0, help='per mapping, per direction; 0 = no cap')
    ap.add_argument('--stats', help='write per-mapping byte counts here (JSON) on exit')
    ap.add_argument('--selftest', action='store_true')
    a = ap.parse_args(argv)
    if a.selftest:
        return selftest()
    pairs = list(a.map)
    if a.map_file:
        with open(a.map_file) as f:
            for line in f:
                line = line.strip()
                if line and not line.startswith('#'):
                    pairs.append(line.replace(' ', '=', 1) if '=' not in line else line)
    if not pairs:
        ap.error('no --map given')
    mappings = []
    for p in pairs:
        left, _, right = p.partition('=')
        mappings.append((parse_addr(left.strip()), parse_addr(right.strip())))
    emu = Emulator(mappings, a.rtt_ms, a.rate_mbit)
    signal.signal(signal.SIGTERM, lambda *_: emu.shutdown())
    signal.signal(signal.SIGINT, lambda *_: emu.shutdown())
    for i, link in enumerate(emu.links):
        print("LISTEN %d %s:%d" % (i, link.listen[0], link.listen[1]))
    print("READY %d" % len(mappings), flush=True)
    emu.run()
    if a.stats:
        with open(a.stats, 'w') as f:
            json.dump({'rtt_ms': a.rtt_ms, 'rate_mbit': a.rate_mbit, 'links': emu.stats()}, f)
    return 0


if __name__ == '__main__':
    sys.exit(main())
