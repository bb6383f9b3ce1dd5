"""Where ansible-playbook runs: here (HostController) or in a podman container (ContainerController), and how a run is started and measured there."""

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

from spindle_bench.config import (
    BENCH,
    DEFAULT_CONTROLLER_IMAGE,
    MITOGEN_VENV,
    MITOGEN_VENV_EE,
    PODMAN_FLEET_DIR,
    ROOT,
    STOCK_VENV,
)
from spindle_bench.fleets import cpuacct_file, podman, podman_env, read_cpuacct
from spindle_bench.measure import execute_local, reap_orphans
from spindle_bench.util import tail
from spindle_bench.util import log, run_quiet, set_subreaper


class ControllerUnavailable(Exception):
    pass


class HostController(object):
    """ansible-playbook runs on this machine, from the venvs of the repository."""

    kind = 'host'

    def __init__(self):
        self.stock_python = os.path.join(STOCK_VENV, 'bin', 'python')
        self.stock_playbook = os.path.join(STOCK_VENV, 'bin', 'ansible-playbook')
        self.mitogen_venv = MITOGEN_VENV
        self.venv_python = sys.executable  # makes the Mitogen venv
        self.tool_python = sys.executable  # runs linkemu.py
        self.default_plugin = 'auto'

    def start(self):
        pass

    def stop(self):
        pass

    def info(self):
        return {'kind': 'host', 'python': platform.python_version(), 'stock_venv': STOCK_VENV}

    def can_exec(self, path):
        return os.access(path, os.X_OK)

    def run_quiet(self, argv, env=None, cwd=None, timeout=120):
        return run_quiet(argv, timeout=timeout, env=dict(os.environ, **(env or {})), cwd=cwd)

    def run_logged(self, argv, logf):
        return subprocess.run(argv, stdout=logf, stderr=logf).returncode

    def cmd(self, argv, stdin=False):
        return list(argv)

    def popen(self, argv, pidfile, **kw):
        return subprocess.Popen(argv, **kw)

    def terminate(self, proc, pidfile):
        proc.terminate()

    def execute(self, argv, env, cwd, log_path, timeout, reap=True, keep=(), cgroup_name=None, tick=None):
        return execute_local(argv, env, cwd, log_path, timeout, reap, keep, cgroup_name, tick)

    def reap_all(self, keep):
        """End what warm runs kept running (they were re-parented to us), so the next mode
        starts cold."""
        set_subreaper(True)
        reap_orphans(os.getpid(), set(keep))
        set_subreaper(False)


