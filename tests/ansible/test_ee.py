"""spindle's execution environment (containers/ee/): the image ansible-builder 3 builds from
containers/ee/execution-environment.yml on a base made from Debian packages (no registry), run
the way AWX/AAP and their users run one, against a netns fleet (``eefl``, 2 targets):

* test_runner: ``ansible-runner run --process-isolation --process-isolation-executable podman
  --container-image localhost/spindle-ee:latest`` twice in the same image: stock (the job's
  environment has ``SPINDLE_EE=off``) and as the image comes (spindle). The ssh key is the
  private data dir's env/ssh_key (runner's ssh-agent in the container), as AWX gives it.
  Per-task results (runner's job events) must be equal, every spindle module run in the agent
  (the callback's end-of-run line in the job's stdout and its SPINDLE_PATHS_FILE counts), and
  the stock run must show no sign of spindle;
* test_worker: the same comparison the way AWX/AAP run a job (receptor): ``ansible-runner
  transmit DIR | podman run IMAGE ansible-runner worker --private-data-dir=/runner |
  ansible-runner process OUT``, as the image's own user (1000);
* test_navigator: ``ansible-navigator run --eei localhost/spindle-ee:latest --mode stdout
  --pull-policy never`` with the fleet's own inventory: the same per-host recap as the stock
  runner run, every module run in the agent.

The containers get ``--network=host`` (the fleet's targets are host-side veths);
``--process-isolation`` and navigator also ``--user=0`` (rootful podman: the image's user 1000
cannot read runner's root-owned key fifo nor the fleet's key). ansible-navigator wants a /dev/mqueue directory: made and mounted
(mqueue) here when missing.

Needs root, podman, ansible-builder and ansible-runner in the venv (scripts/venv.sh), the
spindle-ansible wheel in target/wheels (scripts/venv.sh), and mmdebstrap unless the base image
is cached. The image build (containers/ee/build-ee.sh) is cached by its recipe label; from
scratch it is a few minutes (Debian packages + PyPI). Skips with the reason when any is
missing. SPINDLE_TEST_KEEP=1 keeps the private data dirs.
"""

import glob
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import unittest

import readme_setup as rs
import run_conformance as rc

BUILD = os.path.join(rc.REPO, 'containers', 'ee', 'build-ee.sh')
CONTAINERS_CONF = os.path.join(rc.REPO, 'containers', 'containers.conf')
IMAGE = 'localhost/spindle-ee:latest'
FLEET_NAME = 'eefl'
COUNT = 2
#: the callback's end-of-run line
LINE = re.compile(
    r"spindle: (\d+) module task runs: (\d+) in the agent, (\d+) in a forked child "
    r"of the agent, (\d+) on Ansible's stock command path"
)
#: result keys compared between the stock and the spindle run (times, temp paths left out)
KEYS = (
    'changed',
    'failed',
    'skipped',
    'rc',
    'stdout',
    'stderr',
    'msg',
    'ping',
    'checksum',
    'dest',
    'path',
    'state',
    'mode',
    'size',
    'owner',
    'cmd',
    'unreachable',
)
STAT_KEYS = ('exists', 'mode', 'size', 'checksum', 'isreg', 'pw_name')

PLAYBOOK = r'''
- hosts: all
  gather_facts: true
  gather_subset: [min]
  tasks:
    - name: ping
      ping:
    - name: command
      command: uname -n
      register: r
    - name: copy
      copy:
        content: "hello from {{ inventory_hostname }}\n"
        dest: /tmp/spindle-ee.txt
        mode: "0640"
    - name: copy again (unchanged)
      copy:
        content: "hello from {{ inventory_hostname }}\n"
        dest: /tmp/spindle-ee.txt
        mode: "0640"
    - name: stat
      stat:
        path: /tmp/spindle-ee.txt
    - name: slurp
      slurp:
        src: /tmp/spindle-ee.txt
    - name: shell failing
      shell: "echo out; echo err >&2; exit 3"
      ignore_errors: true
    - name: file absent
      file:
        path: /tmp/spindle-ee.txt
        state: absent
    - name: debug
      debug:
        msg: "{{ r.stdout }} {{ ansible_facts.python_version }}"
'''


def podman_env():
    env = dict(os.environ)
    env['CONTAINERS_CONF'] = os.environ.get('CONTAINERS_CONF') or CONTAINERS_CONF
    return env


def venv_tool(name):
    path = os.path.join(rc.VENV_BIN, name)
    return path if os.access(path, os.X_OK) else None


