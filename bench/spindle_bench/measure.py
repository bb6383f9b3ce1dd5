"""What a run measures besides time: py-spy phases, the bigcopy line rate, the payload files, orphaned processes and their CPU, and the process that runs ansible-playbook under a CPU cgroup (here or in the controller container)."""

import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import threading
import time

from spindle_bench.config import BENCH, CACHE
from spindle_bench.fleets import podman_env
from spindle_bench.util import CpuAcct, all_pids, read_stat, set_subreaper

# ------------------------------------------------------------------------------ profiles

#: py-spy on PATH, else the one scripts/venv.sh installs into the repository's .venv; None: none.
PYSPY = shutil.which('py-spy') or next(
    (p for p in [os.path.join(os.path.dirname(BENCH), '.venv', 'bin', 'py-spy')] if os.access(p, os.X_OK)),
    None,
)
PYSPY_RATE = 250
#: (phase, substrings of a frame that put it in the phase). Each sample goes to the phase of
#: its innermost frame that matches one (rules in this order), so a JSON decode called from
#: spindle's client counts as spindle, a Jinja2 call from a template as templating, and a
#: strategy (spindle's, Mitogen's) at the root of every stack claims only what nothing inner
#: claimed.
PHASES = [
    ('imports (module loading)', ('<module> (', 'importlib')),
    ('spindle plugin (client, module plan, connection)', ('spindle_ansible/',)),
    ('mitogen', ('ansible_mitogen/', '/mitogen/')),
    ('stock ssh connection', ('plugins/connection/ssh.py',)),
    ('module build (AnsiballZ)', ('executor/module_common.py', 'executor/powershell')),
    ('templating', ('ansible/template/', '_internal/_templating', 'jinja2/')),
    ('callbacks and results', ('plugins/callback/', 'executor/task_result.py', 'bench_timer')),
    ('task executor (rest)', ('executor/task_executor.py', 'plugins/action/')),
    ('worker process (fork, set-up)', ('executor/process/worker.py',)),
    (
        'strategy and queue (rest)',
        ('plugins/strategy/', 'executor/task_queue_manager.py', 'executor/play_iterator.py'),
    ),
    (
        'CLI, inventory, variables',
        ('ansible/cli/', 'ansible/inventory/', 'ansible/vars/', 'ansible/parsing/', 'ansible/playbook/'),
    ),
]


def _phase(stack):
    for frame in reversed(stack.split(';')):
        for name, keys in PHASES:
            if any(k in frame for k in keys):
                return name
    return 'other'


def phases(path, tasks):
    """The controller CPU samples of a py-spy raw (collapsed stacks) file by phase, as ms of
    CPU per task: {'per_task_ms': {phase: ms}, 'total_ms_per_task', 'samples', 'rate'}."""
    counts = {}
    total = 0
    with open(path, errors='replace') as f:
        for line in f:
            stack, _, n = line.rstrip('\n').rpartition(' ')
            try:
                n = int(n)
            except ValueError:
                continue
            total += n
            name = _phase(stack)
            counts[name] = counts.get(name, 0) + n
    ms = 1000.0 / PYSPY_RATE / max(1, tasks)
    return {
        'per_task_ms': {k: round(v * ms, 2) for k, v in counts.items()},
        'total_ms_per_task': round(total * ms, 2),
        'samples': total,
        'rate': PYSPY_RATE,
    }


# ------------------------------------------------------------------------------ line rate


def line_rate(fleet, hosts, path, ctl):
    """The raw ssh line rate of this fleet for the bigcopy file: `ssh tI 'cat > f' < file` to
    every target at once (the fleet's own ssh_config: no compression, no control master), as
    {'bytes', 'hosts', 'wall_s', 'MiB_per_s'} (all targets together), or None."""
    cfg = os.path.join(getattr(fleet, 'dir', ''), 'ssh_config')
    if not os.path.exists(cfg):
        return None
    size = os.path.getsize(path)
    dest = '/tmp/spindle-bench-linerate.bin'

    def one(i):
        # the file is ssh's stdin where ssh runs (in the controller container: read from the
        # bind-mounted cache, not relayed through `podman exec -i`)
        remote = 'cat > %s && rm -f %s' % (dest, dest)
        argv = ['sh', '-c', 'exec ssh -F "$1" "$2" "$3" < "$4"', 'sh', cfg, 't%d' % i, remote, path]
        return subprocess.run(
            ctl.cmd(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=600,
            env=podman_env(),
        ).returncode

    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max(1, hosts)) as ex:
        rcs = list(ex.map(one, range(hosts)))
    wall = time.monotonic() - t0
    if any(rcs):
        return None
    return {
        'bytes': size * hosts,
        'hosts': hosts,
        'wall_s': round(wall, 3),
        'MiB_per_s': round(size * hosts / wall / (1 << 20), 1),
    }


