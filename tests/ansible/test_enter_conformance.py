"""The conformance subset that applies to transports entering a chroot or namespaces on this
machine, stock connection plugin vs spindle: tests/ansible/conformance-enter.yml runs once
with the stock plugin (community.general.chroot, community.docker.nsenter, from the
collections scripts/collections.sh unpacks into the venv) and once through spindle (Ansible's
linear strategy with the ``spindle`` callback, which routes those connections to the
daemon's chroot and setns transports). Per-task results (spindle_record), the files the play
left on the targets and the fetched files must be equal (run_conformance.compare).

* chroot: two trees (tmpfs, read-only bind mounts of /usr and /etc, /dev/null), rebuilt
  fresh for each run;
* nsenter: two netns-fleet targets (fleet ``ecnf``), entered by the pid of their sshd
  (network, mount and uts namespaces of their own);
* su: the same fleet over ssh (stock: ssh + pipelining), logged in as one user and becoming
  another with su and a password (users from become_users.py; raw's pty output normalised).

Each test takes 30 s to 2 min (stock is the slow half). Needs root. Skips, with the reason
printed, when the venv, the collections, the binary or the fleet are missing;
SPINDLE_TEST_KEEP=1 keeps the work dir (logs and records of both runs).
"""

import json
import os
import shutil
import subprocess
import tempfile
import time
import unittest

import become_users
import run_conformance as rc

HERE = os.path.dirname(os.path.abspath(__file__))
PLAYBOOK = os.path.join(HERE, 'conformance-enter.yml')
COLLECTIONS = os.path.join(rc.VENV, 'collections')
FLEET_NAME = 'ecnf'
#: su: the login user, then the user su makes (its own names: test_become may run meanwhile)
SU_USERS = {'spindle-ecop': 'ecop-pass-1', 'spindle-ecapp': 'ecapp-pass-2'}


def _sh(cmd):
    subprocess.run(['sh', '-c', cmd], check=True)


def build_tree(path):
    """A fresh chroot tree at ``path``: a private tmpfs with /usr and /etc bound read-only."""
    os.makedirs(path, exist_ok=True)
    _sh(
        'set -e; r=%s; mount -t tmpfs -o mode=0755,size=64m spindle-ecnf "$r"; '
        'mount --make-private "$r"; mkdir -p "$r/usr" "$r/etc" "$r/dev" "$r/tmp"; '
        'chmod 1777 "$r/tmp"; '
        'for l in bin sbin lib lib64; do if [ -e /$l ]; then ln -s usr/$l "$r/$l"; fi; done; '
        'for d in usr etc; do mount --bind /$d "$r/$d"; mount -o remount,bind,ro "$r/$d"; done; '
        'mknod -m 666 "$r/dev/null" c 1 3' % path
    )


def destroy_tree(path):
    subprocess.run(['umount', '-R', '-l', path], stderr=subprocess.DEVNULL)


def raw_on_a_pty(record):
    """Stock runs ``raw`` with a become password on a pty (``ssh -tt``: CRLF line ends,
    stderr merged into stdout, ssh's "Shared connection to ... closed." note); spindle keeps
    the two streams apart. Compare the set of lines either printed."""
    if record['task'] != 'raw':
        return
    res = record['result']
    text = (res.pop('stdout', '') or '') + '\n' + (res.pop('stderr', '') or '')
    res.pop('stderr_lines', None)
    res['stdout_lines'] = sorted(
        set(
            line
            for line in text.replace('\r', '').splitlines()
            if line and not line.startswith('Shared connection to ')
        )
    )


