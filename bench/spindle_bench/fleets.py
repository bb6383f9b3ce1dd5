"""The fleets a suite runs against: network namespaces with sshd (netns-fleet.sh), podman containers (podman-fleet.sh), compose (untested); each brings its targets up and down and measures them."""

import concurrent.futures
import os
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import time

from spindle_bench.config import CACHE, CONTAINERS_CONF, FLEET_SH, PODMAN_FLEET_SH, ROOT
from spindle_bench.util import skip_reason
from spindle_bench.util import CpuAcct, all_pids, read_stat, run_quiet

# ------------------------------------------------------------------------------ fleets


class FleetUnavailable(Exception):
    pass


class NetnsFleet(object):
    """containers/netns-fleet.sh: targets are network namespaces on this machine."""

    kind = 'netns'

    def __init__(self, name, count, logdir):
        self.name = name
        self.count = count
        self.logdir = logdir
        self.inventory = None
        self.dir = None
        self.up_s = None

    def up(self):
        t0 = time.monotonic()
        with open(os.path.join(self.logdir, 'fleet-%s.log' % self.name), 'a') as errf:
            p = subprocess.run(
                ['bash', FLEET_SH, 'up', self.name, str(self.count)],
                stdout=subprocess.PIPE,
                stderr=errf,
                universal_newlines=True,
            )
        if p.returncode == 77:
            raise FleetUnavailable(
                'containers/netns-fleet.sh exited 77 (cannot run here: see %s)'
                % os.path.join(self.logdir, 'fleet-%s.log' % self.name)
            )
        if p.returncode != 0:
            raise RuntimeError(
                'netns-fleet.sh up %s %d failed (exit %d)' % (self.name, self.count, p.returncode)
            )
        self.inventory = p.stdout.strip().splitlines()[-1]
        self.dir = os.path.dirname(self.inventory)
        self.up_s = time.monotonic() - t0
        with open(os.path.join(self.dir, 'hosts.txt')) as f:
            self.ips = [line.strip() for line in f if line.strip()]
        self.ns_inodes = {}
        for i in range(self.count):
            self.ns_inodes[os.stat('/run/netns/sp-%s-%d' % (self.name, i)).st_ino] = i
        # every process a target's sshd starts from now on is accounted in this cgroup
        self.cgroup = CpuAcct.create('spbench-%d-t%s' % (os.getpid(), self.name))
        if self.cgroup:
            try:
                for i in range(self.count):
                    self.cgroup.add(self.listener(i))
            except (OSError, TypeError):
                self.cgroup.remove()
                self.cgroup = None
        return self.inventory

    def info(self):
        return {
            'kind': 'netns',
            'network': 'a network namespace per target, a veth pair to this machine',
            'target_cpu': 'a cpuacct cgroup holding the targets\' sshd listeners'
            if getattr(self, 'cgroup', None)
            else '/proc, by network namespace',
            'wire': 'host-side veth counters',
            'files': 'tmpfs inode numbers of each target\'s private /tmp, /var/tmp, /root',
        }

    def down(self):
        with open(os.path.join(self.logdir, 'fleet-%s.log' % self.name), 'a') as errf:
            subprocess.run(['bash', FLEET_SH, 'down', self.name], stdout=subprocess.DEVNULL, stderr=errf)
        if getattr(self, 'cgroup', None):
            self.cgroup.remove()

    def exec(self, i, argv, timeout=60):
        return run_quiet(['bash', FLEET_SH, 'exec', self.name, str(i)] + list(argv), timeout=timeout)

    def host_key(self):
        with open(os.path.join(self.dir, 'ssh_host_ed25519_key.pub')) as f:
            return ' '.join(f.read().split()[:2])

    def key_file(self):
        return os.path.join(self.dir, 'id_ed25519')

    # -- measurements ---------------------------------------------------------------------
    def listener(self, i):
        try:
            with open(os.path.join(self.dir, 'sshd-%d.pid' % i)) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def ns_pids(self):
        """{target index: [pids]}: what `ip netns pids sp-NAME-i` lists, for every target in
        one scan of /proc (a process's /proc/PID/ns/net names its network namespace)."""
        out = {i: [] for i in range(self.count)}
        for pid in all_pids():
            try:
                link = os.readlink('/proc/%d/ns/net' % pid)
            except OSError:
                continue
            m = re.match(r'net:\[(\d+)\]', link)
            if m and int(m.group(1)) in self.ns_inodes:
                out[self.ns_inodes[int(m.group(1))]].append(pid)
        return out

    def target_cpu_cgroup(self):
        """Seconds of CPU in the fleet's cgroup (the sshd listeners and all they started)."""
        return self.cgroup.usage() if getattr(self, 'cgroup', None) else None

    def target_cpu(self):
        """Seconds of CPU of every process in the targets: utime+stime of live processes plus
        cutime+cstime (what they have reaped: finished ssh sessions, modules, shells)."""
        total = 0.0
        nproc = 0
        for pids in self.ns_pids().values():
            for pid in pids:
                st = read_stat(pid)
                if st:
                    total += st[2] + st[3]
                    nproc += 1
        return total, nproc

    def settle(self, timeout=10.0):
        """Wait until every target runs nothing but its sshd listener (the run's sessions,
        agents and interpreters have exited and been reaped).  Returns seconds waited, or
        None if some target still had other processes at the timeout."""
        t0 = time.monotonic()
        listeners = {i: self.listener(i) for i in range(self.count)}
        while True:
            busy = [i for i, pids in self.ns_pids().items() if [p for p in pids if p != listeners[i]]]
            if not busy:
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                return None
            time.sleep(0.1)

    def wire(self):
        """(bytes to targets, bytes from targets): host-side veth counters (tx = towards the
        target).  Counts every frame on the veth, TCP/IP headers included."""
        to = frm = 0
        for i in range(self.count):
            base = '/sys/class/net/sp%sh%d/statistics/' % (self.name, i)
            with open(base + 'tx_bytes') as f:
                to += int(f.read())
            with open(base + 'rx_bytes') as f:
                frm += int(f.read())
        return to, frm

    FILES_SCRIPT = (
        'for d in /tmp /var/tmp /root; do n=$(find "$d" -xdev -path "/tmp/spindle-bench*" -prune '
        '-o -print 2>/dev/null | wc -l); '
        'f=$(mktemp -p "$d" .spbench-ino.XXXXXX) && i=$(stat -c %i "$f") && rm -f "$f"; '
        'echo "$d $n ${i:-0}"; done'
    )

    def files(self):
        """{target: {dir: (entries, probe inode)}} for /tmp, /var/tmp, /root (each a private
        tmpfs per target).  tmpfs numbers inodes from a per-mount counter, so the difference
        of two probe inodes counts every file, directory or link created in between, even
        ones deleted again."""

        def one(i):
            p = self.exec(i, ['sh', '-c', self.FILES_SCRIPT])
            d = {}
            for line in p.stdout.splitlines():
                parts = line.split()
                if len(parts) == 3:
                    d[parts[0]] = (int(parts[1]), int(parts[2]))
            return i, d

        with concurrent.futures.ThreadPoolExecutor(8) as ex:
            return dict(ex.map(one, range(self.count)))


