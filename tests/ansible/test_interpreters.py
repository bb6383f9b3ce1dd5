"""The task's interpreter is the agent's, and the fast path holds with Ansible's defaults.

A netns fleet of 2 sshd targets whose login PATH finds another python3 first (a virtualenv
put ahead of /usr/bin by the login shell's ~/.bashrc, as pyenv, conda or a venv do on real
hosts). Ansible is configured only with the lines ``python -m spindle_ansible`` prints:
``pipelining`` is left at Ansible's default (off). Then:

* t0 names ``ansible_python_interpreter=/usr/bin/python3`` (an explicit interpreter that is
  not the login PATH's python3); t1 leaves it to interpreter discovery;
* every module reports the interpreter it ran under (``ansible_python.executable`` and a
  custom module's ``sys.executable``/``sys.prefix``): it must be the one Ansible resolved
  (explicit, discovered, or a task-level ``ansible_python_interpreter`` naming another
  virtualenv, whose own package the module imports);
* every module task ran in an agent: the run's path counts (``SPINDLE_PATHS_FILE``, written
  by the ``spindle`` callback) show no stock path, and no stock-path warning is printed;
* ``apt`` and ``package_facts`` run forked in the agent with their payload on disk, and
  ``apt`` from a virtualenv without python3-apt respawns under the system Python from there;
* a module that must take the stock path (``spindle_task_isolation: off``) says why, once per host, at
  default verbosity, and is counted with its reason.

Each case runs as root and as an unprivileged login user (``spx``, made here).
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

import readme_setup as rs  # noqa: E402  (tests/ansible is the start dir)

REPO = rs.REPO
FLEET = rs.FLEET
FLEET_NAME = 'intp'
LOGIN_USER = 'spxinterp'
SHARED_DIR = '/var/lib/spindle-tests'

MODULE = '''#!/usr/bin/python
import sys
from ansible.module_utils.basic import AnsibleModule
try:
    import spindle_venv_marker
    marker = spindle_venv_marker.NAME
except ImportError:
    marker = None
m = AnsibleModule(argument_spec={})
m.exit_json(executable=sys.executable, prefix=sys.prefix, marker=marker)
'''

PLAY = '''
- hosts: all
  gather_facts: false
  tasks:
    - name: the login PATH's python3 is another one (the case under test)
      raw: python3 -c 'import sys; print(sys.prefix)'
      register: login_py
    - assert: {that: ["'pathpy' in login_py.stdout"]}
    - name: facts under the host's interpreter
      setup: {gather_subset: [min], filter: [ansible_python]}
      register: facts
    - name: the module's interpreter
      spx_interp: {}
      register: plain
    - name: expected interpreter
      set_fact:
        want: "{{ ansible_python_interpreter | default(discovered_interpreter_python) }}"
    - assert:
        that:
          - facts.ansible_facts.ansible_python.executable == want
          - plain.executable == want
          - plain.marker is none
        fail_msg: "ran under {{ plain.executable }}, Ansible resolved {{ want }}"
    - name: a task-level interpreter (another virtualenv, with its own package)
      spx_interp: {}
      vars: {ansible_python_interpreter: "%(taskpy)s"}
      register: venv
    - assert:
        that:
          - venv.executable == "%(taskpy)s"
          - venv.marker == "task-venv"
        fail_msg: "task venv: {{ venv }}"
    - name: command, copy and stat in the agent too
      command: hostname
    - copy: {content: "x", dest: "/tmp/spx-interp-{{ ansible_user }}.txt"}
    - stat: {path: /etc/hostname}
    - name: become to root under the same interpreter
      spx_interp: {}
      become: true
      register: become
    - assert:
        that: [become.executable == want]
    - name: apt (forked in the agent, payload on disk for a respawn)
      apt: {name: spindle-no-such-package-x, state: absent}
    - name: apt from a virtualenv without python3-apt (it respawns under the system Python)
      apt: {name: spindle-no-such-package-y, state: absent}
      vars: {ansible_python_interpreter: "%(taskpy)s"}
    - name: package_facts
      package_facts: {manager: apt}
    - assert:
        that: ["'openssh-server' in ansible_facts.packages"]
'''

STOCK_PLAY = '''
- hosts: all
  gather_facts: false
  tasks:
    - command: "true"
      vars: {spindle_task_isolation: "off"}
    - command: "true"
      vars: {spindle_task_isolation: "off"}
'''

OPEN_PLAY = """
- hosts: all
  gather_facts: false
  tasks:
    - name: the first module task (its stream opens while Ansible builds the module)
      spx_interp: {}
      register: first
    - set_fact:
        want: "{{ ansible_python_interpreter | default(discovered_interpreter_python) }}"
    - assert: {that: [first.executable == want]}
    - command: hostname