class ContainerController(HostController):
    """--controller container: every ansible-playbook runs inside one podman container (from
    --controller-image, default spindle's execution environment localhost/spindle-ee: Debian's
    Python, ansible-core from PyPI), on podman's default bridge beside the podman fleet's
    targets, with the repository, the run's shared temp directory and the fleets' files
    (/run/spindle-podman) bind-mounted at the same paths.  Each run is
    `podman exec CTL python3 bench/run --exec-controller SPEC`: the same measuring code as on
    the host, inside the container (rusage of ansible-playbook and of what it left, peak RSS of
    its tree); the container's own cgroup CPU is read from here as a cross-check.  The spindle
    mode uses the repository's plugin source and binary (snapshots, as on the host); Mitogen
    gets its own venv made with the container's Python (bench/.venv-mitogen-ee)."""

    kind = 'container'

    def __init__(self, image, prefix, share, out):
        HostController.__init__(self)
        self.image = image
        self.name = 'spbench-ctl-%s-%d' % (prefix, os.getpid())
        self.share = share
        self.out = out
        self.mitogen_venv = MITOGEN_VENV_EE
        self.default_plugin = 'source'
        self.started = False
        self.details = {}

    def start(self):
        if os.geteuid() != 0:
            raise ControllerUnavailable(
                '--controller container needs root (rootful podman, as the podman fleet)'
            )
        if not shutil.which('podman'):
            raise ControllerUnavailable('podman is not installed (scripts/setup.sh installs it)')
        q = podman('image', 'inspect', '--format', '{{.Id}}', self.image)
        if q.returncode != 0:
            if self.image != DEFAULT_CONTROLLER_IMAGE:
                raise ControllerUnavailable('no image %s' % self.image)
            log('controller image %s missing: building it (containers/ee/build-ee.sh) ...' % self.image)
            b = subprocess.run(
                ['bash', os.path.join(ROOT, 'containers', 'ee', 'build-ee.sh')],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                universal_newlines=True,
                env=dict(podman_env(), SPINDLE_VENV=STOCK_VENV),
                timeout=3600,
            )
            if b.returncode == 77:
                raise ControllerUnavailable(
                    'containers/ee/build-ee.sh exited 77: %s' % (b.stderr.strip().splitlines() or ['?'])[-1]
                )
            if b.returncode != 0:
                raise RuntimeError('containers/ee/build-ee.sh failed: %s' % b.stderr[-1500:])
            q = podman('image', 'inspect', '--format', '{{.Id}}', self.image)
        self.image_id = q.stdout.strip()[:12]
        os.makedirs(PODMAN_FLEET_DIR, exist_ok=True)
        mounts = [
            (ROOT, ROOT, 'rw'),
            (self.share, self.share, 'rw'),
            (PODMAN_FLEET_DIR, PODMAN_FLEET_DIR, 'ro'),
        ]
        if not (self.out + '/').startswith(ROOT + '/'):
            mounts.append((self.out, self.out, 'rw'))
        # pip (Mitogen's venv) sees the host's CAs and pip.conf, as containers/ee/build-ee.sh does
        for f in ('/etc/ssl/certs/ca-certificates.crt', '/etc/pip.conf'):
            if os.path.isfile(f):
                mounts.append((f, f, 'ro'))
        argv = [
            'run',
            '-d',
            '--name',
            self.name,
            '--label',
            'spindle.bench=controller',
            '--user',
            '0',
            '--entrypoint',
            'sh',
        ]
        for src, dst, mode in mounts:
            argv += ['-v', '%s:%s:%s' % (src, dst, mode)]
        argv += [
            self.image,
            '-c',
            'if command -v dumb-init >/dev/null; then exec dumb-init sleep infinity; fi; exec sleep infinity',
        ]
        r = podman(*argv, timeout=300)
        if r.returncode != 0:
            raise RuntimeError('podman run of the controller container failed: %s' % r.stderr.strip())
        self.started = True
        probe = (
            'command -v python3; command -v ansible-playbook; '
            'python3 -c "import platform, ansible; print(platform.python_version(), ansible.__version__)"; '
            'cat /proc/1/comm; ip -4 -o addr show eth0 2>/dev/null | head -1; '
            'python3 -c "import socket; print(socket.gethostbyname(socket.gethostname()))"'
        )
        r = podman('exec', self.name, 'sh', '-c', probe)
        lines = r.stdout.splitlines()
        if r.returncode != 0 or len(lines) < 3:
            raise RuntimeError(
                'the controller container %s has no python3/ansible-playbook: %s' % (self.image, r.stderr)
            )
        self.stock_python = self.venv_python = self.tool_python = lines[0].strip()
        self.stock_playbook = lines[1].strip()
        pyver, ansible_ver = lines[2].split()[:2]
        pid = podman('inspect', '--format', '{{.State.Pid}}', self.name).stdout.strip()
        self.pid = int(pid) if pid.isdigit() else None
        self.cgroup = cpuacct_file(self.pid) if self.pid else None
        ver = podman('--version').stdout.strip()
        self.details = {
            'kind': 'container',
            'image': self.image,
            'image_id': self.image_id,
            'container': self.name,
            'engine': ver,
            'network': "podman's default bridge (the fleet's targets by address)",
            'init': lines[3].strip() if len(lines) > 3 else None,
            'address': lines[-1].strip(),
            'python': pyver,
            'ansible_core': ansible_ver,
            'stock_playbook': self.stock_playbook,
            'how': 'podman exec CTL python3 bench/run --exec-controller SPEC per run; repository, '
            'temp dir and /run/spindle-podman bind-mounted at the same paths',
        }
        log(
            'controller: container %s from %s (%s), Python %s, ansible-core %s'
            % (self.name, self.image, self.image_id, pyver, ansible_ver)
        )

    def stop(self):
        if self.started:
            podman('rm', '-f', '-t', '0', self.name, timeout=120)
            self.started = False

    def info(self):
        return dict(self.details) or {'kind': 'container', 'image': self.image}

    def _exec(self, env=None, cwd=None, interactive=False):
        argv = ['podman', 'exec']
        if interactive:
            argv.append('-i')
        for k, v in sorted((env or {}).items()):
            argv += ['--env', '%s=%s' % (k, v)]
        if cwd:
            argv += ['--workdir', cwd]
        return argv + [self.name]

    def can_exec(self, path):
        return podman('exec', self.name, 'test', '-x', path).returncode == 0

    def run_quiet(self, argv, env=None, cwd=None, timeout=120):
        return run_quiet(self._exec(env, cwd) + list(argv), timeout=timeout, env=podman_env())

    def run_logged(self, argv, logf):
        return subprocess.run(
            self._exec() + list(argv), stdout=logf, stderr=logf, env=podman_env()
        ).returncode

    def cmd(self, argv, stdin=False):
        return self._exec(interactive=stdin) + list(argv)

    def popen(self, argv, pidfile, **kw):
        """A long-lived process in the container (linkemu); its in-container pid goes to
        pidfile (in the shared temp directory) for terminate()."""
        sh = ['sh', '-c', 'echo $$ >"$0"; exec "$@"', pidfile] + list(argv)
        return subprocess.Popen(self._exec(interactive=True) + sh, env=podman_env(), **kw)

    def terminate(self, proc, pidfile):
        try:
            with open(pidfile) as f:
                pid = f.read().strip()
            podman('exec', self.name, 'kill', '-TERM', pid)
        except OSError:
            proc.terminate()

    def _cgroup_cpu(self):
        try:
            return read_cpuacct(self.cgroup) if self.cgroup else None
        except (OSError, ValueError):
            return None

    def execute(self, argv, env, cwd, log_path, timeout, reap=True, keep=(), cgroup_name=None, tick=None):
        fd, spec_path = tempfile.mkstemp(prefix='exec-', suffix='.json', dir=self.share)
        result = spec_path[:-5] + '.result.json'
        with os.fdopen(fd, 'w') as f:
            json.dump(
                {
                    'argv': list(argv),
                    'env': env,
                    'cwd': cwd,
                    'log': log_path,
                    'timeout': timeout,
                    'reap': reap,
                    'cgroup': cgroup_name,
                    'result': result,
                },
                f,
            )
        helper = self._exec(cwd=cwd) + [
            self.stock_python,
            os.path.join(BENCH, 'run'),
            '--exec-controller',
            spec_path,
        ]
        cg0 = self._cgroup_cpu()
        errpath = log_path + '.exec-stderr'
        t0 = time.monotonic()
        with open(errpath, 'w') as errf:
            proc = subprocess.Popen(
                helper, stdin=subprocess.DEVNULL, stdout=errf, stderr=errf, env=podman_env()
            )
            try:
                while proc.poll() is None:
                    if time.monotonic() - t0 > timeout + 300:
                        proc.kill()
                    if tick:
                        tick()
                    time.sleep(0.05)
            except KeyboardInterrupt:
                proc.terminate()
                raise
        cg1 = self._cgroup_cpu()
        try:
            with open(result) as f:
                res = json.load(f)
        except (OSError, ValueError):
            raise RuntimeError(
                'the controller container did not run the playbook (exit %s): %s'
                % (proc.returncode, tail(errpath, 6))
            )
        if os.path.getsize(errpath) == 0:
            os.unlink(errpath)
        res['cpu_container_cgroup_s'] = None if cg0 is None or cg1 is None else cg1 - cg0
        return res

    def reap_all(self, keep):
        fd, spec_path = tempfile.mkstemp(prefix='reap-', suffix='.json', dir=self.share)
        with os.fdopen(fd, 'w') as f:
            json.dump({'action': 'reap', 'keep': []}, f)
        run_quiet(
            self._exec() + [self.stock_python, os.path.join(BENCH, 'run'), '--exec-controller', spec_path],
            timeout=120,
            env=podman_env(),
        )