def ensure_mqueue():
    """ansible-navigator refuses podman without a /dev/mqueue directory."""
    if os.path.isdir('/dev/mqueue'):
        return
    os.makedirs('/dev/mqueue', exist_ok=True)
    subprocess.run(
        ['mount', '-t', 'mqueue', 'mqueue', '/dev/mqueue'],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def results(events_dir):
    """{(host, task name): compared part of the result} from runner's job events."""
    out = {}
    for path in glob.glob(os.path.join(events_dir, '*.json')):
        with open(path) as f:
            ev = json.load(f)
        if ev.get('event') not in (
            'runner_on_ok',
            'runner_on_failed',
            'runner_on_skipped',
            'runner_on_unreachable',
        ):
            continue
        data = ev.get('event_data') or {}
        res = data.get('res') or {}
        part = {k: res[k] for k in KEYS if k in res}
        if isinstance(res.get('stat'), dict):
            part['stat'] = {k: res['stat'].get(k) for k in STAT_KEYS}
        if 'content' in res:
            part['content'] = res['content']
        if data.get('task') == 'debug':
            part['debug'] = res.get('msg')
        part['event'] = ev['event']
        out[(data.get('host'), data.get('task'))] = part
    return out


def recap(stdout):
    """{host: 'ok=.. changed=.. ...'} from a PLAY RECAP."""
    out = {}
    for line in re.sub(r'\x1b\[[0-9;]*[A-Za-z]', '', stdout).splitlines():
        m = re.match(r'^(t\d+)\s+:\s+(ok=.*)$', line.strip())
        if m:
            out[m.group(1)] = ' '.join(m.group(2).split())
    return out


class ExecutionEnvironment(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if os.geteuid() != 0:
            raise unittest.SkipTest('needs root (rootful podman, the netns fleet)')
        if not shutil.which('podman'):
            raise unittest.SkipTest('podman is not installed (scripts/setup.sh installs it)')
        cls.runner = venv_tool('ansible-runner')
        if not cls.runner:
            raise unittest.SkipTest('no ansible-runner in %s (scripts/venv.sh)' % rc.VENV)
        if not venv_tool('ansible-builder'):
            raise unittest.SkipTest('no ansible-builder in %s (scripts/venv.sh)' % rc.VENV)
        start = time.time()
        p = subprocess.run(
            ['bash', BUILD],
            env=dict(podman_env(), SPINDLE_VENV=rc.VENV),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            universal_newlines=True,
        )
        if p.returncode == rc.SKIP:
            raise unittest.SkipTest('containers/ee/build-ee.sh: ' + p.stderr.strip()[-300:])
        if p.returncode != 0:
            raise RuntimeError('containers/ee/build-ee.sh failed (%d): %s' % (p.returncode, p.stderr[-4000:]))
        print(
            '\n[ee] %s ready in %.1f s (%s)' % (IMAGE, time.time() - start, p.stderr.strip().splitlines()[-1])
        )
        cls.inventory = rs.fleet_up(FLEET_NAME, COUNT)
        cls.fleet_dir = os.path.dirname(cls.inventory)

    @classmethod
    def tearDownClass(cls):
        rs.fleet_down(FLEET_NAME)

    def private_data_dir(self, envvars):
        """A runner private data dir: project/site.yml, inventory/hosts (the fleet's, with the
        key left to env/ssh_key and known_hosts under /runner), env/envvars."""
        pdd = tempfile.mkdtemp(prefix='spindle-ee-', dir='/var/tmp')
        if not os.environ.get('SPINDLE_TEST_KEEP'):
            self.addCleanup(shutil.rmtree, pdd, True)
        for d in ('project', 'inventory', 'env'):
            os.makedirs(os.path.join(pdd, d))
        with open(os.path.join(pdd, 'project', 'site.yml'), 'w') as f:
            f.write(PLAYBOOK)
        shutil.copy(os.path.join(self.fleet_dir, 'known_hosts'), os.path.join(pdd, 'project'))
        with open(self.inventory) as f:
            inv = f.read()
        inv = '\n'.join(
            line for line in inv.splitlines() if not line.startswith('ansible_ssh_private_key_file=')
        )
        inv = inv.replace(os.path.join(self.fleet_dir, 'known_hosts'), '/runner/project/known_hosts')
        with open(os.path.join(pdd, 'inventory', 'hosts'), 'w') as f:
            f.write(inv + '\n')
        shutil.copy(os.path.join(self.fleet_dir, 'id_ed25519'), os.path.join(pdd, 'env', 'ssh_key'))
        with open(os.path.join(pdd, 'env', 'envvars'), 'w') as f:
            json.dump(envvars, f)
        return pdd

    def run_runner(self, envvars, worker=False):
        """One job: ``ansible-runner run --process-isolation`` (podman), or with ``worker`` the
        way AWX runs a job through receptor: ``ansible-runner transmit`` | ``podman run IMAGE
        ansible-runner worker`` | ``ansible-runner process``. (stdout, results, paths, s)."""
        pdd = self.private_data_dir(envvars)
        start = time.time()
        if worker:
            out_dir = tempfile.mkdtemp(prefix='spindle-ee-out-', dir='/var/tmp')
            if not os.environ.get('SPINDLE_TEST_KEEP'):
                self.addCleanup(shutil.rmtree, out_dir, True)
            cmd = (
                '%s transmit %s --ident job -p site.yml -v | podman run --rm -i --network=host '
                '--name spindle-ee-worker-%d %s ansible-runner worker --private-data-dir=/runner'
                ' | %s process %s' % (self.runner, pdd, os.getpid(), IMAGE, self.runner, out_dir)
            )
            p = subprocess.run(
                ['bash', '-o', 'pipefail', '-c', cmd],
                env=podman_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                universal_newlines=True,
                timeout=600,
            )
            artifacts = os.path.join(out_dir, 'artifacts')  # process writes no ident dir
        else:
            argv = [
                self.runner,
                'run',
                '--process-isolation',
                '--process-isolation-executable',
                'podman',
                '--container-image',
                IMAGE,
                '--container-option=--network=host',
                '--container-option=--user=0',
                '--ident',
                'job',
                '-p',
                'site.yml',
                '-v',
                pdd,
            ]
            p = subprocess.run(
                argv,
                env=podman_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                universal_newlines=True,
                timeout=600,
            )
            artifacts = os.path.join(pdd, 'artifacts', 'job')
        took = time.time() - start
        self.assertEqual(p.returncode, 0, p.stdout[-4000:])
        events = results(os.path.join(artifacts, 'job_events'))
        paths = None
        if os.path.exists(os.path.join(pdd, 'paths.json')):
            with open(os.path.join(pdd, 'paths.json')) as f:
                paths = json.load(f)
        return p.stdout, events, paths, took

    def assert_in_agent(self, stdout, paths=None):
        m = LINE.search(stdout)
        self.assertIsNotNone(m, 'no spindle end-of-run line in the job stdout:\n' + stdout[-3000:])
        total, agent, forked, stock = map(int, m.groups())
        self.assertGreater(total, 0)
        self.assertEqual((agent, forked, stock), (total, 0, 0), m.group(0))
        if paths is not None:
            self.assertEqual(paths['in_agent'], total, paths)
            self.assertEqual(paths['stock'], 0, paths)
        return total

    def compare_stock(self, worker):
        stock_out, stock, stock_paths, stock_s = self.run_runner({'SPINDLE_EE': 'off'}, worker)
        sp_out, sp, sp_paths, sp_s = self.run_runner({'SPINDLE_PATHS_FILE': '/runner/paths.json'}, worker)
        print(
            '\n[ee] %s: stock %.1f s, spindle %.1f s (%d hosts)'
            % (
                'ansible-runner worker (AWX)' if worker else 'ansible-runner --process-isolation',
                stock_s,
                sp_s,
                COUNT,
            )
        )
        # stock: no sign of spindle
        self.assertIsNone(LINE.search(stock_out), stock_out[-3000:])
        self.assertIsNone(stock_paths)
        # every module task of the play on every host, in the agent
        # (setup, ping, command, copy x2, stat, slurp, shell, file: 9 per host)
        self.assertEqual(
            self.assert_in_agent(sp_out, None if worker else sp_paths), 9 * COUNT, sp_out[-2000:]
        )
        self.assertEqual(len(stock), 10 * COUNT, sorted(stock))
        self.assertEqual(sorted(stock), sorted(sp))
        for key in sorted(stock):
            self.assertEqual(stock[key], sp[key], key)
        self.assertEqual(recap(stock_out), recap(sp_out))
        self.assertEqual(len(recap(sp_out)), COUNT, sp_out[-2000:])

    def test_runner(self):
        self.compare_stock(worker=False)

    def test_worker(self):
        """AWX/AAP's way: the image's own user (1000), the key written by runner inside."""
        self.compare_stock(worker=True)

    def test_navigator(self):
        nav = venv_tool('ansible-navigator')
        if not nav:
            self.skipTest('no ansible-navigator in %s (scripts/venv.sh)' % rc.VENV)
        ensure_mqueue()
        work = tempfile.mkdtemp(prefix='spindle-ee-nav-', dir='/var/tmp')
        if not os.environ.get('SPINDLE_TEST_KEEP'):
            self.addCleanup(shutil.rmtree, work, True)
        with open(os.path.join(work, 'site.yml'), 'w') as f:
            f.write(PLAYBOOK)
        argv = [
            nav,
            'run',
            'site.yml',
            '-i',
            self.inventory,
            '--eei',
            IMAGE,
            '--mode',
            'stdout',
            '--pull-policy',
            'never',
            '--ce',
            'podman',
            '--co=--network=host',
            '--co=--user=0',
            '--pae',
            'false',
            '--lf',
            os.path.join(work, 'navigator.log'),
            '-v',
        ]
        env = {k: v for k, v in podman_env().items() if not k.startswith('ANSIBLE_')}
        start = time.time()
        p = subprocess.run(
            argv,
            cwd=work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            universal_newlines=True,
            timeout=600,
        )
        took = time.time() - start
        print('\n[ee] ansible-navigator run --eei: %.1f s' % took)
        self.assertEqual(p.returncode, 0, p.stdout[-4000:])
        self.assertEqual(self.assert_in_agent(p.stdout), 9 * COUNT)
        self.assertEqual(
            recap(p.stdout),
            {
                't%d' % i: 'ok=10 changed=4 unreachable=0 failed=0 skipped=0 rescued=0 ignored=1'
                for i in range(COUNT)
            },
            p.stdout[-3000:],
        )


if __name__ == '__main__':
    unittest.main()
