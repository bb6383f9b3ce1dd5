"""become through spindle: sudo and su with passwords, in nested agents on the target.

Real sshd targets (netns fleet), real ansible-core, real sudo and su. The play logs in as an
unprivileged user (spindle-op) and becomes root and another user (spindle-app) with sudo and
su, with right, wrong and missing passwords, a become_flags variant, a module that writes as
root, and raw; and doas (community.general's plugin). When the become command itself fails
(unknown user, bad flags, wrong or missing password) the result has stock's shape: rc,
module_stdout and module_stderr, on a terminal for the methods that cannot pipeline (su,
doas), as stock runs them; su without a password is UNREACHABLE, as stock's prompt timeout. It runs once with stock Ansible (ssh + pipelining) and once through spindle;
per-task per-host results must be equal. Through spindle it also checks that a nested agent
is started once per (target, method, user, flags, password) and reused by the next run, and
that no password reaches the daemon's log even at the highest verbosity.

Needs root (it creates two users and a sudoers rule, removed afterwards). Skips, with the
reason printed, when the venv, the binary, sudo/useradd or the fleet is missing.
"""

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import unittest

import become_users

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
VENV_BIN = os.path.join(REPO, os.environ.get('SPINDLE_VENV') or '.venv', 'bin')
PLUGINS = os.path.join(REPO, 'ansible_plugin', 'spindle_ansible', 'plugins')
FLEET = os.path.join(REPO, 'containers', 'netns-fleet.sh')
BIN = os.environ.get('SPINDLE_BIN') or os.path.join(REPO, 'target', 'debug', 'spindle')
USERS = {'spindle-op': 'op-pass-1', 'spindle-app': 'app-pass-2'}
SUDOERS = '/etc/sudoers.d/spindle-tests'
DOAS_CONF = '/etc/doas.conf'
# doas: ansible-core ships no plugin; community.general's (scripts/collections.sh) is the usual one.
COLLECTIONS = os.path.join(os.path.dirname(VENV_BIN), 'collections')
DOAS_PLUGIN = os.path.join(
    COLLECTIONS, 'ansible_collections', 'community', 'general', 'plugins', 'become', 'doas.py'
)

PLAY = """
- hosts: all
  gather_facts: false
  vars:
    ansible_user: spindle-op
    ansible_become_password: op-pass-1
  tasks:
    - {name: sudo-clean, file: {path: /root/spindle-become.txt, state: absent}, become: true}
    - {name: sudo1, command: id -un, become: true}
    - {name: sudo2, command: id -un, become: true}
    - {name: sudo-shell, shell: 'echo $HOME; id -u; pwd', become: true}
    - name: sudo-copy
      copy: {content: "secret\\n", dest: /root/spindle-become.txt, mode: "0600"}
      become: true
    - {name: sudo-read, command: cat /root/spindle-become.txt, become: true}
    - {name: sudo-stat, stat: {path: /root/spindle-become.txt}, become: true}
    - {name: sudo-app, command: id -un, become: true, become_user: spindle-app}
    - {name: sudo-flags, command: id -un, become: true, become_flags: "-H -S -E"}
    - {name: raw-sudo, raw: id -un, become: true}
    - name: su-app
      command: id -un
      become: true
      become_method: su
      become_user: spindle-app
      vars: {ansible_become_password: app-pass-2}
    - name: sudo-wrong
      command: id -un
      become: true
      vars: {ansible_become_password: wrong-pass}
      ignore_errors: true
    - name: sudo-missing
      command: id -un
      become: true
      vars: {ansible_become_password: ""}
      ignore_errors: true
    - name: su-wrong
      command: id -un
      become: true
      become_method: su
      become_user: spindle-app
      vars: {ansible_become_password: wrong-pass}
      ignore_errors: true
    # When the become command itself fails (issue 14): stock's result shape (rc,
    # module_stdout, module_stderr, msg) for su and doas, with and without a password.
    - name: su-missing
      command: id -un
      become: true
      become_method: su
      become_user: spindle-app
      vars: {ansible_become_password: ""}
      ignore_errors: true
      ignore_unreachable: true  # stock: a timeout waiting for the prompt
    - name: su-unknown
      command: id -un
      become: true
      become_method: su
      become_user: spindle_no_such_user
      vars: {ansible_become_password: app-pass-2}
      ignore_errors: true
    - name: su-badflag
      command: id -un
      become: true
      become_method: su
      become_user: spindle-app
      become_flags: --spindle-bad-flag
      vars: {ansible_become_password: app-pass-2}
      ignore_errors: true
    - name: sudo-unknown
      command: id -un
      become: true
      become_user: spindle_no_such_user
      ignore_errors: true
    - name: doas-root
      command: id -un
      become: true
      become_method: community.general.doas
    - name: doas-wrong
      command: id -un
      become: true
      become_method: community.general.doas
      vars: {ansible_become_password: wrong-pass}
      ignore_errors: true
    - name: doas-missing
      command: id -un
      become: true
      become_method: community.general.doas
      vars: {ansible_become_password: ""}
      ignore_errors: true
    - name: doas-unknown
      command: id -un
      become: true
      become_method: community.general.doas
      become_user: spindle_no_such_user
      ignore_errors: true
    - name: doas-badflag
      command: id -un
      become: true
      become_method: community.general.doas
      become_flags: --spindle-bad-flag
      ignore_errors: true
    - {name: no-become, command: id -un}
    - {name: sudo-cleanup, file: {path: /root/spindle-become.txt, state: absent}, become: true}
"""

