"""Cases found on playbooks nobody on the team wrote (issue 14), stock vs spindle on the same
netns target, per-task results compared (the ``spindle_record`` callback), as root and as an
unprivileged login user with passwordless sudo, with interpreter discovery and only the
README's ansible.cfg lines for spindle (pipelining at Ansible's default, off). Stock runs with
pipelining on: spindle runs modules in its agent whatever pipelining says, so a failing become
command fails at the module run, as under stock with pipelining, where stock without it fails
one step earlier, at the temp files' permissions.

* a copy delegated to the controller stages its temp dir in the *controller* user's home, as
  stock does, not in ``~ansible_user`` on the controller (which then belonged to root and
  broke the next remote copy as that user);
* when the become command itself fails (unknown become user, bad become flags), the task
  result has stock's shape: ``rc``, ``module_stdout``, ``module_stderr`` and msg for a module,
  ``rc``/``stdout``/``stderr`` for raw, "Failed to get information on remote file" for copy;
* ``raw`` runs under the login shell on a terminal, as sshd runs it for stock's ``ssh -tt``:
  bash's ``echo -en``, ``$BASH_VERSION``, CRLF line ends and stderr merged into stdout; and
  without a terminal with ``ansible_ssh_use_tty=False``, and under dash for a user whose
  login shell is ``/bin/sh``;
* login shells that are not POSIX (fish, tcsh) or not bash (zsh), and a bash user whose
  ``~/.bashrc`` greets on stdout and stderr (ssh runs it for commands too): the agent starts
  all the same (stage 0 goes to the login shell as one ``/bin/sh -c`` word; what the shell
  prints before stage 1's boot marker is skipped), ``raw`` sees what stock's sees, and root
  becomes each of them with ``su`` (their login shell runs the nested agent's start);
* a task that kills its own Python (``kill $PPID``, as ``pkill python3`` or the OOM killer
  would): under stock that Python is the task's own, the module fails and the host carries
  on; spindle's agent ran it, and the host was UNREACHABLE (dropped from the play). Now the
  task fails as under stock, and the host's next task gets a new agent; also through a via
  hop (``spindle_via``) to the fish and tcsh users, whose login shells then run stage 0 for
  the hop's ssh.
"""

import json
import os
import shutil
import sys
import tempfile
import unittest

import readme_setup as rs

FLEET = rs.FLEET
FLEET_NAME = 'field'
LOGIN_USER = 'spxfield'
DASH_USER = 'spxdash'

PLAY = '''
- hosts: all
  gather_facts: false
  tasks:
    - name: copy delegated to the controller
      copy: {content: "delegated", dest: "%(shared)s/delegated-{{ inventory_hostname }}.txt"}
      delegate_to: localhost
      register: delegated
    - name: where it staged (the controller user's home)
      assert:
        that: not (delegated.invocation.module_args.src | default('') is search('/home/%(user)s/'))
    - name: then a remote copy as the login user
      copy: {content: "remote", dest: "/tmp/field-{{ ansible_user }}.txt"}
    - name: become to an unknown user (module)
      command: whoami
      become: true
      become_user: spindle_no_such_user
      ignore_errors: true
    - name: become with a bad flag (module)
      command: whoami
      become: true
      vars: {ansible_become_flags: --spindle-bad-flag}
      ignore_errors: true
    - name: become to an unknown user (copy)
      copy: {content: x, dest: /tmp/field-unknown.txt}
      become: true
      become_user: spindle_no_such_user
      ignore_errors: true
    - name: become to an unknown user (raw)
      raw: whoami
      become: true
      become_user: spindle_no_such_user
      ignore_errors: true
    - name: raw runs under the login shell
      raw: echo -en $((1 + 1)); echo "${BASH_VERSION:+bash}"
    - name: raw on a terminal (line ends, stderr merged)
      raw: echo out; echo err >&2; exit 3
      ignore_errors: true
'''


#: Users whose login shell is not bash or whose rc file talks: (name, shell, ~/.bashrc text).
SHELL_USERS = (
    ('spxfish', '/usr/bin/fish', None),
    ('spxtcsh', '/usr/bin/tcsh', None),
    ('spxzsh', '/usr/bin/zsh', None),
    ('spxtalk', '/bin/bash', 'echo "Welcome to $(hostname), managed by ops"\necho "rc on stderr" >&2\n'),
)