class ComposeFleet(object):
    """containers/compose.yml with docker/podman compose: targets are containers reached on
    published ports.  Documented, not tested on the machine the harness was written on (it
    has no container engine).  Target CPU and bytes are read inside each container
    (cgroup v2 cpu.stat, eth0 counters); files as for netns."""

    kind = 'compose'
    COMPOSE = os.path.join(ROOT, 'containers', 'compose.yml')

    def __init__(self, name, count, logdir):
        self.name = name
        self.count = count
        self.logdir = logdir
        self.project = 'spbench%s' % name
        self.dir = os.path.join(CACHE, 'compose-%s' % name)
        self.up_s = None
        eng = os.environ.get('BENCH_COMPOSE')
        if eng:
            self.cmd = shlex.split(eng)
        elif shutil.which('docker') and run_quiet(['docker', 'compose', 'version']).returncode == 0:
            self.cmd = ['docker', 'compose']
        elif shutil.which('podman') and run_quiet(['podman', 'compose', 'version']).returncode == 0:
            self.cmd = ['podman', 'compose']
        elif shutil.which('podman-compose'):
            self.cmd = ['podman-compose']
        else:
            raise FleetUnavailable('no container engine with compose (docker compose, podman compose)')

    def _compose(self, *args, timeout=600):
        env = dict(os.environ, SPINDLE_FLEET_DIR=self.dir)
        return run_quiet(
            self.cmd + ['-f', self.COMPOSE, '-p', self.project] + list(args), timeout=timeout, env=env
        )

    def up(self):
        t0 = time.monotonic()
        os.makedirs(self.dir, exist_ok=True)
        key = os.path.join(self.dir, 'id_ed25519')
        if not os.path.exists(key):
            subprocess.run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-f', key], check=True)
        shutil.copy(key + '.pub', os.path.join(self.dir, 'authorized_keys'))
        p = self._compose('up', '-d', '--build', '--scale', 'target=%d' % self.count, timeout=3600)
        if p.returncode != 0:
            raise RuntimeError('compose up failed: %s' % p.stderr[-2000:])
        self.ports = []
        for i in range(1, self.count + 1):
            p = self._compose('port', '--index', str(i), 'target', '22')
            self.ports.append(int(p.stdout.strip().rsplit(':', 1)[1]))
        deadline = time.monotonic() + 60
        for port in self.ports:
            while True:
                try:
                    with socket.create_connection(('127.0.0.1', port), timeout=2) as s:
                        if s.recv(4) == b'SSH-':
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError('compose target on port %d does not answer ssh' % port)
                time.sleep(0.5)
        self.inventory = os.path.join(self.dir, 'inventory.ini')
        with open(self.inventory, 'w') as f:
            f.write('[fleet]\n')
            for i, port in enumerate(self.ports):
                f.write('t%d ansible_host=127.0.0.1 ansible_port=%d ansible_user=root\n' % (i, port))
            f.write('\n[fleet:vars]\nansible_ssh_private_key_file=%s\n' % key)
            f.write("ansible_ssh_common_args='-o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no'\n")
            f.write('ansible_python_interpreter=/usr/bin/python3\n')
        self.ips = ['127.0.0.1'] * self.count
        self.up_s = time.monotonic() - t0
        return self.inventory

    def info(self):
        return {'kind': 'compose', 'engine': ' '.join(self.cmd), 'network': 'published ports on 127.0.0.1'}

    def down(self):
        self._compose('down', '-v', '--remove-orphans')

    def exec(self, i, argv, timeout=60):
        return self._compose('exec', '-T', '--index', str(i + 1), 'target', *argv, timeout=timeout)

    def host_key(self):
        return None  # per-container host keys: the inventory does not check them

    def key_file(self):
        return os.path.join(self.dir, 'id_ed25519')

    def _each(self, script):
        def one(i):
            return self.exec(i, ['sh', '-c', script]).stdout

        with concurrent.futures.ThreadPoolExecutor(8) as ex:
            return list(ex.map(one, range(self.count)))

    def target_cpu(self):
        total = 0.0
        for out in self._each('grep usage_usec /sys/fs/cgroup/cpu.stat'):
            m = re.search(r'usage_usec (\d+)', out)
            total += int(m.group(1)) / 1e6 if m else 0.0
        return total, None

    def settle(self, timeout=10.0):
        time.sleep(1.0)
        return 1.0

    def target_cpu_cgroup(self):
        return None

    def wire(self):
        to = frm = 0
        for out in self._each(
            'cat /sys/class/net/eth0/statistics/rx_bytes /sys/class/net/eth0/statistics/tx_bytes'
        ):
            v = out.split()
            if len(v) == 2:
                to += int(v[0])
                frm += int(v[1])
        return to, frm

    FILES_SCRIPT = NetnsFleet.FILES_SCRIPT
    files = NetnsFleet.files  # /tmp and /var/tmp are tmpfs (compose.yml); /root is not, so its
    # inode difference is not a count there: left as measured


