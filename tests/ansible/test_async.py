"""Async tasks (``async: N``) run in the agent, with Ansible's time limit and poll semantics,
stock vs spindle on the same netns target (per-task results compared with the ``spindle_record``
callback: job ids, pids, timings and results_file paths left out), spindle configured only with
the README's ansible.cfg lines:

* ``poll`` > 0 (Ansible polls with ``async_status``), ``poll: 0`` then an ``async_status``
  loop, ``mode: cleanup``, the shell's ``async_dir`` (``ansible_async_dir``); gather_facts
  with ``parallel: true`` (its fact modules are async jobs); ``ansible.builtin.command`` and ``shell``; a module that fails (rc,
  and a module's own failure); check mode;
* a time limit that expires (polled past it, and ``poll: 0`` then ``async_status``): the job is
  killed and its status says "Timeout exceeded", as async_wrapper writes it;
* become: the job runs as the become user and its status file is in that user's
  ``~/.ansible_async``;
* ``async_status`` in a LATER ansible-playbook run finds a job started by an earlier one, after
  the earlier run's daemon and agents are gone (``SPINDLE_PERSIST=0``);
* no async task of a Python module takes the stock path (the run's path counts): each is a
  forked child of the agent; an old-style module's async task still runs with async_wrapper,
  and says why.
"""

import json
import os
import re
import shutil
import sys
import tempfile
import time
import unittest

import readme_setup as rs

FLEET = rs.FLEET
FLEET_NAME = 'asyn'
BECOME_USER = 'spxasync'

OLD_STYLE = '''#!/bin/sh
echo '{"changed": false, "msg": "old style"}'
'''

PLAY = '''
- hosts: all
  gather_facts: false
  tasks:
    - name: poll > 0 (command)
      command: sh -c 'sleep 1.5; echo out; echo err >&2'  # off run_command's 1 s select boundary
      async: 20
      poll: 1

    - name: fire and forget (shell)
      shell: sleep 2.5; echo done async  # off run_command's 1 s select boundary
      async: 30
      poll: 0
      register: fire
    - name: the job's id and status file
      assert:
        that:
          - fire.ansible_job_id is match('^j[0-9]+[.][0-9]+$')
          - fire.results_file == '/root/.ansible_async/' ~ fire.ansible_job_id
          - fire.started and not fire.finished and fire.changed
    - name: async_status until finished
      async_status: {jid: "{{ fire.ansible_job_id }}"}
      register: fire_status
      until: fire_status.finished
      retries: 30
      delay: 1
    - name: the status file is still there until cleanup
      stat: {path: "{{ fire.results_file }}", get_checksum: false}
    - name: async_status cleanup
      async_status: {jid: "{{ fire.ansible_job_id }}", mode: cleanup}
    - name: gone after cleanup
      stat: {path: "{{ fire.results_file }}"}
    - name: unknown job
      async_status: {jid: "j1.1"}
      ignore_errors: true

    - name: the shell's async_dir
      command: echo elsewhere
      vars: {ansible_async_dir: /tmp/spx-async-jobs}
      async: 10
      poll: 0
      register: elsewhere
    - name: status file in that async_dir
      assert:
        that: elsewhere.results_file == '/tmp/spx-async-jobs/' ~ elsewhere.ansible_job_id
    - name: async_status with that async_dir
      async_status: {jid: "{{ elsewhere.ansible_job_id }}"}
      vars: {ansible_async_dir: /tmp/spx-async-jobs}
      register: elsewhere_status
      until: elsewhere_status.finished
      retries: 30
      delay: 1

    - name: facts gathered in parallel (async jobs gather_facts starts itself)
      # (minimal facts: stock kills a fact module still running at 5 s, time limit 0)
      gather_facts: {parallel: true, gather_subset: [min]}
    - name: the facts are there
      assert:
        that: ansible_facts.system == 'Linux'

    - name: a command that fails
      command: sh -c 'echo failing; exit 3'
      async: 10
      poll: 1
      ignore_errors: true
    - name: a module that fails
      file: {path: /nonexistent-async/x, state: touch}
      async: 10
      poll: 0
      register: failing
    - name: its status
      async_status: {jid: "{{ failing.ansible_job_id }}"}
      register: failing_status
      until: failing_status.finished
      retries: 30
      delay: 1
      ignore_errors: true

    - name: check mode
      file: {path: /tmp/async-check-mode, state: touch}
      check_mode: true
      async: 10
      poll: 1
    - name: nothing made in check mode
      stat: {path: /tmp/async-check-mode}

    - name: time limit, polled past it
      command: sleep 10
      async: 2
      poll: 4
      ignore_errors: true
    - name: time limit, fire and forget
      command: sleep 10
      async: 2
      poll: 0
      register: slow
    - name: its status says it was killed
      async_status: {jid: "{{ slow.ansible_job_id }}"}
      register: slow_status
      until: slow_status.finished
      retries: 30
      delay: 1
      ignore_errors: true

    - name: become, poll > 0
      command: id -un
      become: true
      become_user: %(user)s
      async: 10
      poll: 1
    - name: become, fire and forget
      shell: id -un; echo "$HOME"
      become: true
      become_user: %(user)s
      async: 10
      poll: 0
      register: bjob
    - name: in the become user's async_dir
      assert:
        that: bjob.results_file == '/home/%(user)s/.ansible_async/' ~ bjob.ansible_job_id
    - name: become, async_status
      async_status: {jid: "{{ bjob.ansible_job_id }}"}
      become: true
      become_user: %(user)s
      register: bstatus
      until: bstatus.finished
      retries: 30
      delay: 1

    - name: an old-style module (async_wrapper runs it)
      spx_old_async: {}
      async: 10
      poll: 1

    - name: a job for the next run
      shell: sleep 15.5; echo from the first run  # off run_command's 1 s select boundary
      async: 60
      poll: 0
      register: later
    - name: keep its id
      copy: {content: "{{ later.ansible_job_id }}", dest: "%(work)s/jid-{{ inventory_hostname }}"}
      delegate_to: localhost
'''

