"""Ansible callback ``bench_timer`` for bench/run: per host, per task start and end times,
the play recap, and (when the run goes through spindle) the daemon's ``stats`` and its own
CPU time, written as JSON to ``$BENCH_TIMER_OUT`` when the playbook ends.

Times are ``time.monotonic()`` in the controller's main process, taken when the callback
event reaches it: a task's start is ``v2_runner_on_start`` (sent by the worker when it
starts the host's task), its end is the host's final result (ok, failed, skipped,
unreachable).  Both pass through Ansible's result queue, so each latency includes that
queue's delay (the same for every mode).  Where a strategy does not send
``v2_runner_on_start``, the task's ``v2_playbook_on_task_start`` time is used instead
(``start_source`` says which).
"""

from __future__ import annotations

DOCUMENTATION = """
    name: bench_timer
    type: aggregate
    short_description: per-task, per-host timings for the spindle bench harness
    description:
        - Writes JSON to E(BENCH_TIMER_OUT) at the end of the playbook.
    requirements:
        - enable in configuration (callbacks_enabled = bench_timer)
"""

import json
import os
import socket
import struct
import time

from ansible.plugins.callback import CallbackBase


def _host(result_or_host):
    h = getattr(result_or_host, '_host', result_or_host)
    return getattr(h, 'name', str(h))


def _spindle_stats(path, timeout=5.0):
    """The daemon's ``stats`` reply (4-byte big-endian length + JSON, docs/api.md)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        body = json.dumps({"id": 1, "op": "stats"}).encode()
        s.sendall(struct.pack('>I', len(body)) + body)

        def read(n):
            buf = b''
            while len(buf) < n:
                chunk = s.recv(n - len(buf))
                if not chunk:
                    raise OSError("daemon closed the connection")
                buf += chunk
            return buf

        (n,) = struct.unpack('>I', read(4))
        reply = json.loads(read(n).decode())
        if not reply.get('ok'):
            return {'error': reply.get('error')}
        return reply.get('result')
    finally:
        s.close()


def _children_named(name):
    """(pid, utime+stime seconds, VmHWM kB) of this process's children whose comm is name."""
    me = os.getpid()
    tick = os.sysconf('SC_CLK_TCK')
    out = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % entry) as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index('(') + 1 : stat.rindex(')')]
        fields = stat[stat.rindex(')') + 2 :].split()
        if int(fields[1]) != me or comm != name:
            continue
        hwm = None
        try:
            with open('/proc/%s/status' % entry) as f:
                for line in f:
                    if line.startswith('VmHWM:'):
                        hwm = int(line.split()[1])
        except OSError:
            pass
        out.append({'pid': int(entry), 'cpu_s': (int(fields[11]) + int(fields[12])) / tick, 'vmhwm_kb': hwm})
    return out


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = 'aggregate'
    CALLBACK_NAME = 'bench_timer'
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super(CallbackModule, self).__init__(*args, **kwargs)
        self.out = os.environ.get('BENCH_TIMER_OUT')
        self.t0 = time.monotonic()
        self.wall0 = time.time()
        self.tasks = []  # [{name, uuid, start, handler}]
        self.current = None
        self.starts = {}  # (task uuid, host) -> monotonic
        self.records = []  # [{task, host, start, end, status, start_source}]
        self.strategy = None

    # -- tasks -----------------------------------------------------------------------------
    def v2_playbook_on_play_start(self, play):
        self.strategy = getattr(play, 'strategy', None)

    def _task_start(self, task, handler):
        self.current = {
            'name': task.get_name(),
            'uuid': task._uuid,
            'action': task.action,
            'start': time.monotonic() - self.t0,
            'handler': handler,
        }
        self.tasks.append(self.current)

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._task_start(task, False)

    def v2_playbook_on_handler_task_start(self, task):
        self._task_start(task, True)

    def v2_runner_on_start(self, host, task):
        self.starts[(task._uuid, _host(host))] = time.monotonic() - self.t0

    def _end(self, result, status):
        now = time.monotonic() - self.t0
        task = result._task
        host = _host(result)
        start = self.starts.pop((task._uuid, host), None)
        source = 'runner_on_start'
        if start is None:
            source = 'task_start'
            start = next((t['start'] for t in reversed(self.tasks) if t['uuid'] == task._uuid), now)
        self.records.append(
            {
                'task': task.get_name(),
                'action': task.action,
                'host': host,
                'start': round(start, 6),
                'end': round(now, 6),
                'status': status,
                'start_source': source,
            }
        )

    def v2_runner_on_ok(self, result, **kwargs):
        self._end(result, 'changed' if result._result.get('changed') else 'ok')

    def v2_runner_on_failed(self, result, ignore_errors=False, **kwargs):
        self._end(result, 'ignored' if ignore_errors else 'failed')

    def v2_runner_on_skipped(self, result, **kwargs):
        self._end(result, 'skipped')

    def v2_runner_on_unreachable(self, result, **kwargs):
        self._end(result, 'unreachable')

    # -- the end ---------------------------------------------------------------------------
    def v2_playbook_on_stats(self, stats):
        if not self.out:
            return
        recap = {}
        for host in sorted(stats.processed.keys()):
            recap[host] = stats.summarize(host)
        doc = {
            'strategy': self.strategy,
            'wall_start': self.wall0,
            'elapsed_s': time.monotonic() - self.t0,
            'tasks': self.tasks,
            'records': self.records,
            'recap': recap,
        }
        sock = os.environ.get('SPINDLE_SOCKET')
        if sock:
            try:
                doc['spindle_stats'] = _spindle_stats(sock)
            except Exception as e:  # the report says why it has no spindle figures
                doc['spindle_stats'] = {'error': '%s: %s' % (type(e).__name__, e)}
            doc['spindle_daemons'] = _children_named('spindle')
        tmp = self.out + '.tmp'
        with open(tmp, 'w') as f:
            json.dump(doc, f)
        os.rename(tmp, self.out)
