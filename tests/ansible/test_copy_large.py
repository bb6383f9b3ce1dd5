"""copy of files over the inline limit (2 MiB): streamed beside dest between the call that
compares checksums and the one that runs the module, with the results of stock Ansible.

Real sshd target (netns fleet ``lcpy``), real ansible-playbook, ansible.cfg exactly as the
README says: a new file, the same again (unchanged: nothing sent), one of the same size and
other content (the checksums decide), a changed one, an explicit
mode, ``mode: preserve``, become, a destination directory that does not exist (an error as
stock's), and dest a directory (the stock flow). The registered results and the files on the
target must equal stock's; spindle's run must take the streamed path (no temp dir in
``~/.ansible/tmp``) and leave no staging file behind.
"""

import json
import os
import shutil
import tempfile
import unittest

import readme_setup as rs

FLEET_NAME = 'lcpy'
KEYS = (
    'changed',
    'failed',
    'checksum',
    'md5sum',
    'dest',
    'mode',
    'size',
    'state',
    'uid',
    'gid',
    'msg',
    'skipped',
)

PLAYBOOK = """
- hosts: all
  gather_facts: false
  vars:
    d: /var/lib/spindle-tests/lcpy/{{ label }}
  tasks:
    - file: {path: "{{ d }}", state: absent}
    - file: {path: "{{ d }}/sub", state: directory}
    - {name: new, copy: {src: "{{ big }}", dest: "{{ d }}/a.bin"}, register: r1}
    - {name: same, copy: {src: "{{ big }}", dest: "{{ d }}/a.bin"}, register: r2}
    - {name: same size, copy: {src: "{{ big3 }}", dest: "{{ d }}/a.bin"}, register: r2b}
    - {name: changed, copy: {src: "{{ big2 }}", dest: "{{ d }}/a.bin", mode: "0640"}, register: r3}
    - {name: preserve, copy: {src: "{{ big }}", dest: "{{ d }}/p.bin", mode: preserve}, register: r4}
    - {name: become, copy: {src: "{{ big }}", dest: "{{ d }}/b.bin"}, become: true, register: r5}
    - {name: no dir, copy: {src: "{{ big }}", dest: "{{ d }}/none/a.bin"}, register: r6, ignore_errors: true}
    - {name: into dir, copy: {src: "{{ big }}", dest: "{{ d }}/sub/"}, register: r7}
    - name: what is there
      shell: cd {{ d }} && find . -printf '%p %s %m\\n' | sort && sha1sum a.bin p.bin b.bin sub/*
      register: listing
    - copy:
        dest: "{{ out }}"
        content: "{{ {'r': [r1, r2, r2b, r3, r4, r5, r6, r7], 'listing': listing.stdout_lines} | to_json }}"
      delegate_to: localhost
"""


class CopyLarge(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.inventory = rs.fleet_up(FLEET_NAME, 1)

    @classmethod
    def tearDownClass(cls):
        rs.fleet_down(FLEET_NAME)

    def setUp(self):
        self.work = tempfile.mkdtemp(prefix='spindle-lcpy-')
        self.addCleanup(shutil.rmtree, self.work, True)
        for name, size, seed in (
            ('big', 3 << 20, b'a'),
            ('big2', (5 << 20) + 17, b'b'),
            ('big3', 3 << 20, b'c'),
        ):
            with open(os.path.join(self.work, name), 'wb') as f:
                f.write((seed * 4096 + os.urandom(4096)) * (size // 8192) + seed * (size % 8192))
        os.chmod(os.path.join(self.work, 'big'), 0o604)
        with open(os.path.join(self.work, 'site.yml'), 'w') as f:
            f.write(PLAYBOOK)

    def run_mode(self, label, spindle):
        work = os.path.join(self.work, label)
        os.mkdir(work)
        extra = ['host_key_checking = False', 'inventory = %s' % self.inventory]
        if spindle:
            rs.write_cfg(work, *extra)
        else:
            with open(os.path.join(work, 'ansible.cfg'), 'w') as f:
                f.write('[defaults]\n' + '\n'.join(extra) + '\npipelining = True\n')
        out = os.path.join(work, 'out.json')
        env = rs.env(work)
        env['XDG_RUNTIME_DIR'] = work
        p = rs.run(
            [
                os.path.join(rs.VENV_BIN, 'ansible-playbook'),
                os.path.join(self.work, 'site.yml'),
                '-vvv',
                '-e',
                json.dumps(
                    {
                        'big': os.path.join(self.work, 'big'),
                        'big2': os.path.join(self.work, 'big2'),
                        'big3': os.path.join(self.work, 'big3'),
                        'out': out,
                        'label': label,
                    }
                ),
            ],
            cwd=work,
            env=env,
        )
        self.assertEqual(p.returncode, 0, p.stdout[-4000:])
        with open(out) as f:
            got = json.load(f)
        results = [dict((k, r.get(k)) for k in KEYS if k in r) for r in got['r']]
        for r in results:
            if r.get('dest'):
                r['dest'] = r['dest'].replace('/' + label + '/', '/X/')
            if r.get('msg'):
                r['msg'] = r['msg'].replace('/' + label + '/', '/X/')
        if spindle:
            rs.run([os.path.join(rs.VENV_BIN, 'python'), '-m', 'spindle_ansible', '--stop'], env=env)
        return results, got['listing'], p.stdout

    def test_large_files_match_stock_and_stream_beside_dest(self):
        stock, stock_files, _ = self.run_mode('stock', False)
        mine, files, log = self.run_mode('spindle', True)
        for i, (a, b) in enumerate(zip(stock, mine)):
            self.assertEqual(a, b, 'result %d differs' % (i + 1))
        self.assertEqual(stock_files, files)
        self.assertFalse(any('.spindle-copy-' in line for line in files), files)
        # new, same size (other content), changed, preserve and become were streamed (the
        # unchanged one sent nothing)
        self.assertGreaterEqual(log.count('SPINDLE copy in one call (copy)'), 5, log[-3000:])
        self.assertIn('SPINDLE copy in one call (file)', log)
        self.assertNotIn('.source.bin', log.split('TASK [no dir]')[0])


if __name__ == '__main__':
    unittest.main()