def podman_env():
    """The environment for podman commands: the project's containers.conf (runc, no default
    ulimits; containers/README.md) unless CONTAINERS_CONF is set already."""
    return dict(os.environ, CONTAINERS_CONF=os.environ.get('CONTAINERS_CONF', CONTAINERS_CONF))


def podman(*args, timeout=120):
    return run_quiet(['podman'] + list(args), timeout=timeout, env=podman_env())


def cpuacct_file(pid):
    """(path, v2) of the CPU usage file of process pid's cgroup, as the host sees it (a
    container's own cgroup, for the container's init), or None."""
    try:
        with open('/proc/%d/cgroup' % pid) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        hid, ctrls, path = line.split(':', 2)
        if 'cpuacct' in ctrls.split(','):
            for d in (ctrls, 'cpuacct', 'cpu,cpuacct'):
                f = os.path.join('/sys/fs/cgroup', d, path.lstrip('/'), 'cpuacct.usage')
                if os.path.isfile(f):
                    return f, False
    for line in lines:
        hid, ctrls, path = line.split(':', 2)
        if hid == '0' and ctrls == '':
            f = os.path.join('/sys/fs/cgroup', path.lstrip('/'), 'cpu.stat')
            if os.path.isfile(f):
                return f, True
    return None


def read_cpuacct(cf):
    """CPU seconds from a cpuacct_file() result."""
    path, v2 = cf
    with open(path) as f:
        if not v2:
            return int(f.read()) / 1e9
        for line in f:
            if line.startswith('usage_usec'):
                return int(line.split()[1]) / 1e6
    raise ValueError('no usage_usec in %s' % path)