LATER_PLAY = '''
- hosts: all
  gather_facts: false
  tasks:
    - name: async_status of the earlier run's job
      async_status: {jid: "{{ lookup('file', '%(work)s/jid-' ~ inventory_hostname) }}"}
      register: st
      until: st.finished
      retries: 60
      delay: 1
    - name: cleanup
      async_status: {jid: "{{ st.ansible_job_id }}", mode: cleanup}
'''

#: async tasks of Python modules (each a forked child of the agent) in PLAY
ASYNC_STARTS = 12
OLD_STYLE_REASON = 'async task: old-style, WANT_JSON or binary module (Ansible runs it from a file)'

#: result fields that hold a job id's length (sizes, checksums of files holding one)
JOB_ID_SIZED = {
    'the status file is still there until cleanup': ('stat', 'size'),
    'keep its id': ('checksum', 'md5sum', 'size'),
}

run = rs.run


def comparable(records, work):
    """``records`` without what differs between any two runs: job ids (``j<n>.<pid>``), the
    work directory, the sizes and checksums of files that hold a job id."""
    out = []
    for r in records:
        r = json.loads(re.sub(r'j[0-9]+[.][0-9]+', 'JID', json.dumps(r).replace(work, 'WORK')))
        for key in JOB_ID_SIZED.get(r.get('task'), ()):
            if key in r['result'] and isinstance(r['result'][key], dict):
                r['result'][key].pop('size', None)
            else:
                r['result'].pop(key, None)
        out.append(r)
    return out


