"""Small helpers: logging, /proc readers, the subreaper, CPU accounting of a process tree (CpuAcct), and the progress line."""

import ctypes
import os
import subprocess
import sys
import time

from spindle_bench.config import PAGE_KB, TICK

# ------------------------------------------------------------------------------ helpers


def log(msg):
    sys.stderr.write('bench: %s\n' % msg)
    sys.stderr.flush()


def fmt_s(s):
    s = int(s)
    return '%d:%02d' % (s // 60, s % 60)


def set_subreaper(on=True):
    """Become (or stop being) the reaper of orphaned descendants (ssh ControlPersist masters,
    daemons), so their CPU can be collected with wait4 once a run ends.  Only on while an
    ansible-playbook runs: the fleet's sshd listeners daemonize and must go to init."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1 if on else 0, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except Exception:
        return False


def read_stat(pid):
    """(ppid, comm, utime+stime, cutime+cstime, rss_kb) in seconds/kB, or None."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            s = f.read()
    except (OSError, ValueError):
        return None
    r = s.rindex(')')
    comm = s[s.index('(') + 1 : r]
    f = s[r + 2 :].split()
    return (
        int(f[1]),
        comm,
        (int(f[11]) + int(f[12])) / TICK,
        (int(f[13]) + int(f[14])) / TICK,
        int(f[21]) * PAGE_KB,
    )


def all_pids():
    return [int(p) for p in os.listdir('/proc') if p.isdigit()]


def percentile(sorted_vals, q):
    """Nearest-rank percentile of an already sorted list (plain sorting, no histogram)."""
    if not sorted_vals:
        return None
    k = max(0, min(len(sorted_vals) - 1, int(-(-q * len(sorted_vals) // 100)) - 1))
    return sorted_vals[k]


def run_quiet(argv, timeout=120, **kw):
    return subprocess.run(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout, universal_newlines=True, **kw
    )


class CpuAcct(object):
    """A CPU-accounting cgroup (v1 cpuacct, or v2 cpu.stat): counts the CPU of every process
    put in it and of all its descendants, whether or not anyone reaps them (detached
    daemons, double-forked agents).  None of this is required: `create` returns None where
    cgroups cannot be made, and the harness falls back to rusage / /proc."""

    V1 = '/sys/fs/cgroup/cpuacct'
    V2 = '/sys/fs/cgroup'

    def __init__(self, path, v2):
        self.path = path
        self.v2 = v2

    @classmethod
    def create(cls, name):
        try:
            if os.path.isfile(os.path.join(cls.V1, 'cpuacct.usage')):
                path, v2 = os.path.join(cls.V1, name), False
            elif os.path.isfile(os.path.join(cls.V2, 'cgroup.controllers')):
                path, v2 = os.path.join(cls.V2, name), True
            else:
                return None
            os.makedirs(path, exist_ok=True)
            c = cls(path, v2)
            c.usage()
            return c
        except (OSError, ValueError):
            return None

    def add(self, pid):
        with open(os.path.join(self.path, 'cgroup.procs'), 'w') as f:
            f.write('%d\n' % pid)

    def usage(self):
        """CPU seconds used in the cgroup so far."""
        if self.v2:
            with open(os.path.join(self.path, 'cpu.stat')) as f:
                for line in f:
                    if line.startswith('usage_usec'):
                        return int(line.split()[1]) / 1e6
            raise ValueError('no usage_usec')
        with open(os.path.join(self.path, 'cpuacct.usage')) as f:
            return int(f.read()) / 1e9

    def remove(self):
        # Processes a warm series keeps (a persistent daemon, ssh masters) move to the parent.
        try:
            with open(os.path.join(self.path, 'cgroup.procs')) as f:
                kept = [line.strip() for line in f if line.strip()]
            for pid in kept:
                with open(os.path.join(os.path.dirname(self.path), 'cgroup.procs'), 'w') as f:
                    f.write(pid + '\n')
        except OSError:
            pass
        for _ in range(50):
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)


# ------------------------------------------------------------------------------ progress


class Progress(object):
    def __init__(self):
        self.t0 = time.monotonic()
        self.n = 0
        self.total = 0
        self.tty = sys.stderr.isatty()
        self.label = ''
        self.run_t0 = None
        self.last = 0.0

    def start(self, label):
        self.n += 1
        self.label = label
        self.run_t0 = time.monotonic()
        if not self.tty:
            log('[%d/%d %s] %s ...' % (self.n, self.total, fmt_s(time.monotonic() - self.t0), label))
        self.tick(force=True)

    def tick(self, force=False):
        now = time.monotonic()
        if not self.tty:  # a log: a heartbeat line every 30 s of a long run
            if self.run_t0 and now - max(self.last, self.run_t0) >= 30:
                self.last = now
                log(
                    '[%d/%d %s] %s  still running, %.0fs'
                    % (self.n, self.total, fmt_s(now - self.t0), self.label, now - self.run_t0)
                )
            return
        if not force and now - self.last < 0.5:
            return
        self.last = now
        sys.stderr.write(
            '\r\033[K[%d/%d %s] %s  running %.0fs'
            % (self.n, self.total, fmt_s(now - self.t0), self.label, now - self.run_t0)
        )
        sys.stderr.flush()

    def end(self, summary):
        line = '[%d/%d %s] %s  %s' % (
            self.n,
            self.total,
            fmt_s(time.monotonic() - self.t0),
            self.label,
            summary,
        )
        if self.tty:
            sys.stderr.write('\r\033[K' + line + '\n')
            sys.stderr.flush()
        else:
            log(line)

    def note(self, msg):
        if self.tty:
            sys.stderr.write('\r\033[K')
        log(msg)


def skip_reason(logpath):
    try:
        with open(logpath) as f:
            lines = [line.strip() for line in f if 'SKIP' in line]
        return lines[-1] if lines else 'see %s' % logpath
    except OSError:
        return 'see %s' % logpath


def tail(path, n=12):
    try:
        with open(path, errors='replace') as f:
            lines = f.read().splitlines()
    except OSError:
        return ''
    keep = [line for line in lines if line.strip()]
    return '\n'.join(keep[-n:])
