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
  login shell is ``/bin/sh``.
"""

import difflib
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

    @classmethod
    def tearDownClass(cls):
        rs.fleet_down(FLEET_NAME)
        shutil.rmtree(getattr(cls, 'shared', '/nonexistent'), ignore_errors=True)
        for drop in getattr(cls, 'drops', []):
            drop()

    def one_run(self, kind, user, tty=True):
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
        if not tty:
            with open(os.path.join(work, 'inventory.ini'), 'a') as f:
                f.write('\n[all:vars]\nansible_ssh_use_tty=False\n')
        with open(os.path.join(work, 'play.yml'), 'w') as f:
            f.write(PLAY % {'shared': self.shared, 'user': user})
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
        return p, records

    def test_stock_and_spindle_agree(self):
        print('cases (login user, terminal): %s' % self.cases, file=sys.stderr)
        for user, tty in self.cases:
            with self.subTest(user=user, tty=tty):
                stock, a = self.one_run('stock', user, tty)
                spindle, b = self.one_run('spindle', user, tty)
                self.assertEqual(stock.returncode, 0, stock.stdout)
                self.assertEqual(spindle.returncode, 0, spindle.stdout)
                if a != b:
                    diff = difflib.unified_diff(
                        json.dumps(a, indent=1, sort_keys=True).splitlines(),
                        json.dumps(b, indent=1, sort_keys=True).splitlines(),
                        'stock',
                        'spindle',
                        lineterm='',
                    )
                    self.fail('stock and spindle differ as %s (tty %s):\n%s' % (user, tty, '\n'.join(diff)))
                # Nothing of root's left in the login user's home on the controller.
                home = os.path.expanduser('~%s' % user)
                for dp, dns, fns in os.walk(os.path.join(home, '.ansible')):
                    for n in dns + fns:
                        self.assertEqual(
                            os.lstat(os.path.join(dp, n)).st_uid, os.lstat(home).st_uid, os.path.join(dp, n)
                        )


if __name__ == '__main__':
    unittest.main()
