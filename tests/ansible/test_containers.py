"""Real podman containers as targets (containers/podman-fleet.sh, image from
containers/build-target-image.sh): the stock ``containers.podman.podman`` connection plugin
(from the collections scripts/collections.sh unpacks into the venv) vs spindle (builtin
``linear`` + the ``spindle`` callback, which routes those hosts to the daemon's podman
transport: one ``podman exec -i`` per host, the agent inside).

* test_conformance: tests/ansible/conformance-containers.yml on 1 container, stock then
  spindle: per-task results (spindle_record), the files left in the container and the
  fetched files must be equal, and every spindle module run must be in the agent
  (SPINDLE_PODMAN_FULL=1: 2 containers, and conformance-enter.yml's 55 tasks as well; the
  stock plugin's ~5 `podman exec`s per task make that several minutes);
* test_without_python: 2 containers whose python3 was removed (one host names the
  interpreter, one leaves it to discovery): ``raw`` works, a module fails with the stock
  wording, stock and spindle results equal;
* test_docker_api: community.docker.docker (the docker client alone, containers/docker-cli.sh)
  against podman's docker-compatible API (``podman system service``), stock vs spindle's
  docker transport, tests/ansible/conformance-docker.yml on 1 container;
* test_via_hop: 3 containers behind an ssh hop (an sshd of its own on 127.0.0.1, ``spindle_via``
  on podman hosts: the hop's agent runs ``podman exec``), stock direct vs spindle through the
  hop, equal results; a 1 MiB file copied to all three crosses the controller -> hop stream
  once (the daemon's byte counters);
* test_many: SPINDLE_PODMAN_COUNT containers (default 20 here; 100 is the issue's figure:
  ``SPINDLE_PODMAN_COUNT=100``) started in parallel, one ``ping`` each through spindle.

Needs root, podman and the image (built once from Debian packages, ~1-2 min; cached after by
its recipe label). Skips with the reason printed when any of it is missing. Every fleet is
removed at the end, also on failure (containers/podman-fleet.sh down). SPINDLE_TEST_KEEP=1
keeps the work dir (logs and records of both runs).
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest

import run_conformance as rc

HERE = os.path.dirname(os.path.abspath(__file__))
PLAYBOOK = os.path.join(HERE, 'conformance-containers.yml')
FLEET = os.path.join(rc.REPO, 'containers', 'podman-fleet.sh')
BUILD = os.path.join(rc.REPO, 'containers', 'build-target-image.sh')
CONTAINERS_CONF = os.path.join(rc.REPO, 'containers', 'containers.conf')
COLLECTIONS = os.path.join(rc.VENV, 'collections')
#: fleet names of this suite (podman-fleet.sh; no netns fleet uses these)
CONF_FLEET, NOPY_FLEET, MANY_FLEET, DOCKER_FLEET, VIA_FLEET = 'pcnf', 'pnpy', 'pmany', 'pdock', 'pvh'
#: test_docker_api's short playbook
DOCKER_PLAYBOOK = os.path.join(HERE, 'conformance-docker.yml')


def podman_env(env=None):
    env = dict(os.environ if env is None else env)
    env['CONTAINERS_CONF'] = os.environ.get('CONTAINERS_CONF') or CONTAINERS_CONF
    return env


def podman(*args, check=True, input=None):
    return subprocess.run(
        ['podman'] + list(args),
        env=podman_env(),
        input=input,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        universal_newlines=True,
        check=check,
    )


def fleet(*args, check=True):
    p = subprocess.run(
        ['bash', FLEET] + [str(a) for a in args],
        env=podman_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        universal_newlines=True,
    )
    if p.returncode == rc.SKIP:
        raise unittest.SkipTest('podman-fleet.sh %s: %s' % (args[0], p.stderr.strip()[-300:]))
    if check and p.returncode != 0:
        raise RuntimeError(
            'podman-fleet.sh %s failed (%d): %s' % (' '.join(map(str, args)), p.returncode, p.stderr[-3000:])
        )
    return p


def shell_free_raw(r):
    """The stock podman plugin runs raw without a shell (test_without_python): raw's output
    is not compared where the command has shell syntax."""
    if r['task'] == 'raw':
        for k in ('stdout', 'stderr', 'stdout_lines', 'stderr_lines'):
            r['result'].pop(k, None)


class ContainerTargets(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        why = None
        if os.geteuid() != 0:
            why = 'test_containers needs root (rootful podman)'
        elif not shutil.which('podman'):
            why = 'podman is not installed (scripts/setup.sh installs it)'
        elif not os.access(os.path.join(rc.VENV_BIN, 'ansible-playbook'), os.X_OK):
            why = 'no venv with ansible-core at %s (scripts/venv.sh)' % rc.VENV_BIN
        elif not os.path.isdir(os.path.join(COLLECTIONS, 'ansible_collections', 'containers', 'podman')):
            why = 'no containers.podman collection in %s (scripts/collections.sh)' % COLLECTIONS
        elif not os.access(rc.spindle_bin(), os.X_OK):
            why = 'no spindle binary at %s' % rc.spindle_bin()
        if why is None:
            t0 = time.monotonic()
            p = subprocess.run(
                ['bash', BUILD],
                env=podman_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                universal_newlines=True,
            )
            if p.returncode == rc.SKIP:
                why = 'no target image: ' + p.stderr.strip()[-300:]
            elif p.returncode != 0:
                raise RuntimeError(
                    'build-target-image.sh failed (%d):\n%s' % (p.returncode, p.stderr[-3000:])
                )
            else:
                print('image %s ready in %.1fs' % (p.stdout.strip(), time.monotonic() - t0))
        if why:
            print('SKIP: %s' % why)
            raise unittest.SkipTest(why)

    def setUp(self):
        self.work = tempfile.mkdtemp(prefix='spindle-pcnt-')
        if os.environ.get('SPINDLE_TEST_KEEP'):
            print('work dir kept: %s' % self.work)
        else:
            self.addCleanup(shutil.rmtree, self.work, True)
        self.fetch_dir = os.path.join(self.work, 'fetched')

    def fleet_up(self, name, count):
        """Fleet NAME of COUNT containers, removed at the end of the test whatever happens;
        its directory (inventories, names.txt, ...)."""
        self.addCleanup(fleet, 'down', name, check=False)
        t0 = time.monotonic()
        up = fleet('up', name, count, '--timeout', max(60, count))
        print('  fleet %s: %d containers up in %.1fs' % (name, count, time.monotonic() - t0))
        return os.path.dirname(up.stdout.strip().splitlines()[-1])

    def names(self, fleet_dir):
        with open(os.path.join(fleet_dir, 'names.txt')) as f:
            return [line.strip() for line in f if line.strip()]

    def run_playbook(self, kind, playbook, inventory, extra, verbose=False, forks=None, transport='podman'):
        """ansible-playbook, ``kind`` stock or spindle (linear + the spindle callback), with
        spindle_record: (process, records, paths or None)."""
        cfg = os.path.join(self.work, kind + '.cfg')
        record = os.path.join(self.work, kind + '.json')
        for p in (record, record + '.paths'):
            if os.path.exists(p):
                os.unlink(p)
        rc.write_cfg(cfg, kind, 'linear')
        os.makedirs(os.path.join(self.work, 'run'), mode=0o700, exist_ok=True)
        env = podman_env(rc.run_env(self.work, cfg, record))
        env['ANSIBLE_COLLECTIONS_PATH'] = COLLECTIONS
        env.update(getattr(self, 'extra_env', {}))
        argv = [
            os.path.join(rc.VENV_BIN, 'ansible-playbook'),
            playbook,
            '-i',
            inventory,
            '-e',
            json.dumps(extra),
        ]
        if forks:
            argv += ['--forks', str(forks)]
        if getattr(self, 'limit', None):
            argv += ['--limit', self.limit]
        if getattr(self, 'tags', None):
            argv += ['--tags', self.tags]
        if verbose:
            argv.append('-vvv')  # to see that the hosts were routed to spindle's transport
        t0 = time.monotonic()
        p = subprocess.run(
            argv,
            env=env,
            cwd=self.work,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            universal_newlines=True,
        )
        p.took = time.monotonic() - t0
        with open(os.path.join(self.work, kind + '.log'), 'w') as f:
            f.write(p.stdout)
        if not os.path.exists(record):
            self.fail('%s: no record (rc %d):\n%s' % (kind, p.returncode, p.stdout[-6000:]))
        with open(record) as f:
            records = json.load(f)
        paths = None
        if os.path.exists(record + '.paths'):
            with open(record + '.paths') as f:
                paths = json.load(f)
        if kind == 'spindle' and verbose:
            self.assertIn('ESTABLISH SPINDLE CONNECTION (%s)' % transport, p.stdout, 'not routed to spindle')
        return p, records, paths

    def test_conformance(self):
        full = bool(os.environ.get('SPINDLE_PODMAN_FULL'))
        fleet_dir = self.fleet_up(CONF_FLEET, 2 if full else 1)
        names = self.names(fleet_dir)
        inventory = os.path.join(fleet_dir, 'inventory-podman.ini')
        big = os.path.join(self.work, 'big.txt')
        with open(big, 'w') as f:  # 220 KiB: more than one transfer chunk
            for i in range(4096):
                f.write('line %05d of the large file: %s\n' % (i, 'abcdefgh' * 3))
        self.big_size = os.path.getsize(big)
        extra = {'fetch_dir': self.fetch_dir, 'big_src': big}
        self.compare_playbook(PLAYBOOK, names, inventory, extra)
        if full:
            self.compare_playbook(
                os.path.join(HERE, 'conformance-enter.yml'), names, inventory, extra, normalise=shell_free_raw
            )

    def compare_playbook(self, playbook, names, inventory, extra, normalise=None, transport='podman'):
        """``playbook`` with the stock podman plugin, then through spindle: results, files
        left in the containers and fetched files equal; every spindle module run in the agent."""

        def reset():
            for n in names:
                podman(
                    'exec',
                    n,
                    'rm',
                    '-rf',
                    rc.TARGET_DIR,
                    '/root/.ansible',
                    '/home/spindle/.ansible',
                    '/etc/spindle-not-allowed',
                )
            shutil.rmtree(self.fetch_dir, ignore_errors=True)
            os.makedirs(self.fetch_dir)

        def collect():
            return dict(
                ('t%d' % i, json.loads(podman('exec', '-i', n, 'python3', '-c', rc.COLLECT).stdout))
                for i, n in enumerate(names)
            )

        runs = {}
        print(
            '%s on %d container(s): the stock %s plugin vs spindle (%s exec -i + agent)'
            % (os.path.basename(playbook), len(names), transport, transport)
        )
        for kind in ('stock', 'spindle'):
            reset()
            p, records, paths = self.run_playbook(
                kind, playbook, inventory, extra, verbose=(kind == 'spindle'), transport=transport
            )
            print('  %-8s rc=%d %.1fs' % (kind, p.returncode, p.took))
            if normalise:
                for r in records:
                    if r['status'] != 'recap':
                        normalise(r)
            runs[kind] = {
                'rc': p.returncode,
                'records': records,
                'files': collect(),
                'fetched': rc.snapshot(self.fetch_dir),
                'log': p.stdout,
                'left_behind': sorted(os.listdir(os.path.join(self.work, 'run'))),
                'paths': paths,
            }
        stock, spin = runs['stock'], runs['spindle']
        problems = rc.compare(stock, spin)
        self.assertEqual(
            problems,
            [],
            '\n'.join(
                ['stock and spindle differ:'] + problems + ['--- spindle log tail:', spin['log'][-3000:]]
            ),
        )
        self.assertEqual(stock['rc'], 0, stock['log'][-3000:])
        for r in stock['records']:
            if r['task'] and r['task'].startswith(('facts both', 'default facts both', 'become, command')):
                res = r['result']
                print('  %s %s: %s' % (r['host'], r['task'], res.get('msg') or res.get('stdout_lines')))
        n = sum(1 for r in stock['records'] if r['status'] != 'recap')
        print(
            '  equal: %d results, files (%s) and fetched files (%d)'
            % (
                n,
                ', '.join('%s: %d' % (h, len(f)) for h, f in sorted(stock['files'].items())),
                len(stock['fetched']),
            )
        )
        if playbook == PLAYBOOK:
            for host, files in stock['files'].items():
                self.assertEqual(len(files['run/big.txt']['content']), self.big_size, host)
                self.assertEqual(files['run/bec/mine.txt']['uid'], 1000, host)
        paths = spin['paths']
        self.assertIsNotNone(paths, 'the spindle run wrote no module-path counts')
        print(
            '  spindle module runs: %d in the agent, %d forked, %d stock %s'
            % (
                paths['in_agent'],
                paths['forked'],
                paths['stock'],
                json.dumps(paths['stock_reasons'], sort_keys=True),
            )
        )
        self.assertEqual(paths['stock'], 0, paths)

    def test_without_python(self):
        fleet_dir = self.fleet_up(NOPY_FLEET, 2)
        names = self.names(fleet_dir)
        for n in names:
            podman('exec', n, 'sh', '-c', 'rm -f /usr/bin/python3*')
        inventory = os.path.join(self.work, 'nopy.ini')
        with open(inventory, 'w') as f:
            f.write('t0 ansible_host=%s ansible_python_interpreter=/usr/bin/python3\n' % names[0])
            f.write('t1 ansible_host=%s\n' % names[1])  # interpreter discovery
            f.write('[all:vars]\nansible_connection=containers.podman.podman\n')
        playbook = os.path.join(self.work, 'nopy.yml')
        with open(playbook, 'w') as f:
            f.write('''
- hosts: all
  gather_facts: false
  tasks:
    - name: raw works without python
      raw: echo raw-{{ inventory_hostname }}
    - name: raw that fails
      raw: ls /usr/bin/python3
      ignore_errors: true
    - name: raw with shell syntax
      raw: echo a && echo b
    - name: a module
      ping:
      ignore_errors: true
    - name: a command module
      command: "true"
      ignore_errors: true
    - name: script (put with the engine's cp, run with its exec)
      script: SCRIPT
    - name: raw still works after the failures
      raw: echo after
''')
        script = os.path.join(self.work, 'hello.sh')
        with open(script, 'w') as f:
            f.write('#!/bin/sh\necho "script on $(hostname) as $(id -un)"\n')
        with open(playbook) as f:
            text = f.read().replace('SCRIPT', script)
        with open(playbook, 'w') as f:
            f.write(text)
        runs = {}
        print('without python: containers.podman.podman vs spindle')
        for kind in ('stock', 'spindle'):
            p, records, _ = self.run_playbook(kind, playbook, inventory, {}, verbose=(kind == 'spindle'))
            print('  %-8s rc=%d %.1fs' % (kind, p.returncode, p.took))
            for r in records:
                # interpreter discovery's warning text is not part of the result; the module's
                # failure message is compared below as it is
                r['result'].pop('stderr_lines', None)
            runs[kind] = {
                'rc': p.returncode,
                'records': records,
                'files': {},
                'fetched': {},
                'log': p.stdout,
                'left_behind': sorted(os.listdir(os.path.join(self.work, 'run'))),
            }
        stock, spin = runs['stock'], runs['spindle']
        # The one deliberate difference: the stock podman plugin splits raw's command into
        # words and runs them with `podman exec`, no shell, so `&&` is an argument of echo;
        # spindle runs raw through /bin/sh as the ssh, docker and chroot plugins do.
        for kind, want in (('stock', 'a && echo b\n'), ('spindle', 'a\nb\n')):
            for r in runs[kind]['records']:
                if r['task'] == 'raw with shell syntax':
                    self.assertEqual(r['result'].get('stdout'), want, (kind, r))
                    for k in ('stdout', 'stdout_lines'):
                        r['result'].pop(k, None)
        for r in spin['records']:
            if r['task'] == 'a module':
                print('  %s: %s' % (r['host'], r['result'].get('msg')))
                self.assertIn('interpreter', r['result'].get('msg', ''), r)
            if r['task'] in (
                'raw works without python',
                'raw still works after the failures',
                'script (put with the engine\'s cp, run with its exec)',
            ):
                self.assertEqual(r['status'], 'changed', r)
        problems = rc.compare(stock, spin)
        self.assertEqual(
            problems,
            [],
            '\n'.join(
                ['stock and spindle differ:'] + problems + ['--- spindle log tail:', spin['log'][-3000:]]
            ),
        )

    def test_docker_api(self):
        """community.docker.docker (the docker CLI, containers/docker-cli.sh) against podman's
        docker-compatible API (`podman system service`), stock vs spindle's docker transport
        (`docker exec -i`), on a short playbook."""
        cli = subprocess.run(
            ['bash', os.path.join(rc.REPO, 'containers', 'docker-cli.sh')],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            universal_newlines=True,
        )
        if cli.returncode != 0:
            print('SKIP: no docker client: %s' % cli.stderr.strip()[-300:])
            self.skipTest('no docker client')
        sock = os.path.join(self.work, 'docker.sock')
        svc = subprocess.Popen(
            ['podman', 'system', 'service', '--time=0', 'unix://' + sock],
            env=podman_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.addCleanup(svc.wait)
        self.addCleanup(svc.terminate)
        deadline = time.monotonic() + 30
        while not os.path.exists(sock) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertTrue(os.path.exists(sock), 'podman system service made no socket')
        fleet_dir = self.fleet_up(DOCKER_FLEET, 1)
        names = self.names(fleet_dir)
        inventory = os.path.join(self.work, 'docker.ini')
        with open(inventory, 'w') as f:
            f.write(
                't0 ansible_host=%s\n[all:vars]\nansible_connection=community.docker.docker\n'
                'ansible_python_interpreter=/usr/bin/python3\n' % names[0]
            )
        big = os.path.join(self.work, 'big.txt')
        with open(big, 'w') as f:
            for i in range(4096):
                f.write('line %05d of the large file: %s\n' % (i, 'abcdefgh' * 3))
        self.extra_env = {
            'DOCKER_HOST': 'unix://' + sock,
            'PATH': cli.stdout.strip() + os.pathsep + os.environ.get('PATH', ''),
        }
        print('docker client %s, DOCKER_HOST=unix://%s' % (cli.stdout.strip(), sock))
        self.compare_playbook(
            DOCKER_PLAYBOOK,
            names,
            inventory,
            {'fetch_dir': self.fetch_dir, 'big_src': big},
            transport='docker',
        )

    def hop_sshd(self):
        """An sshd of this test's own on 127.0.0.1 (a free port), in this machine's namespaces,
        so the agent it starts sees the same podman: the ssh hop in front of the containers.
        Root by key only; stopped at the end. Returns (port, key, known_hosts)."""
        d = os.path.join(self.work, 'hop')
        os.makedirs(d)
        for name in ('id_ed25519', 'host_key'):
            subprocess.run(
                ['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-f', os.path.join(d, name)], check=True
            )
        with socket.socket() as s:
            s.bind(('127.0.0.1', 0))
            port = s.getsockname()[1]
        shutil.copy(os.path.join(d, 'id_ed25519.pub'), os.path.join(d, 'authorized_keys'))
        with open(os.path.join(d, 'sshd_config'), 'w') as f:
            f.write(
                'ListenAddress 127.0.0.1:%d\nHostKey %s/host_key\nPidFile %s/sshd.pid\n'
                'AuthorizedKeysFile %s/authorized_keys\nPermitRootLogin prohibit-password\n'
                'PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n'
                'StrictModes no\nMaxStartups 100:30:200\nMaxSessions 100\n' % (port, d, d, d)
            )
        with open(os.path.join(d, 'host_key.pub')) as f:
            hostkey = ' '.join(f.read().split()[:2])
        with open(os.path.join(d, 'known_hosts'), 'w') as f:
            f.write('[127.0.0.1]:%d %s\n' % (port, hostkey))
        os.makedirs('/run/sshd', exist_ok=True)
        subprocess.run(
            ['/usr/sbin/sshd', '-f', os.path.join(d, 'sshd_config'), '-E', os.path.join(d, 'sshd.log')],
            check=True,
        )
        pidfile = os.path.join(d, 'sshd.pid')
        deadline = time.monotonic() + 10
        while not os.path.exists(pidfile) and time.monotonic() < deadline:
            time.sleep(0.05)
        with open(pidfile) as f:
            pid = int(f.read().strip())
        self.addCleanup(lambda: os.kill(pid, signal.SIGTERM))
        return port, os.path.join(d, 'id_ed25519'), os.path.join(d, 'known_hosts')

    def test_via_hop(self):
        """Containers behind an ssh hop: ``spindle_via=h0`` on podman hosts (the hop runs
        ``podman exec``), stock direct (local podman) vs spindle through the hop; results
        equal, and the file copied to every container crosses the controller -> hop stream once
        (the hop's file cache, copyfast.VIA_INLINE), measured by the daemon's per-stream byte
        counters."""
        if not os.access('/usr/sbin/sshd', os.X_OK):
            self.skipTest('no sshd')
        count = 3
        port, key, known = self.hop_sshd()
        fleet_dir = self.fleet_up(VIA_FLEET, count)
        names = self.names(fleet_dir)
        inventory = os.path.join(self.work, 'via.ini')
        with open(inventory, 'w') as f:
            f.write(
                "[hop]\nh0 ansible_host=127.0.0.1 ansible_port=%d ansible_user=root "
                "ansible_ssh_private_key_file=%s ansible_ssh_common_args='-o UserKnownHostsFile=%s "
                "-o StrictHostKeyChecking=yes -o GlobalKnownHostsFile=/dev/null' "
                "ansible_python_interpreter=/usr/bin/python3\n[ctr]\n" % (port, key, known)
            )
            for i, n in enumerate(names):
                f.write('t%d ansible_host=%s\n' % (i, n))
            f.write(
                '[ctr:vars]\nansible_connection=containers.podman.podman\n'
                'ansible_python_interpreter=/usr/bin/python3\nspindle_via=h0\n'
            )
        big = os.path.join(self.work, 'big.txt')
        with open(big, 'wb') as f:  # 1 MiB that does not compress (under copy_fast's 2 MiB)
            f.write(os.urandom(1024 * 1024))
        sock = os.path.join(self.work, 'daemon.sock')
        daemon = subprocess.Popen(
            [rc.spindle_bin(), 'serve', '--socket', sock],
            env=podman_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.addCleanup(daemon.wait)
        self.addCleanup(daemon.terminate)
        deadline = time.monotonic() + 10
        while not os.path.exists(sock) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.extra_env = {'SPINDLE_SOCKET': sock}
        self.limit, self.tags = 'ctr', 'via'
        print('via: %d podman containers behind an ssh hop (127.0.0.1:%d)' % (count, port))
        self.compare_playbook(
            DOCKER_PLAYBOOK,
            names,
            inventory,
            {'fetch_dir': self.fetch_dir, 'big_src': big},
            normalise=shell_free_raw,
        )
        stats = json.loads(
            subprocess.run(
                [rc.spindle_bin(), 'stats', '--socket', sock],
                stdout=subprocess.PIPE,
                check=True,
                universal_newlines=True,
            ).stdout
        )
        streams = sorted(stats['targets'])
        for n in names:  # (and their become contexts, `NAME (sudo:spindle) via 127.0.0.1`)
            self.assertIn('%s via 127.0.0.1' % n, streams)
        hop = stats['targets']['127.0.0.1']
        size = os.path.getsize(big)
        print(
            '  controller -> hop stream: %d bytes for the play on %d containers (the %d-byte '
            'file %.2fx; once per container would be %dx)'
            % (hop['bytes_out'], count, size, hop['bytes_out'] / size, count)
        )
        # The file once, plus the agents (hop, containers, become contexts: ~33 KB each) and
        # the module code once: under what the file alone once per container would be.
        self.assertLess(hop['bytes_out'], count * size, hop)

    def test_many(self):
        count = int(os.environ.get('SPINDLE_PODMAN_COUNT') or 20)
        print('many: %d containers in parallel, one ping each through spindle (SPINDLE_PODMAN_COUNT)' % count)
        fleet_dir = self.fleet_up(MANY_FLEET, count)
        playbook = os.path.join(self.work, 'ping.yml')
        with open(playbook, 'w') as f:
            f.write('- hosts: all\n  gather_facts: false\n  tasks:\n    - ping:\n')
        p, records, paths = self.run_playbook(
            'spindle', playbook, os.path.join(fleet_dir, 'inventory-podman.ini'), {}, forks=min(count, 100)
        )
        print('  spindle ping: rc=%d %.1fs for %d containers' % (p.returncode, p.took, count))
        self.assertEqual(p.returncode, 0, p.stdout[-3000:])
        ok = sorted(r['host'] for r in records if r['status'] == 'ok')
        self.assertEqual(len(ok), count, p.stdout[-3000:])
        self.assertEqual(paths and paths['in_agent'], count, paths)


if __name__ == '__main__':
    unittest.main()