class EnterConformance(unittest.TestCase):
    def setUp(self):
        if os.geteuid() != 0:
            print('SKIP: test_enter_conformance needs root (chroot, mounts, namespaces)')
            self.skipTest('needs root')
        if not os.access(os.path.join(rc.VENV_BIN, 'ansible-playbook'), os.X_OK):
            print('SKIP: no venv with ansible-core at %s (scripts/venv.sh)' % rc.VENV_BIN)
            self.skipTest('no venv')
        if not os.path.isdir(os.path.join(COLLECTIONS, 'ansible_collections', 'community')):
            print('SKIP: no collections in %s (scripts/collections.sh)' % COLLECTIONS)
            self.skipTest('no collections')
        if not os.access(rc.spindle_bin(), os.X_OK):
            print('SKIP: no spindle binary at %s' % rc.spindle_bin())
            self.skipTest('no spindle binary')
        self.work = tempfile.mkdtemp(prefix='spindle-ecnf-')
        if os.environ.get('SPINDLE_TEST_KEEP'):
            print('work dir kept: %s' % self.work)
        else:
            self.addCleanup(shutil.rmtree, self.work, True)
        self.fetch_dir = os.path.join(self.work, 'fetched')
        self.extra_vars = {}

    def one_run(self, kind, inventory, reset, collect, transport):
        """Run the playbook (``kind`` stock or spindle) after ``reset()``; what
        run_conformance.compare takes, with ``collect()`` giving the files per host."""
        cfg = os.path.join(self.work, kind + '.cfg')
        record = os.path.join(self.work, kind + '.json')
        rc.write_cfg(cfg, kind, 'linear')
        reset()
        shutil.rmtree(self.fetch_dir, ignore_errors=True)
        os.makedirs(self.fetch_dir)
        os.makedirs(os.path.join(self.work, 'run'), mode=0o700, exist_ok=True)
        env = rc.run_env(self.work, cfg, record)
        env['ANSIBLE_COLLECTIONS_PATH'] = COLLECTIONS
        extra = json.dumps(dict(self.extra_vars, fetch_dir=self.fetch_dir))
        t0 = time.monotonic()
        argv = [os.path.join(rc.VENV_BIN, 'ansible-playbook'), PLAYBOOK, '-i', inventory, '-e', extra]
        if kind == 'spindle':
            argv.append('-vvv')  # to see that the hosts were routed to spindle's transport
        p = subprocess.run(
            argv,
            env=env,
            cwd=self.work,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            universal_newlines=True,
        )
        print('  %-8s rc=%d %.1fs' % (kind, p.returncode, time.monotonic() - t0))
        with open(os.path.join(self.work, kind + '.log'), 'w') as f:
            f.write(p.stdout)
        if not os.path.exists(record):
            self.fail('%s: no record (rc %d):\n%s' % (kind, p.returncode, p.stdout[-6000:]))
        if kind == 'spindle':
            self.assertIn('ESTABLISH SPINDLE CONNECTION (%s)' % transport, p.stdout, 'not routed to spindle')
        with open(record) as f:
            records = json.load(f)
        return {
            'rc': p.returncode,
            'records': records,
            'files': collect(),
            'fetched': rc.snapshot(self.fetch_dir),
            'log': p.stdout,
            'left_behind': sorted(os.listdir(os.path.join(self.work, 'run'))),
        }

    def compare_runs(self, inventory, reset, collect, transport, normalise=None):
        stock = self.one_run('stock', inventory, reset, collect, transport)
        spin = self.one_run('spindle', inventory, reset, collect, transport)
        for run in (stock, spin):
            for r in run['records']:
                if normalise and r['status'] != 'recap':
                    normalise(r)
        problems = rc.compare(stock, spin)
        self.assertEqual(
            problems,
            [],
            '\n'.join(
                ['stock and spindle differ:'] + problems + ['--- spindle log tail:', spin['log'][-3000:]]
            ),
        )
        self.assertEqual(stock['rc'], 0, stock['log'][-3000:])
        for r in stock['records']:  # what both agreed on, for the reader of the test output
            if r['task'] in (
                'facts both transports must agree on',
                'command in the default directory',
                'environment keyword',
                'raw',
            ):
                res = r['result']
                print('  %s %s: %s' % (r['host'], r['task'], res.get('msg') or res.get('stdout_lines')))
        n = sum(1 for r in stock['records'] if r['status'] != 'recap')
        print('  equal: %d results, files and fetched files' % n)
        # the play really ran everywhere: every host wrote its files
        for host, files in stock['files'].items():
            self.assertIn('run/static.link', files, host)
        return stock

    def test_chroot(self):
        trees = [os.path.join(self.work, 'ch%d' % i) for i in range(2)]
        for t in trees:
            self.addCleanup(destroy_tree, t)
        inventory = os.path.join(self.work, 'chroot.ini')
        with open(inventory, 'w') as f:
            f.write(''.join('ch%d ansible_host=%s\n' % (i, t) for i, t in enumerate(trees)))
            f.write(
                '[all:vars]\nansible_connection=community.general.chroot\n'
                'ansible_python_interpreter=/usr/bin/python3\n'
            )

        def reset():
            for t in trees:
                destroy_tree(t)
                build_tree(t)

        def collect():
            out = {}
            for i, t in enumerate(trees):
                p = subprocess.run(
                    ['chroot', t, '/usr/bin/python3', '-c', rc.COLLECT],
                    stdout=subprocess.PIPE,
                    check=True,
                    universal_newlines=True,
                )
                out['ch%d' % i] = json.loads(p.stdout)
            return out

        print('chroot: community.general.chroot vs spindle')
        self.compare_runs(inventory, reset, collect, 'chroot')

    def fleet_up(self):
        """The two-target namespace fleet (down again at the end); skips where it cannot."""
        try:
            up = rc.fleet('up', FLEET_NAME, 2)
        except rc.Skip as e:
            print('SKIP: %s' % e)
            self.skipTest(str(e))
        self.addCleanup(rc.fleet, 'down', FLEET_NAME, check=False)
        return up

    def collect_fleet(self):
        """What the play left on each fleet target."""
        return dict(
            ('t%d' % i, json.loads(rc.fleet('exec', FLEET_NAME, i, 'python3', '-c', rc.COLLECT).stdout))
            for i in range(2)
        )

    def test_nsenter(self):
        up = self.fleet_up()
        fleet_dir = os.path.dirname(up.stdout.strip().splitlines()[-1])
        inventory = os.path.join(self.work, 'nsenter.ini')
        with open(inventory, 'w') as f:
            for i in range(2):
                with open(os.path.join(fleet_dir, 'sshd-%d.pid' % i)) as pf:
                    f.write('t%d ansible_nsenter_pid=%d\n' % (i, int(pf.read().strip())))
            f.write(
                '[all:vars]\nansible_connection=community.docker.nsenter\n'
                'ansible_python_interpreter=/usr/bin/python3\n'
            )

        def reset():
            for i in range(2):
                rc.fleet('exec', FLEET_NAME, i, 'rm', '-rf', rc.TARGET_DIR, '/root/.ansible')

        print('nsenter: community.docker.nsenter vs spindle (setns)')
        self.compare_runs(inventory, reset, self.collect_fleet, 'setns')

    def test_su(self):
        """Over ssh (the fleet's sshd, stock: ssh + pipelining), logged in as one user and
        becoming another with su and its password for every task."""
        become_users.add_users(self, dict((u, (p, '/bin/sh')) for u, p in SU_USERS.items()))
        up = self.fleet_up()
        inventory = up.stdout.strip().splitlines()[-1]
        login, target = SU_USERS
        self.extra_vars = {
            'ansible_user': login,
            'ansible_become': True,
            'ansible_become_method': 'su',
            'ansible_become_user': target,
            'ansible_become_password': SU_USERS[target],
            'ansible_python_interpreter': '/usr/bin/python3',
        }

        def reset():
            for i in range(2):
                rc.fleet('exec', FLEET_NAME, i, 'rm', '-rf', rc.TARGET_DIR)

        print('su: ssh + su (stock) vs spindle (nested su agent)')
        self.compare_runs(inventory, reset, self.collect_fleet, 'ssh', normalise=raw_on_a_pty)


if __name__ == '__main__':
    unittest.main()