#: For them: nothing bash-specific in raw (fish and tcsh have other syntax, as under stock).
SHELL_PLAY = '''
- hosts: all
  gather_facts: false
  tasks:
    - name: raw under the login shell
      raw: echo raw-ok
    - name: command
      command: whoami
    - name: shell (/bin/sh whatever the login shell)
      shell: echo "$0" sh-ok
    - name: copy
      copy: {content: "shell\\n", dest: "/tmp/field-{{ ansible_user }}.txt"}
    - name: stat
      stat: {path: "/tmp/field-{{ ansible_user }}.txt"}
    - name: fetch
      fetch: {src: "/tmp/field-{{ ansible_user }}.txt", dest: "%(shared)s/fetched-{{ ansible_user }}", flat: true}
    - name: become (sudo)
      command: whoami
      become: true
    - name: script (no module, so nothing on the stock path)
      script: hello.sh one two
'''

#: As root: su to each of them (su runs the nested agent's start with their login shell).
SU_PLAY = '''
- hosts: all
  gather_facts: false
  tasks:
    - name: su to a user with another login shell
      command: whoami
      become: true
      become_method: su
      become_user: "{{ item }}"
      loop: %(users)s
    - name: copy as that user
      copy: {content: "su\\n", dest: "/tmp/field-su-{{ item }}.txt"}
      become: true
      become_method: su
      become_user: "{{ item }}"
      loop: %(users)s
'''

#: Tasks that kill the Python running them: the stream's agent, then a become context's.
KILL_PLAY = '''
- hosts: all
  gather_facts: false
  tasks:
    - name: kill the Python running the task
      shell: kill $PPID; sleep 2
      ignore_errors: true
    - name: the host carries on
      command: whoami
    - name: kill it with SIGKILL, as root
      shell: kill -9 $PPID; sleep 2
      become: true
      ignore_errors: true
    - name: and carries on as root
      command: whoami
      become: true
'''

#: Through a hop (VIA: ``spindle_via``) to a user with another login shell.
VIA_PLAY = '''
- hosts: fleet:!hop
  gather_facts: false
  tasks:
    - name: command
      command: whoami
    - name: copy
      copy: {content: "via\\n", dest: "/tmp/field-via-{{ ansible_user }}.txt"}
    - name: become
      command: whoami
      become: true
    - name: kill the Python running the task
      shell: kill $PPID; sleep 2
      ignore_errors: true
    - name: the host carries on
      command: whoami
'''

run = rs.run