def copy_rate(timer, hosts, size, task='copy 100 MiB'):
    """From a run's timer records: the bigcopy copy task's wall (first start to last end over
    the hosts) and its throughput, or None."""
    recs = [
        r for r in timer.get('records', []) if r.get('task') == task and r.get('status') in ('ok', 'changed')
    ]
    if len(recs) != hosts:
        return None
    wall = max(r['end'] for r in recs) - min(r['start'] for r in recs)
    if wall <= 0:
        return None
    return {'copy_s': round(wall, 3), 'MiB_per_s': round(size * hosts / wall / (1 << 20), 1)}


# ------------------------------------------------------------------------------ payloads


def make_payloads():
    """The files bigcopy and manyfiles copy, made once under bench/.cache (on disk)."""
    os.makedirs(CACHE, exist_ok=True)
    big = os.path.join(CACHE, 'big-100MiB.bin')
    if not os.path.exists(big) or os.path.getsize(big) != 100 << 20:
        with open(big + '.tmp', 'wb') as f:
            for _ in range(100):
                f.write(os.urandom(1 << 20))
        os.rename(big + '.tmp', big)
    out = {'big': big}
    for n in (1000, 100):
        many = os.path.join(CACHE, 'manyfiles-%d' % n)
        if not os.path.isdir(many) or len(os.listdir(many)) != n:
            shutil.rmtree(many, ignore_errors=True)
            shutil.rmtree(many + '.tmp', ignore_errors=True)
            os.makedirs(many + '.tmp')
            for i in range(n):
                size = 256 + (i * 37) % 1792  # 256..2047 bytes, about 1 KiB on average
                with open(os.path.join(many + '.tmp', 'f%04d.txt' % i), 'w') as f:
                    f.write(os.urandom(size).hex()[: size - 1] + '\n')
            os.rename(many + '.tmp', many)
        out['many%d' % n] = many
    return out


# ------------------------------------------------------------------------------ one run


# ------------------------------------------------------------------------------ controller side
# What runs one ansible-playbook and measures the controller: here, or (--controller container)
# inside the controller container, where `bench/run --exec-controller SPEC` calls the same code.


def _orphans(me, exclude):
    out = []
    for pid in all_pids():
        st = read_stat(pid)
        if st and st[0] == me and pid not in exclude:
            out.append(pid)
    return out


def reap_orphans(me, exclude):
    """SIGTERM and wait4 every child of ours that the run left (processes that were
    re-parented to us as subreaper); returns (user s, sys s, max rss kB, [comm])."""
    user = sys_ = 0.0
    rss = 0
    names = []
    for _round in range(5):
        pids = _orphans(me, exclude)
        if not pids:
            break
        for pid in pids:
            st = read_stat(pid)
            names.append(st[1] if st else '?')
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for pid in pids:
            deadline = time.monotonic() + 5
            while True:
                try:
                    wpid, status, ru = os.wait4(pid, os.WNOHANG)
                except ChildProcessError:
                    break
                if wpid:
                    user += ru.ru_utime
                    sys_ += ru.ru_stime
                    rss = max(rss, ru.ru_maxrss)
                    break
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    deadline = time.monotonic() + 5
                time.sleep(0.02)
        time.sleep(0.2)
    return user, sys_, rss, names


def tree_rss(me, root_pid, exclude):
    """Sum of RSS (kB) of root_pid's descendants and of our other children (orphans)."""
    children = {}
    rss = {}
    for pid in all_pids():
        st = read_stat(pid)
        if st:
            children.setdefault(st[0], []).append(pid)
            rss[pid] = st[4]
    total = 0
    stack = [root_pid] + [p for p in children.get(me, []) if p not in exclude and p != root_pid]
    seen = set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        total += rss.get(p, 0)
        stack.extend(children.get(p, []))
    return total


def _wait(proc, t0, timeout, tick):
    timed_out = False
    while True:
        wpid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if wpid:
            return wpid, status, ru, timed_out
        if time.monotonic() - t0 > timeout:
            timed_out = True
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            wpid, status, ru = os.wait4(proc.pid, 0)
            return wpid, status, ru, timed_out
        if tick:
            tick()
        time.sleep(0.05)