"""


#: On t0, under a virtualenv's python: the program replaced by a task, as a package upgrade
#: does; the next task must run in another agent (another process).
UPGRADE_PLAY = '''
- hosts: t0
  gather_facts: false
  vars: {ansible_python_interpreter: "%(venv)s/bin/python"}
  tasks:
    - name: the agent running the tasks
      shell: echo $PPID
      register: before
    - name: upgrade the interpreter (a new file renamed over the old)
      shell: cp -L %(venv)s/bin/python %(venv)s/bin/python.new && mv -f %(venv)s/bin/python.new %(venv)s/bin/python
    - name: the agent running the tasks now
      shell: echo $PPID
      register: after
    - assert: {that: ["before.stdout != after.stdout"]}
    - name: and the next one
      command: "%(venv)s/bin/python -c 'import sys; print(sys.prefix)'"
'''

run = rs.run


class Interpreters(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.inventory = rs.fleet_up(FLEET_NAME, 2)
        cls.fleet_dir = os.path.dirname(cls.inventory)
        # Where the targets see it too: their /tmp, /var/tmp and /root are private (and the
        # checkout itself may live under /tmp).
        os.makedirs(SHARED_DIR, mode=0o755, exist_ok=True)
        cls.work = tempfile.mkdtemp(prefix='spindle-interp-', dir=SHARED_DIR)
        os.chmod(cls.work, 0o755)
        for name in ('pathpy', 'taskpy'):
            subprocess.run(
                ['/usr/bin/python3', '-m', 'venv', '--without-pip', os.path.join(cls.work, name)], check=True
            )
        site = run(
            [
                os.path.join(cls.work, 'taskpy', 'bin', 'python'),
                '-c',
                'import sysconfig; print(sysconfig.get_paths()["purelib"])',
            ]
        ).stdout.strip()
        with open(os.path.join(site, 'spindle_venv_marker.py'), 'w') as f:
            f.write('NAME = "task-venv"\n')
        cls.taskpy = os.path.join(cls.work, 'taskpy', 'bin', 'python')
        os.makedirs(os.path.join(cls.work, 'library'))
        with open(os.path.join(cls.work, 'library', 'spx_interp.py'), 'w') as f:
            f.write(MODULE)
        cls.users = ['root']
        cls.drop_user = rs.login_user(LOGIN_USER)
        if cls.drop_user is not None:
            cls.users.append(LOGIN_USER)
        # The login shell's PATH finds the 'pathpy' venv's python3 first (root's home is
        # private to each target; the login user's is shared).
        bashrc = 'export PATH=%s:$PATH\n' % os.path.join(cls.work, 'pathpy', 'bin')
        for i in range(2):
            r = run(
                [
                    'bash',
                    FLEET,
                    'exec',
                    FLEET_NAME,
                    str(i),
                    'sh',
                    '-c',
                    'printf %s "$1" > /root/.bashrc',
                    'sh',
                    bashrc,
                ]
            )
            assert r.returncode == 0, r.stdout
        if LOGIN_USER in cls.users:
            home = os.path.expanduser('~' + LOGIN_USER)
            with open(os.path.join(home, '.bashrc'), 'w') as f:
                f.write(bashrc)

    @classmethod
    def tearDownClass(cls):
        rs.fleet_down(FLEET_NAME)
        shutil.rmtree(getattr(cls, 'work', '/nonexistent'), True)
        if getattr(cls, 'drop_user', None):
            cls.drop_user()

    def playbook(self, text, user, tag):
        """Run ``text`` with only the README's ansible.cfg lines; (rc, output, paths)."""
        work = tempfile.mkdtemp(prefix=tag + '-', dir=self.work)
        rs.write_cfg(work, 'library = %s' % os.path.join(self.work, 'library'), 'host_key_checking = False')
        # t0 names an interpreter (not the login PATH's python3); t1 leaves it to discovery.
        rs.inventory(
            self.inventory,
            os.path.join(work, 'inventory.ini'),
            user=user,
            interpreters={'t0': '/usr/bin/python3'},
        )
        with open(os.path.join(work, 'play.yml'), 'w') as f:
            f.write(text % {'taskpy': self.taskpy})
        p = run(
            [os.path.join(rs.VENV_BIN, 'ansible-playbook'), '-i', 'inventory.ini', 'play.yml'],
            cwd=work,
            env=rs.env(work),
        )
        return p.returncode, p.stdout, rs.paths(work)

    def test_module_runs_under_the_resolved_interpreter_in_an_agent(self):
        for user in self.users:
            with self.subTest(user=user):
                rc, out, paths = self.playbook(PLAY, user, 'interp-' + user)
                self.assertEqual(rc, 0, out)
                self.assertIsNotNone(paths, out)
                self.assertEqual(paths['stock'], 0, (paths, out))
                self.assertNotIn("stock command path", out)
                # 2 hosts x (setup, 2 x spx_interp, command, copy, stat, become) at least,
                # and the apt family forked (payload on disk for a respawn)
                self.assertGreaterEqual(paths['in_agent'], 14, paths)
                self.assertEqual(paths['forked'], 6, paths)
                print('%s: %s' % (user, json.dumps(paths, sort_keys=True)), file=sys.stderr)

    def test_a_task_that_replaces_the_interpreter_gets_it_from_the_next_task_on(self):
        # A task upgrades the interpreter the host's tasks run under (what apt does to
        # /usr/bin/python3.11: a new file renamed over the old). Stock starts the new one for
        # the next task; so does spindle: the agent retires after that task, and the next
        # task runs in a new agent, with nothing failed or on the stock path.
        venv = os.path.join(self.work, 'upgpy')
        subprocess.run(['/usr/bin/python3', '-m', 'venv', '--without-pip', venv], check=True)
        rc, out, paths = self.playbook(UPGRADE_PLAY % {'venv': venv}, 'root', 'upgrade')
        self.assertEqual(rc, 0, out)
        self.assertEqual(paths['stock'], 0, (paths, out))
        self.assertNotIn('agent_ended', out)

    def test_stock_path_says_why_once_per_host(self):
        rc, out, paths = self.playbook(STOCK_PLAY, 'root', 'stock')
        self.assertEqual(rc, 0, out)
        # one warning per host, and the end-of-run summary
        flat = ' '.join(out.split())  # (older ansible-core wraps warnings)
        self.assertEqual(flat.count("spindle_task_isolation is off"), 2 + 1, out)
        self.assertEqual(paths['stock'], 4, paths)
        self.assertEqual(list(paths['stock_reasons'].values()), [4], paths)

    def test_the_first_module_task_opens_the_stream_while_its_module_is_built(self):
        # The stream is opened (daemon op `open`) before Ansible builds a host's first module
        # of the run, under the interpreter the inventory names: t0's agent is the one its
        # modules run in (no second agent for /usr/bin/python3), and t1's (discovery: the
        # venv's python3.11 beside the python3 its agent started as) too. Later tasks do not ask again. The same with a
        # spindle strategy and no callback, and on streams already open ("ready"). As root
        # and as the unprivileged login user, with the README's lines (pipelining off).
        for user in self.users:
            with self.subTest(user=user):
                self.check_open_ahead(user)

    def check_open_ahead(self, user):
        work = tempfile.mkdtemp(prefix='open-%s-' % user, dir=self.work)
        sock = os.path.join(work, 's.sock')
        daemon = subprocess.Popen([rs.BIN, 'serve', '--socket', sock], stderr=subprocess.DEVNULL)
        self.addCleanup(daemon.wait)
        self.addCleanup(daemon.kill)
        rs.write_cfg(work, 'library = %s' % os.path.join(self.work, 'library'), 'host_key_checking = False')
        inventory = os.path.join(work, 'inventory.ini')
        rs.inventory(self.inventory, inventory, user=user, interpreters={'t0': '/usr/bin/python3'})
        with open(os.path.join(work, 'play.yml'), 'w') as f:
            f.write(OPEN_PLAY)

        def opened(**env):
            p = run(
                [os.path.join(rs.VENV_BIN, 'ansible-playbook'), '-i', 'inventory.ini', 'play.yml', '-vvv'],
                cwd=work,
                env=dict(rs.env(work), SPINDLE_SOCKET=sock, **env),
            )
            self.assertEqual(p.returncode, 0, p.stdout[-4000:])
            return [
                line.rsplit(': ', 1)[-1] for line in p.stdout.splitlines() if 'SPINDLE OPEN ahead' in line
            ]

        self.assertEqual(opened(), ['opening'] * 2)  # once per host, on its first module task
        stats = json.loads(run([rs.BIN, 'stats', '--socket', sock]).stdout)
        labels = sorted(stats['targets'])  # by address; an interpreter context's with its path
        with open(inventory) as f:
            addr = dict(re.findall(r'^(t\d+) ansible_host=(\S+)', f.read(), re.M))
        self.assertEqual([x for x in labels if x.split()[0] == addr['t0']], [addr['t0']], labels)
        # t1's discovered <venv>/bin/python3.11 is the stream agent's own <venv>/bin/python3
        # (the HELLO's aliases): no interpreter context either
        self.assertEqual([x for x in labels if x.split()[0] == addr['t1']], [addr['t1']], labels)
        with open(os.path.join(work, 'ansible.cfg')) as f:
            cfg = f.read().replace('callbacks_enabled = spindle\n', 'strategy = spindle_linear\n')
        self.assertIn('strategy = spindle_linear', cfg)
        with open(os.path.join(work, 'strategy.cfg'), 'w') as f:
            f.write(cfg)
        self.assertEqual(opened(ANSIBLE_CONFIG=os.path.join(work, 'strategy.cfg')), ['ready'] * 2)


if __name__ == '__main__':
    unittest.main()