class FieldCases(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.inventory = rs.fleet_up(FLEET_NAME, 1)
        cls.shared = tempfile.mkdtemp(prefix='spindle-field-')
        # (login user, raw on a terminal): root and an unprivileged bash user with the ssh
        # plugin's default (a terminal), root without one, a user whose login shell is dash.
        cls.cases = [('root', True), ('root', False)]
        cls.drops = []
        for name, shell in ((LOGIN_USER, '/bin/bash'), (DASH_USER, '/bin/sh')):
            drop = rs.login_user(name, shell)
            if drop is not None:
                cls.drops.append(drop)
                cls.cases.append((name, True))
        cls.shell_users = []
        for name, shell, rc in SHELL_USERS:
            if not os.path.exists(shell):
                print('%s: no %s here (scripts/setup.sh installs it)' % (name, shell), file=sys.stderr)
                continue
            drop = rs.login_user(name, shell)
            if drop is None:
                continue
            cls.drops.append(drop)
            if rc is not None:
                path = os.path.join(os.path.expanduser('~%s' % name), '.bashrc')
                with open(path, 'w') as f:
                    f.write(rc)
            cls.shell_users.append(name)

    @classmethod
    def tearDownClass(cls):
        rs.fleet_down(FLEET_NAME)
        shutil.rmtree(getattr(cls, 'shared', '/nonexistent'), ignore_errors=True)
        for drop in getattr(cls, 'drops', []):
            drop()

    def one_run(self, kind, user, tty=True, play=PLAY, inv_vars=(), via=False, **fields):
        work = tempfile.mkdtemp(prefix='spindle-field-%s-' % kind)
        self.addCleanup(shutil.rmtree, work, True)
        os.chmod(work, 0o755)
        if kind == 'spindle':
            rs.write_record_cfg(work, 'host_key_checking = False')
        else:
            with open(os.path.join(work, 'ansible.cfg'), 'w') as f:
                f.write(
                    '[defaults]\nhost_key_checking = False\ncallbacks_enabled = spindle_record\n'
                    'callback_plugins = %s\n' % os.path.join(rs.PKG, 'spindle_ansible', 'plugins', 'callback')
                )
        rs.inventory(self.inventory, os.path.join(work, 'inventory.ini'), user=user)
        if via:  # the fleet's host reached through a hop: itself, as root
            self.via_self(os.path.join(work, 'inventory.ini'))
        inv_vars = list(inv_vars) + ([] if tty else ['ansible_ssh_use_tty=False'])
        if inv_vars:
            with open(os.path.join(work, 'inventory.ini'), 'a') as f:
                f.write('\n[all:vars]\n%s\n' % '\n'.join(inv_vars))
        with open(os.path.join(work, 'play.yml'), 'w') as f:
            f.write(play % dict(fields, shared=self.shared, user=user))
        with open(os.path.join(work, 'hello.sh'), 'w') as f:
            f.write('#!/bin/sh\necho "script $* as $(id -un)"\n')
        # Each run starts from the same state: no file of the last one, here or on the target.
        shutil.rmtree(self.shared, ignore_errors=True)
        os.makedirs(self.shared)
        run(['bash', FLEET, 'exec', FLEET_NAME, '0', 'sh', '-c', 'rm -f /tmp/field-*'])
        env = rs.env(work)
        if kind == 'stock':
            env['ANSIBLE_PIPELINING'] = 'True'
        env['SPINDLE_RECORD'] = os.path.join(work, 'record.json')
        env['HOME'] = os.path.expanduser('~root')
        p = run(
            [os.path.join(rs.VENV_BIN, 'ansible-playbook'), '-i', 'inventory.ini', 'play.yml'],
            cwd=work,
            env=env,
        )
        if not os.path.exists(env['SPINDLE_RECORD']):
            self.fail('%s run wrote no record:\n%s' % (kind, p.stdout[-3000:]))
        with open(env['SPINDLE_RECORD']) as f:
            records = json.load(f)
        p.paths = None  # where spindle's module runs went (paths.report)
        if kind == 'spindle' and os.path.exists(env['SPINDLE_PATHS_FILE']):
            with open(env['SPINDLE_PATHS_FILE']) as f:
                p.paths = json.load(f)
        return p, records

    @staticmethod
    def via_self(path):
        """Inventory ``path`` with its hosts reached through a hop (``spindle_via``): a host
        ``hop`` at the first host's address, logged in as root (its agent runs ssh to the
        target)."""
        with open(path) as f:
            lines = f.read().splitlines()
        hop = None
        for i, line in enumerate(lines):
            words = line.split()
            if words and words[0].startswith('t') and 'ansible_host=' in line:
                hop = hop or [w for w in words if w.startswith(('ansible_host=', 'ansible_port='))]
                lines[i] = line + ' spindle_via=hop'
        # in the fleet's group, for its key and ssh options; the play leaves it out
        lines += ['[hops]', ' '.join(['hop'] + hop + ['ansible_user=root']), '[fleet:children]', 'hops']
        with open(path, 'w') as f:
            f.write('\n'.join(lines) + '\n')

    def agree(self, user, tty=True, play=PLAY, **fields):
        """Stock and spindle run ``play`` as ``user``, both succeed with the same per-task
        results; spindle's run (its ``paths``: where its module runs went)."""
        stock, a = self.one_run('stock', user, tty, play, **fields)
        spindle, b = self.one_run('spindle', user, tty, play, **fields)
        self.assertEqual(stock.returncode, 0, stock.stdout)
        self.assertEqual(spindle.returncode, 0, spindle.stdout)
        if a != b:
            self.fail('stock and spindle differ as %s (tty %s):\n%s' % (user, tty, rs.udiff(a, b)))
        return spindle

    def test_login_shells_and_talking_rc_files(self):
        if not self.shell_users:
            self.skipTest('no fish, tcsh or zsh here (scripts/setup.sh installs them)')
        print('login users: %s' % self.shell_users, file=sys.stderr)
        for user in self.shell_users:
            with self.subTest(user=user):
                spindle = self.agree(user, play=SHELL_PLAY)
                # every module task in the agent, none on the stock path
                self.assertTrue(spindle.paths, spindle.stdout[-3000:])
                self.assertEqual(spindle.paths.get('stock'), 0, spindle.paths)
                self.assertGreater(spindle.paths.get('in_agent', 0), 0, spindle.paths)
        with self.subTest(user='root', become_method='su'):
            self.agree('root', play=SU_PLAY, users=json.dumps(self.shell_users))

    def test_through_a_hop_to_users_with_other_login_shells(self):
        # The hop's agent runs ssh to the target: stage 0 goes through the target user's
        # login shell there too (fish, tcsh). A task that kills its Python fails only itself.
        if not self.shell_users:
            self.skipTest('no fish, tcsh or zsh here (scripts/setup.sh installs them)')
        for user in [u for u in self.shell_users if u in ('spxfish', 'spxtcsh')]:
            with self.subTest(user=user):
                p, records = self.one_run('spindle', user, play=VIA_PLAY, via=True)
                self.assertEqual(p.returncode, 0, p.stdout[-3000:])
                by_task = {r.get('task'): r for r in records if r.get('host') == 't0'}
                self.assertEqual(by_task['command']['result'].get('stdout'), user, by_task)
                self.assertEqual(by_task['become']['result'].get('stdout'), 'root', by_task)
                killed = by_task['kill the Python running the task']
                self.assertEqual(killed['status'], 'failed', killed)
                self.assertIn('ended before the task finished', killed['result'].get('module_stderr', ''))
                self.assertEqual(by_task['the host carries on']['result'].get('stdout'), user, by_task)
                self.assertEqual(p.paths.get('stock'), 0, p.paths)

    def test_a_terminal_asked_for_in_ssh_args_is_not_the_streams(self):
        # `-tt` in ssh_extra_args (a sudo requiretty habit): the stream stays binary-clean
        # (spindle's become has a pty of its own), every module in the agent. Stock with
        # pipelining sends module code through that terminal, so no comparison here.
        p, records = self.one_run('spindle', 'root', play=SHELL_PLAY, inv_vars=['ansible_ssh_extra_args=-tt'])
        self.assertEqual(p.returncode, 0, p.stdout[-3000:])
        self.assertEqual(p.paths.get('stock'), 0, p.paths)
        self.assertGreater(p.paths.get('in_agent', 0), 0, p.paths)

    def test_a_task_that_kills_its_python_fails_only_itself(self):
        if len(self.cases) < 3:
            self.skipTest('no unprivileged login user here')
        (stock, a), (spindle, b) = (self.one_run(k, LOGIN_USER, play=KILL_PLAY) for k in ('stock', 'spindle'))
        for p in (stock, spindle):
            self.assertEqual(p.returncode, 0, p.stdout[-3000:])
        shape = lambda records: [(r.get('task'), r.get('status')) for r in records if 'task' in r]  # noqa: E731
        self.assertEqual(shape(a), shape(b), rs.udiff(a, b))
        killed = [r['result'] for r in b if str(r.get('task')).startswith('kill')]
        self.assertEqual(len(killed), 2, b)
        for result in killed:
            self.assertIn('ended before the task finished', result.get('module_stderr', ''), result)
            self.assertNotIn('unreachable', result, result)
        # the become context's end comes with its status, as the shell gives stock's
        self.assertEqual(killed[1].get('rc'), 137, killed[1])

    def test_stock_and_spindle_agree(self):
        print('cases (login user, terminal): %s' % self.cases, file=sys.stderr)
        for user, tty in self.cases:
            with self.subTest(user=user, tty=tty):
                self.agree(user, tty)
                # Nothing of root's left in the login user's home on the controller.
                home = os.path.expanduser('~%s' % user)
                for dp, dns, fns in os.walk(os.path.join(home, '.ansible')):
                    for n in dns + fns:
                        self.assertEqual(
                            os.lstat(os.path.join(dp, n)).st_uid, os.lstat(home).st_uid, os.path.join(dp, n)
                        )


if __name__ == '__main__':
    unittest.main()