def run_env(delta):
    """This process's environment without ANSIBLE_* and SPINDLE_*, plus `delta`."""
    env = dict(os.environ)
    for k in [k for k in env if k.startswith('ANSIBLE_') or k.startswith('SPINDLE_')]:
        del env[k]
    env.update(delta)
    return env


def execute_local(argv, env_delta, cwd, log_path, timeout, reap=True, keep=(), cgroup_name=None, tick=None):
    """Run one ansible-playbook here and measure it: wall time, rusage of it and of what it
    left behind (we are its subreaper while it runs), peak RSS of its tree, and the CPU of a
    cgroup it runs in when one can be made.  ``reap=False`` keeps what it leaves running."""
    me = os.getpid()
    exclude = set(keep) | set(_orphans(me, ()))
    ccg = CpuAcct.create(cgroup_name) if cgroup_name else None
    peak = [0]
    stop = threading.Event()
    logf = open(log_path, 'w')
    set_subreaper(True)
    t0 = time.monotonic()
    pre = (lambda: ccg.add(os.getpid())) if ccg else None
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=logf,
        stderr=subprocess.STDOUT,
        env=run_env(env_delta),
        cwd=cwd,
        start_new_session=True,
        preexec_fn=pre,
    )

    def sampler():
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], tree_rss(me, proc.pid, exclude))
            except Exception:
                pass
            stop.wait(0.5)

    th = threading.Thread(target=sampler, daemon=True)
    th.start()
    try:
        wpid, status, ru, timed_out = _wait(proc, t0, timeout, tick)
    except KeyboardInterrupt:  # stop this run's whole session, then let main clean up
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        os.wait4(proc.pid, 0)
        stop.set()
        reap_orphans(me, exclude)
        set_subreaper(False)
        if ccg:
            ccg.remove()
        logf.close()
        raise
    wall = time.monotonic() - t0
    rc = os.waitstatus_to_exitcode(status) if hasattr(os, 'waitstatus_to_exitcode') else status >> 8
    stop.set()
    th.join()
    logf.close()
    o_user, o_sys, o_rss, o_names = reap_orphans(me, exclude) if reap else (0.0, 0.0, 0, [])
    set_subreaper(False)
    ctl_cg = None
    if ccg:
        ctl_cg = ccg.usage()
        ccg.remove()
    return {
        'rc': rc,
        'timed_out': timed_out,
        'wall_s': wall,
        'ru_utime': ru.ru_utime,
        'ru_stime': ru.ru_stime,
        'ru_maxrss': ru.ru_maxrss,
        'o_user': o_user,
        'o_sys': o_sys,
        'o_rss': o_rss,
        'o_names': o_names,
        'peak_rss_tree_kb': peak[0],
        'cpu_cgroup_s': ctl_cg,
    }


def exec_controller(spec_path):
    """`bench/run --exec-controller SPEC`: the controller container's side of one run
    (SPEC: JSON written by ContainerController), or of a clean-up (action `reap`: end every
    process of the container but its init, e.g. what a warm series kept running)."""
    with open(spec_path) as f:
        spec = json.load(f)
    if spec.get('action') == 'reap':
        keep = set(spec.get('keep') or ()) | {1, os.getpid()}
        for pid in all_pids():  # the container's `sleep infinity` under its init
            try:
                with open('/proc/%d/cmdline' % pid, 'rb') as f:
                    if f.read().split(b'\0')[:2] == [b'sleep', b'infinity']:
                        keep.add(pid)
            except OSError:
                pass
        for _round in range(3):
            pids = [p for p in all_pids() if p not in keep]
            if not pids:
                break
            for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
                for pid in pids:
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
                deadline = time.monotonic() + wait
                while time.monotonic() < deadline and any(os.path.exists('/proc/%d' % p) for p in pids):
                    time.sleep(0.05)
                pids = [p for p in pids if os.path.exists('/proc/%d' % p)]
                if not pids:
                    break
        return 0
    res = execute_local(
        spec['argv'],
        spec['env'],
        spec['cwd'],
        spec['log'],
        spec['timeout'],
        reap=spec.get('reap', True),
        keep=spec.get('keep') or (),
        cgroup_name=spec.get('cgroup'),
    )
    with open(spec['result'] + '.tmp', 'w') as f:
        json.dump(res, f)
    os.rename(spec['result'] + '.tmp', spec['result'])
    return 0
