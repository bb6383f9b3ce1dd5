#!/usr/bin/env python3
"""Hostile-target soak of the spindle daemon (issue 13): well-behaved targets keep getting
correct answers, and the daemon's memory and log stay bounded, while hostile targets flood
logs, send endless output, endless fetch data and garbage frames, or stop reading.

    python3 scale-tests/hostile_soak.py [--secs 300] [--good 50] [--bin target/debug/spindle]

Targets are real agents on the `local` transport (a real `python3` per target) except the
hostile protocol peers, which are small fake interpreters written here that speak the frame
format: `logflood` (a HELLO, then LOG records as fast as the pipe takes them), `garbage` (a
HELLO, then random bytes), `fetchflood` (answers every fetch with a huge SIZE and endless
DATA). Real agents are made hostile by what they are asked: `yes` as an exec (endless output;
the agent's cap ends it), and a slow reader (the agent is SIGSTOPped, then sent puts).

Checks (exit 1 on any): every well-behaved call answered correctly; the daemon alive; its peak
RSS under --rss-mib; its log under --log-mib. The figures are printed (and written as JSON
with --out). `make test-scale` runs it for 60 s; the issue's 5 minutes is `--secs 300`.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, 'ansible_plugin'))

from spindle_ansible.client import Client, SpindleError  # noqa: E402

FAKE = r'''#!/usr/bin/python3
# A hostile agent for hostile_soak.py: mode from the file name (py-<mode>).
import json, os, random, struct, sys, threading, time
H = struct.Struct(">2sBBIIIII")
HELLO, CALL, REPLY, DATA, LOG = 1, 2, 3, 4, 5
SIZE = 0x20
mode = os.path.basename(sys.argv[0]).split("-", 1)[1]
out = os.fdopen(1, "wb", buffering=0)
lock = threading.Lock()
def send(kind, flags, handle, reply_to, body):
    with lock:
        out.write(H.pack(b"SP", kind, flags, len(body), 0, 1, handle, reply_to) + body)
hello = {"proto": 1, "python": "3.11.2", "executable": sys.argv[0], "realpath": sys.argv[0],
         "hostname": "hostile-" + mode, "uid": os.getuid(), "pid": os.getpid()}
send(HELLO, 0, 0, 0, json.dumps(hello).encode())
def reader():
    # frames in: answer fetches (fetchflood) and pings; the agent blob comes first
    buf = b""
    inp = os.fdopen(0, "rb", buffering=0)
    n = None
    while True:
        c = inp.read(65536)
        if not c:
            os._exit(0)
        buf += c
        if n is None:
            # skip the agent blob: everything before the first frame magic
            i = buf.find(b"SP\x02")
            if i < 0:
                buf = buf[-2:]
                continue
            buf, n = buf[i:], 0
        while len(buf) >= H.size:
            magic, kind, flags, ln, dst, src, handle, rt = H.unpack(buf[:H.size])
            if len(buf) < H.size + ln:
                break
            body, buf = buf[H.size:H.size + ln], buf[H.size + ln:]
            if kind != CALL:
                continue
            try:
                op = json.loads(body).get("op")
            except ValueError:
                continue
            if op == "ping":
                send(REPLY, 0, handle, handle, b"{}")
            elif op == "fetch_file" and mode == "fetchflood":
                threading.Thread(target=flood_fetch, args=(handle,), daemon=True).start()
def flood_fetch(handle):
    send(DATA, SIZE, handle, 0, struct.pack(">Q", 1 << 40))
    chunk = os.urandom(65536)
    while True:
        send(DATA, 0, handle, 0, chunk)
        time.sleep(0.005)
threading.Thread(target=reader, daemon=True).start()
if mode == "logflood":
    i = 0
    while True:
        i += 1
        send(LOG, 0, 0, 0, json.dumps({"level": "WARNING", "name": "hostile",
                                       "msg": "flood %d %s" % (i, "x" * 200)}).encode())
elif mode == "garbage":
    time.sleep(0.2)
    while True:
        out.write(bytes(random.getrandbits(8) for _ in range(4096)).replace(b"SP", b"sp"))
        time.sleep(0.01)
else:
    while True:
        time.sleep(3600)
'''


def rss_kib(pid):
    try:
        with open('/proc/%d/status' % pid) as f:
            for line in f:
                if line.startswith('VmRSS:'):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class Stats(object):
    def __init__(self):
        self.lock = threading.Lock()
        self.good_ok = 0
        self.good_bad = []
        self.hostile = {}

    def bad(self, what):
        with self.lock:
            if len(self.good_bad) < 50:
                self.good_bad.append(what)

    def count(self, kind, outcome):
        with self.lock:
            k = '%s: %s' % (kind, outcome)
            self.hostile[k] = self.hostile.get(k, 0) + 1


def local(name, python='/usr/bin/python3'):
    return {'transport': 'local', 'name': name, 'python': python}


def good_loop(sock, i, stop, stats):
    c = Client(sock, timeout=60)
    t = local('good%d' % i)
    n = 0
    while not stop.is_set():
        n += 1
        token = 'tok-%d-%d' % (i, n)
        try:
            r = c.exec(t, argv=['echo', token], call_timeout=60)
            if r.rc == 0 and r.stdout.decode('utf-8', 'replace').strip() == token:
                with stats.lock:
                    stats.good_ok += 1
            else:
                stats.bad('good%d: %r' % (i, r))
        except SpindleError as e:
            stats.bad('good%d: %s: %s' % (i, e.kind, e.message))
        stop.wait(0.2)
    c.close()


def hostile_loop(sock, kind, i, stop, stats, work, fakes):
    c = Client(sock, timeout=30)
    name = '%s%d' % (kind, i)
    t = local(name, fakes.get(kind, '/usr/bin/python3'))
    stopped = False
    while not stop.is_set():
        try:
            if kind == 'endless_output':
                c.exec(t, shell='yes spindle-soak', call_timeout=20)
            elif kind == 'fetchflood':
                c.fetch(t, '/etc/hostname', os.path.join(work, name + '.fetched'), call_timeout=3)
            elif kind == 'slow_reader':
                if not stopped:
                    pid = c.ping(t, call_timeout=20).get('hello', {}).get('pid')
                    if pid:
                        os.kill(pid, signal.SIGSTOP)
                        stopped = True
                c.put(t, os.path.join(work, 'payload'), '/tmp/spindle-soak-%s' % name, call_timeout=3)
            else:  # logflood, garbage
                c.ping(t, call_timeout=3)
            stats.count(kind, 'answered')
        except SpindleError as e:
            stats.count(kind, e.kind)
        stop.wait(0.5)
    c.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--secs', type=float, default=60.0)
    ap.add_argument('--good', type=int, default=50)
    ap.add_argument('--each', type=int, default=2, help='targets of each hostile kind (5 kinds)')
    ap.add_argument(
        '--bin', default=os.environ.get('SPINDLE_BIN') or os.path.join(REPO, 'target', 'debug', 'spindle')
    )
    ap.add_argument(
        '--rss-mib',
        type=float,
        default=448.0,
        help='the client buffer budget, 2 replies being assembled, 64 MiB (docs/security.md)',
    )
    ap.add_argument('--log-mib', type=float, default=8.0)
    ap.add_argument('--out')
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix='spindle-soak-')
    fakes = {}
    for kind in ('logflood', 'garbage', 'fetchflood'):
        path = os.path.join(work, 'py-' + kind)
        with open(path, 'w') as f:
            f.write(FAKE)
        os.chmod(path, 0o755)
        fakes[kind] = path
    with open(os.path.join(work, 'payload'), 'wb') as f:
        f.write(os.urandom(4 << 20))
    sock = os.path.join(work, 'sock')
    log_path = os.path.join(work, 'daemon.log')
    log = open(log_path, 'wb')
    daemon = subprocess.Popen(
        [args.bin, 'serve', '--socket', sock, '-v'], stdout=log, stderr=log, start_new_session=True
    )
    deadline = time.monotonic() + 15
    while not os.path.exists(sock) and time.monotonic() < deadline:
        time.sleep(0.05)
    stats = Stats()
    stop = threading.Event()
    threads = [
        threading.Thread(target=good_loop, args=(sock, i, stop, stats), daemon=True) for i in range(args.good)
    ]
    kinds = ('logflood', 'endless_output', 'fetchflood', 'slow_reader', 'garbage')
    threads += [
        threading.Thread(target=hostile_loop, args=(sock, k, i, stop, stats, work, fakes), daemon=True)
        for k in kinds
        for i in range(args.each)
    ]
    for t in threads:
        t.start()
    peak = 0
    t0 = time.monotonic()
    last = t0
    while time.monotonic() - t0 < args.secs and daemon.poll() is None:
        time.sleep(0.5)
        peak = max(peak, rss_kib(daemon.pid) or 0)
        if time.monotonic() - last >= 10:
            last = time.monotonic()
            print(
                'soak: %3.0f s  good answers %d (bad %d)  daemon RSS %.0f MiB  log %.1f MiB'
                % (
                    last - t0,
                    stats.good_ok,
                    len(stats.good_bad),
                    (rss_kib(daemon.pid) or 0) / 1024.0,
                    os.path.getsize(log_path) / 1048576.0,
                ),
                flush=True,
            )
    alive = daemon.poll() is None
    stop.set()
    for t in threads:
        t.join(30)
    # stopped agents are resumed so the daemon's shutdown can end them
    subprocess.run(['pkill', '-CONT', '-f', 'spindle-agent'], stderr=subprocess.DEVNULL)
    if alive:
        try:
            Client(sock, timeout=10).request('shutdown')
        except (SpindleError, OSError):
            pass
        try:
            daemon.wait(20)
        except subprocess.TimeoutExpired:
            daemon.kill()
    log.close()
    log_mib = os.path.getsize(log_path) / 1048576.0
    result = {
        'secs': args.secs,
        'good_targets': args.good,
        'hostile_each': args.each,
        'good_answers': stats.good_ok,
        'good_wrong': stats.good_bad,
        'hostile_outcomes': stats.hostile,
        'daemon_alive': alive,
        'daemon_peak_rss_mib': round(peak / 1024.0, 1),
        'daemon_log_mib': round(log_mib, 2),
        'limits': {'rss_mib': args.rss_mib, 'log_mib': args.log_mib},
    }
    print(json.dumps(result, indent=1, sort_keys=True))
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(result, f, indent=1, sort_keys=True)
    problems = []
    if not alive:
        problems.append('the daemon died (exit %s)' % daemon.returncode)
    if stats.good_bad:
        problems.append(
            '%d wrong answers to well-behaved targets, e.g. %s' % (len(stats.good_bad), stats.good_bad[:3])
        )
    if stats.good_ok < args.good:
        problems.append('only %d good answers' % stats.good_ok)
    if peak / 1024.0 > args.rss_mib:
        problems.append('daemon peak RSS %.0f MiB over %.0f' % (peak / 1024.0, args.rss_mib))
    if log_mib > args.log_mib:
        problems.append('daemon log %.1f MiB over %.1f' % (log_mib, args.log_mib))
    for p in problems:
        print('soak: FAIL %s' % p)
    if problems:
        print('soak: work dir kept: %s' % work)
        return 1
    shutil.rmtree(work, ignore_errors=True)
    print('soak: ok')
    return 0


if __name__ == '__main__':
    sys.exit(main())