class PodmanFleet(NetnsFleet):
    """containers/podman-fleet.sh: targets are podman containers (from
    localhost/spindle-target), each with sshd as its init and its own address on podman's
    bridge; reached over ssh like the netns targets.  Rootful podman, so the containers'
    processes are processes of this machine and everything is measured from here, the way
    the netns fleet is: target CPU from each container's own cgroup (and from /proc, by the
    containers' network namespaces), bytes from each container's eth0 counters
    (/proc/PID/net/dev of its init: what its veth carries), files from tmpfs inode numbers of
    the containers' /tmp, /var/tmp and /root (the fleet is started with --tmpfs) through
    /proc/PID/root, without running anything inside the targets."""

    kind = 'podman'

    def up(self):
        t0 = time.monotonic()
        logpath = os.path.join(self.logdir, 'fleet-%s.log' % self.name)
        with open(logpath, 'a') as errf:
            p = subprocess.run(
                ['bash', PODMAN_FLEET_SH, 'up', self.name, str(self.count), '--tmpfs'],
                stdout=subprocess.PIPE,
                stderr=errf,
                universal_newlines=True,
                env=podman_env(),
            )
        if p.returncode == 77:
            raise FleetUnavailable('containers/podman-fleet.sh exited 77: %s' % skip_reason(logpath))
        if p.returncode != 0:
            raise RuntimeError(
                'podman-fleet.sh up %s %d failed (exit %d, see %s)'
                % (self.name, self.count, p.returncode, logpath)
            )
        self.inventory = p.stdout.strip().splitlines()[-1]
        self.dir = os.path.dirname(self.inventory)
        self.up_s = time.monotonic() - t0
        with open(os.path.join(self.dir, 'hosts.txt')) as f:
            self.ips = [line.strip() for line in f if line.strip()]
        with open(os.path.join(self.dir, 'names.txt')) as f:
            self.names = [line.strip() for line in f if line.strip()]
        q = podman('inspect', '--format', '{{.Name}} {{.State.Pid}} {{.Image}}', *self.names)
        if q.returncode != 0:
            raise RuntimeError('podman inspect of fleet %s failed: %s' % (self.name, q.stderr.strip()))
        by = {}
        for line in q.stdout.splitlines():
            parts = line.split()
            if len(parts) == 3:
                by[parts[0].lstrip('/')] = (int(parts[1]), parts[2])
        self.pids = [by[n][0] for n in self.names]
        self.image_id = by[self.names[0]][1][:12]
        self.ns_inodes = {}
        for i, pid in enumerate(self.pids):
            self.ns_inodes[os.stat('/proc/%d/ns/net' % pid).st_ino] = i
        self.cgroups = [cpuacct_file(pid) for pid in self.pids]
        return self.inventory

    def info(self):
        env = {}
        try:
            with open(os.path.join(self.dir, 'fleet.env')) as f:
                for line in f:
                    k, _, v = line.strip().partition('=')
                    env[k] = v
        except OSError:
            pass
        return {
            'kind': 'podman',
            'image': env.get('IMAGE'),
            'image_id': getattr(self, 'image_id', None),
            'network': "podman's default bridge (ssh to each container's own address)",
            'target_cpu': (
                'each container\'s cgroup (%s)' % ('cgroup v2 cpu.stat' if self.cgroups[0][1] else 'cpuacct')
                if self.cgroups and all(self.cgroups)
                else '/proc, by network namespace (no container cgroup found)'
            ),
            'wire': "each container's eth0 counters (/proc/PID/net/dev of its init)",
            'files': 'tmpfs inode numbers of /tmp, /var/tmp, /root in each container (podman-fleet.sh --tmpfs)',
        }

    def down(self):
        with open(os.path.join(self.logdir, 'fleet-%s.log' % self.name), 'a') as errf:
            subprocess.run(
                ['bash', PODMAN_FLEET_SH, 'down', self.name],
                stdout=subprocess.DEVNULL,
                stderr=errf,
                env=podman_env(),
            )

    def exec(self, i, argv, timeout=60):
        return run_quiet(['podman', 'exec', self.names[i]] + list(argv), timeout=timeout, env=podman_env())

    def listener(self, i):
        return self.pids[i]  # sshd is each container's init

    def target_cpu_cgroup(self):
        if not self.cgroups or not all(self.cgroups):
            return None
        try:
            return sum(read_cpuacct(c) for c in self.cgroups)
        except (OSError, ValueError):
            return None

    def wire(self):
        """(bytes to targets, bytes from targets): each container's eth0 (rx = towards the
        target), which is what its veth on the bridge carries."""
        to = frm = 0
        for pid in self.pids:
            with open('/proc/%d/net/dev' % pid) as f:
                for line in f:
                    name, _, rest = line.partition(':')
                    if name.strip() == 'eth0':
                        v = rest.split()
                        to += int(v[0])
                        frm += int(v[8])
        return to, frm

    def files(self):
        """As NetnsFleet.files, read from here through /proc/PID/root (nothing runs in the
        targets): entries of /tmp, /var/tmp, /root (not crossing mounts, without
        /tmp/spindle-bench*) and the inode of a probe file made and removed in each."""

        def count(top):
            n = 0
            try:
                dev = os.lstat(top).st_dev
            except OSError:
                return 0
            n = 1
            for dirpath, dirs, files in os.walk(top):
                keep = []
                for d in dirs:
                    full = os.path.join(dirpath, d)
                    if dirpath == top and top.endswith('/tmp') and d.startswith('spindle-bench'):
                        continue
                    n += 1
                    try:
                        if os.lstat(full).st_dev == dev:
                            keep.append(d)
                    except OSError:
                        pass
                dirs[:] = keep
                for fn in files:
                    if dirpath == top and top.endswith('/tmp') and fn.startswith('spindle-bench'):
                        continue
                    n += 1
            return n

        out = {}
        for i, pid in enumerate(self.pids):
            d = {}
            for top in ('/tmp', '/var/tmp', '/root'):
                base = '/proc/%d/root%s' % (pid, top)
                n = count(base)
                ino = 0
                try:
                    fd, path = tempfile.mkstemp(prefix='.spbench-ino.', dir=base)
                    ino = os.fstat(fd).st_ino
                    os.close(fd)
                    os.unlink(path)
                except OSError:
                    pass
                d[top] = (n, ino)
            out[i] = d
        return out