class AsyncTasks(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.inventory = rs.fleet_up(FLEET_NAME, 1)
        cls.drop_user = rs.login_user(BECOME_USER)
        if cls.drop_user is None:
            rs.fleet_down(FLEET_NAME)
            raise unittest.SkipTest('cannot make the user %s here' % BECOME_USER)

    @classmethod
    def tearDownClass(cls):
        rs.fleet_down(FLEET_NAME)
        if getattr(cls, 'drop_user', None):
            cls.drop_user()

    def workdir(self, kind):
        work = tempfile.mkdtemp(prefix='spindle-async-%s-' % kind)
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
        rs.inventory(self.inventory, os.path.join(work, 'inventory.ini'))
        os.makedirs(os.path.join(work, 'library'))
        with open(os.path.join(work, 'library', 'spx_old_async'), 'w') as f:
            f.write(OLD_STYLE)
        return work

    def playbook(self, work, text, name):
        with open(os.path.join(work, name), 'w') as f:
            f.write(text % {'user': BECOME_USER, 'work': work})
        env = rs.env(work)
        env['SPINDLE_RECORD'] = os.path.join(work, 'record-%s.json' % name)
        env['SPINDLE_PERSIST'] = '0'  # the daemon and its agents end with the run
        env['HOME'] = os.path.expanduser('~root')
        t0 = time.monotonic()
        p = run(
            [os.path.join(rs.VENV_BIN, 'ansible-playbook'), '-i', 'inventory.ini', name], cwd=work, env=env
        )
        took = time.monotonic() - t0
        if not os.path.exists(env['SPINDLE_RECORD']):
            self.fail('%s wrote no record:\n%s' % (name, p.stdout[-3000:]))
        with open(env['SPINDLE_RECORD']) as f:
            records = comparable(json.load(f), work)
        return p, records, rs.paths(work), took

    def one(self, kind):
        run(
            [
                'bash',
                FLEET,
                'exec',
                FLEET_NAME,
                '0',
                'sh',
                '-c',
                'rm -rf /tmp/async-check-mode /tmp/spx-async-jobs /root/.ansible_async /home/%s/.ansible_async'
                % BECOME_USER,
            ]
        )
        work = self.workdir(kind)
        first = self.playbook(work, PLAY, 'play.yml')
        with open(os.path.join(work, 'jid-t0')) as f:
            jid = f.read().strip()
        # the job outlives the run that started it (and, with spindle, its agent)
        status = run(['bash', FLEET, 'exec', FLEET_NAME, '0', 'cat', '/root/.ansible_async/' + jid])
        later = self.playbook(work, LATER_PLAY, 'later.yml')
        return first, later, status.stdout

    def test_stock_and_spindle_agree(self):
        results = {}
        for kind in ('stock', 'spindle'):
            results[kind] = self.one(kind)
            (p1, _, paths1, t1), (p2, _, paths2, t2), status = results[kind]
            print(
                '%s: first run %.1f s, later run %.1f s; paths %s / %s'
                % (kind, t1, t2, json.dumps(paths1, sort_keys=True), json.dumps(paths2, sort_keys=True)),
                file=sys.stderr,
            )
            self.assertEqual(p1.returncode, 0, p1.stdout)
            self.assertEqual(p2.returncode, 0, p2.stdout)
            self.assertIn(
                '"started"', status, '%s: the job for the next run had already ended: %s' % (kind, status)
            )
        for i, name in ((0, 'play.yml'), (1, 'later.yml')):
            a, b = results['stock'][i][1], results['spindle'][i][1]
            if a != b:
                self.fail('stock and spindle differ (%s):\n%s' % (name, rs.udiff(a, b)))
        (p1, records, paths1, _), (p2, _, paths2, _), _ = results['spindle']
        # every Python module's async task started in the agent, as a forked child
        self.assertIsNotNone(paths1, p1.stdout)
        self.assertEqual(paths1['stock_reasons'], {OLD_STYLE_REASON: 1}, paths1)
        self.assertEqual(paths1['stock'], 1, paths1)
        self.assertEqual(paths1['forked'], ASYNC_STARTS, paths1)
        self.assertEqual(paths2['stock'], 0, paths2)
        flat = ' '.join(p1.stdout.split())
        self.assertEqual(len(re.findall('stock command path', flat)), 2, p1.stdout)  # warning, summary
        self.assertIn(OLD_STYLE_REASON, flat)
        # what the comparison is about, spelled out
        by_task = dict((r['task'], r) for r in records if r['task'])
        self.assertEqual(by_task['async_status until finished']['result']['stdout'], 'done async')
        self.assertEqual(by_task['its status says it was killed']['result']['msg'], 'Timeout exceeded')
        self.assertEqual(by_task['time limit, polled past it']['result']['msg'], 'Timeout exceeded')
        self.assertEqual(
            by_task['become, async_status']['result']['stdout'], '%s\n/home/%s' % (BECOME_USER, BECOME_USER)
        )
        self.assertEqual(by_task['become, poll > 0']['result']['stdout'], BECOME_USER)
        self.assertEqual(by_task['its status']['status'], 'failed', by_task['its status'])
        self.assertEqual(by_task['a command that fails']['result']['rc'], 3)
        self.assertEqual(by_task['async_status with that async_dir']['result']['stdout'], 'elsewhere')


if __name__ == '__main__':
    unittest.main()