KEYS = (
    'failed',
    'changed',
    'rc',
    'stdout',
    'stderr',
    'msg',
    'skipped',
    'unreachable',
    'module_stdout',
    'module_stderr',
)
# Contexts that fail to start (wrong or missing password) per host and run.
FAILING_CONTEXTS = 11


def _run(argv, **kw):
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


class Become(unittest.TestCase):
    def setUp(self):
        if os.geteuid() != 0:
            print('SKIP: test_become needs root (it creates users and a sudoers rule)')
            self.skipTest('needs root')
        if not os.access(os.path.join(VENV_BIN, 'ansible-playbook'), os.X_OK) or not os.access(BIN, os.X_OK):
            self.skipTest('venv (scripts/venv.sh) or spindle binary missing')
        for tool in ('/usr/bin/sudo', '/usr/bin/doas', '/usr/bin/setfacl'):
            if not os.access(tool, os.X_OK):
                print('SKIP: %s missing (scripts/setup.sh installs it)' % tool)
                self.skipTest('%s missing' % tool)
        if not os.path.exists(DOAS_PLUGIN):
            print('SKIP: community.general missing (scripts/collections.sh installs it)')
            self.skipTest('community.general missing')
        if os.path.exists(DOAS_CONF):  # before anything is changed (or set to be removed)
            print('SKIP: %s exists: not overwriting it' % DOAS_CONF)
            self.skipTest('%s exists: not overwriting it' % DOAS_CONF)
        self.addCleanup(self._remove_files)
        become_users.add_users(
            self,
            dict(
                (user, (password, '/bin/bash' if user == 'spindle-op' else '/bin/sh'))
                for user, password in USERS.items()
            ),
        )
        with open(SUDOERS, 'w') as f:  # timestamp_timeout=0: every sudo asks again
            f.write('spindle-op ALL=(ALL:ALL) ALL\nDefaults:spindle-op timestamp_timeout=0\n')
        os.chmod(SUDOERS, 0o440)
        with open(DOAS_CONF, 'w') as f:  # a password every time (no persist)
            f.write('permit spindle-op as root\n')
        os.chmod(DOAS_CONF, 0o400)
        up = subprocess.run(['bash', FLEET, 'up', 'becm', '2'], stdout=subprocess.PIPE)
        if up.returncode == 77:
            print('SKIP: netns fleet unavailable here')
            self.skipTest('netns fleet unavailable')
        self.assertEqual(up.returncode, 0)
        self.addCleanup(_run, ['bash', FLEET, 'down', 'becm'])
        self.inventory = up.stdout.decode().strip().splitlines()[-1]
        self.work = tempfile.mkdtemp(prefix='spindle-become-', dir=os.path.join(REPO, 'target'))
        self.addCleanup(shutil.rmtree, self.work, True)
        with open(os.path.join(self.work, 'play.yml'), 'w') as f:
            f.write(PLAY)

    def _remove_files(self):
        for path in (SUDOERS, DOAS_CONF):
            try:
                os.unlink(path)
            except OSError:
                pass

    def env(self, spindle, sock=None):
        env = {k: v for k, v in os.environ.items() if not k.startswith(('ANSIBLE_', 'SPINDLE_'))}
        env.update(
            {
                'ANSIBLE_HOME': self.work,
                'ANSIBLE_LOCAL_TEMP': os.path.join(self.work, 'tmp'),
                'ANSIBLE_PIPELINING': 'True',
                'ANSIBLE_DEPRECATION_WARNINGS': 'False',
                'ANSIBLE_CALLBACK_PLUGINS': os.path.join(PLUGINS, 'callback'),
                'ANSIBLE_CALLBACKS_ENABLED': 'spindle_record',
                'ANSIBLE_COLLECTIONS_PATH': COLLECTIONS,
                'PYTHONPATH': os.path.join(REPO, 'ansible_plugin'),
            }
        )
        if spindle:
            env.update(
                {
                    'ANSIBLE_STRATEGY_PLUGINS': os.path.join(PLUGINS, 'strategy'),
                    'ANSIBLE_CONNECTION_PLUGINS': os.path.join(PLUGINS, 'connection'),
                    'ANSIBLE_STRATEGY': 'spindle_linear',
                    'SPINDLE_SOCKET': sock,
                    'SPINDLE_BIN': BIN,
                }
            )
        return env

    def play(self, env):
        record = os.path.join(self.work, 'record.json')
        if os.path.exists(record):
            os.unlink(record)
        env = dict(env, SPINDLE_RECORD=record)
        p = subprocess.run(
            [os.path.join(VENV_BIN, 'ansible-playbook'), '-i', self.inventory, 'play.yml'],
            env=env,
            cwd=self.work,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        if not os.path.exists(record):
            self.fail('no record (rc %d):\n%s' % (p.returncode, p.stdout.decode()))
        with open(record) as f:
            records = json.load(f)
        self.outputs.append(p.stdout.decode())
        results = {}
        for r in records:
            if r['status'] != 'recap':
                res = r['result']
                entry = dict((k, res.get(k)) for k in KEYS)
                entry['status'] = r['status']
                results[(r['task'], r['host'])] = entry
        return results

    def stats(self, sock):
        out = subprocess.run([BIN, 'stats', '--socket', sock], stdout=subprocess.PIPE, check=True)
        return json.loads(out.stdout)

    def test_become_like_stock(self):
        self.outputs = []
        stock = self.play(self.env(spindle=False))
        sock = os.path.join(self.work, 's.sock')
        log_path = os.path.join(self.work, 'daemon.log')
        with open(log_path, 'wb') as log:
            daemon = subprocess.Popen([BIN, '-vvv', 'serve', '--socket', sock], stderr=log)
        self.addCleanup(daemon.wait)
        self.addCleanup(daemon.kill)
        for _ in range(250):
            if os.path.exists(sock):
                break
            time.sleep(0.02)
        env = self.env(spindle=True, sock=sock)
        first = self.play(env)
        after_first = self.stats(sock)
        second = self.play(env)
        after_second = self.stats(sock)

        self.assertEqual(len(stock), 25 * 2, self.outputs[0])
        for runs in (stock, first, second):  # stock raw runs on a pty (-tt): CRLF, merged
            for (task, _), res in runs.items():  # streams, ssh's "Shared connection" note
                if task == 'raw-sudo':
                    res['stdout'] = res['stdout'].replace('\r', '').strip().splitlines()[-1]
                    res['stderr'] = None
        # Becoming an unknown user with a method that cannot pipeline (su, doas): stock puts
        # the module in a temp file first and fails there, granting the unknown user access
        # to it ("Failed to set permissions on the temporary files ..."); spindle has no temp
        # file and fails at the become command itself, in stock's module-failure shape with
        # that command's complaint. Checked apart, then left out of the equality below.
        for task in ('su-unknown', 'doas-unknown'):
            for (name, host), res in list(stock.items()):
                if name != task:
                    continue
                self.assertIn('Failed to set permissions on the temporary files', res['msg'])
                for run in (first, second):
                    got = run.pop((name, host))
                    self.assertEqual(got['status'], 'failed', got)
                    self.assertIn(
                        'spindle_no_such_user' if task == 'su-unknown' else 'unknown user',
                        got['module_stdout'] + got['module_stderr'],
                        got,
                    )
                del stock[(name, host)]
        # A typed password's line end: stock's terminal shows one more CR before it.
        for runs in (stock, first, second):
            for res in runs.values():
                if res.get('module_stdout'):
                    res['module_stdout'] = re.sub('\r+\n', '\r\n', res['module_stdout'])
        differ = []
        for key in sorted(stock):
            for name, run in (('first', first), ('second', second)):
                if run.get(key) != stock[key]:
                    differ.append(
                        '%s spindle run, task %s host %s:\n  stock   %r\n  spindle %r'
                        % ((name,) + key + (stock[key], run.get(key)))
                    )
        self.assertFalse(differ, '\n'.join(differ))
        by_task = dict((name, res) for (name, _), res in stock.items())
        self.assertEqual(by_task['sudo1']['stdout'], 'root')
        self.assertEqual(by_task['su-app']['stdout'], 'spindle-app')
        self.assertEqual(by_task['sudo-read']['stdout'], 'secret')
        self.assertIn('Incorrect sudo password', by_task['sudo-wrong']['msg'])
        self.assertIn('Missing sudo password', by_task['sudo-missing']['msg'])
        self.assertIn('Incorrect su password', by_task['su-wrong']['msg'])
        self.assertEqual(by_task['doas-root']['stdout'], 'root')
        # community.general.doas knows "Permission denied" only: stock reports doas's
        # "Authentication failed" as the module's failure, with doas's output.
        self.assertIn('doas: Authentication failed', by_task['doas-wrong']['module_stdout'])
        self.assertIn('doas: Authentication required', by_task['doas-missing']['module_stdout'])
        self.assertIn("su: unrecognized option", by_task['su-badflag']['module_stdout'])
        self.assertEqual(by_task['su-missing']['status'], 'unreachable')

        # Nested agents: (sudo root), (sudo root, other flags), (sudo spindle-app),
        # (su spindle-app), (doas root) per host, reused by the second run; only the failing
        # ones restart.
        labels = [k for k in after_second['targets'] if '(' in k]
        print('contexts:', sorted(labels))
        self.assertEqual(len(labels), 5 * 2, labels)
        started = after_second['counters']['connects'] - after_first['counters']['connects']
        self.assertEqual(started, FAILING_CONTEXTS * 2, 'second run re-started contexts')
        for host in set(k.split(' ')[0] for k in labels):  # the default-flags sudo context
            calls = [
                v['calls'] for k, v in after_second['targets'].items() if k.startswith(host + ' (sudo:root)')
            ]
            self.assertGreaterEqual(max(calls), 14, calls)

        daemon.kill()
        daemon.wait()
        with open(log_path, 'rb') as f:
            text = f.read()
        self.assertTrue(text, 'the daemon wrote no log at -vvv')
        for password in list(USERS.values()) + ['wrong-pass']:
            self.assertNotIn(password.encode(), text, 'a password reached the daemon log')


if __name__ == '__main__':
    unittest.main()
