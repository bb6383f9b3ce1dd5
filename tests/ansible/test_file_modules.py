"""Old-style, WANT_JSON and binary modules run in the agent (one call each: the agent makes a
private temp dir, writes the module and its args file, runs the command Ansible built, removes
the dir), stock vs spindle on one netns target, on every ansible-core venv here (.venv is 2.19;
.venv-2.18, .venv-2.21 when present), spindle configured only with the README's ansible.cfg
lines (pipelining off, Ansible's default):

* per-task results equal to stock's (the modules print their args and their args file's mode);
  as the login user, with become to root, and with become to an unprivileged user (stock: a
  system temp dir and ACLs; spindle: the agent runs as that user);
* every module task of the spindle run ran in the agent (``SPINDLE_PATHS_FILE``: no stock path,
  each file module counted ``forked``), its async task kept async_wrapper (and said why), and
  ANSIBLE_KEEP_REMOTE_FILES keeps the stock path (and the files);
* nothing left in the remote tmp dirs (``remote_tmp`` and ``system_tmpdirs`` point at dirs of
  this test).

Skips (with the reason) without the venv, the daemon binary, a C compiler or the fleet.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import readme_setup as rs

FLEET = rs.FLEET
FLEET_NAME = 'olds'
REMOTE_TMP = '/tmp/spx-olds-remote'
SYSTEM_TMP = '/tmp/spx-olds-system'
BIN = os.environ.get('SPINDLE_BIN') or os.path.join(rs.REPO, 'target', 'release', 'spindle')
VENVS = ('.venv', '.venv-2.18', '.venv-2.21')

OLD_STYLE = r'''#!/bin/sh
# Old-style: a file of key=value words.
. "$1"
if [ "$color" = fail ]; then echo "not json"; echo oops >&2; exit 2; fi
printf '{"changed": true, "msg": "old color=%s size=%s user=%s args=%s env=%s"}\n' "$color" "$size" "$(id -un)" "$(stat -c %a "$1")" "$SPX_OLDS"
'''

WANT_JSON = r'''#!/bin/sh
# WANT_JSON
args=$(cat "$1")
# (the args file's mode only as root: for an unprivileged become user stock gives it ACLs or
# group bits where the agent, running as that user, keeps it private)
mode=$(stat -c %a "$1"); [ "$(id -u)" = 0 ] || mode=-
printf '{"changed": false, "msg": "want %s mode=%s user=%s"}\n' "$(printf '%s' "$args" | tr -dc 'a-z0-9' | cut -c1-40)" "$mode" "$(id -un)"
'''

BINARY_C = r'''
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>
int main(int argc, char **argv) {
    struct stat st;
    long n = 0;
    int c;
    FILE *f = argc > 1 ? fopen(argv[1], "r") : NULL;
    if (!f || fstat(fileno(f), &st) != 0) {
        printf("{\"failed\": true, \"msg\": \"no args file\"}\n");
        return 1;
    }
    while ((c = fgetc(f)) != EOF) n += (c == ':');
    printf("{\"changed\": false, \"msg\": \"binary %ld keys, mode %o, uid %d\"}\n", n,
           getuid() ? 0u : (unsigned)(st.st_mode & 0777), (int)getuid());
    return 0;
}
'''

PLAY = '''
- hosts: all
  gather_facts: false
  vars:
    ansible_remote_tmp: %(remote)s
    ansible_system_tmpdirs: [%(system)s]
  tasks:
    - name: old-style
      spx_olds_old: {color: red, size: 3}
    - name: old-style again (the module's code is cached)
      spx_olds_old: {color: "blue sky", size: 4}
    - name: WANT_JSON
      spx_olds_want: {color: green}
    - name: binary
      spx_olds_bin: {color: black}
    - name: old-style, become root
      spx_olds_old: {color: root}
      become: true
    - name: WANT_JSON, become an unprivileged user
      spx_olds_want: {color: nobody}
      become: true
      become_user: nobody
    - name: binary, become an unprivileged user
      spx_olds_bin: {color: nobody}
      become: true
      become_user: nobody
    - name: old-style with the task's environment
      spx_olds_old: {color: env}
      environment: {SPX_OLDS: "1"}
    - name: a failing old-style module (no JSON, rc 2)
      spx_olds_old: {color: fail}
      ignore_errors: true
    - name: old-style, async (async_wrapper runs it, from its own temp dir)
      spx_olds_old: {color: async}
      vars: {ansible_remote_tmp: /tmp/spx-olds-async}
      async: 10
      poll: 1
'''

#: module tasks of PLAY that run in the agent (the async one keeps async_wrapper)
IN_AGENT = 9
ASYNC_REASON = 'async task: old-style, WANT_JSON or binary module (Ansible runs it from a file)'


def venv_core(venv):
    py = os.path.join(rs.REPO, venv, 'bin', 'python')
    if not os.access(py, os.X_OK):
        return None
    p = subprocess.run(
        [py, '-c', 'import ansible.release as r; print(r.__version__)'],
        stdout=subprocess.PIPE,
        universal_newlines=True,
    )
    return p.stdout.strip() if p.returncode == 0 else None


class FileModules(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not os.access(BIN, os.X_OK):
            raise unittest.SkipTest('no spindle binary at %s (cargo build --release)' % BIN)
        if not os.access(os.path.join(rs.VENV_BIN, 'ansible-playbook'), os.X_OK):
            raise unittest.SkipTest('no venv with ansible-core (scripts/venv.sh)')
        cls.cc = shutil.which('cc') or shutil.which('gcc')
        if not cls.cc:
            raise unittest.SkipTest('no C compiler for the binary module')
        rs.BIN = BIN  # (fleet_up checks it)
        cls.inventory = rs.fleet_up(FLEET_NAME, 1)

    @classmethod
    def tearDownClass(cls):
        rs.fleet_down(FLEET_NAME)

    def target(self, *argv):
        return subprocess.run(
            ['bash', FLEET, 'exec', FLEET_NAME, '0'] + list(argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            universal_newlines=True,
        )

    def left(self):
        """What the runs left in the remote tmp dirs."""
        out = self.target('sh', '-c', 'ls -A %s %s 2>/dev/null; true' % (REMOTE_TMP, SYSTEM_TMP)).stdout
        return [w for w in out.split() if w.startswith('ansible-tmp-')]

    def workdir(self, kind, venv):
        work = tempfile.mkdtemp(prefix='spindle-olds-%s-' % kind)
        self.addCleanup(shutil.rmtree, work, True)
        os.chmod(work, 0o755)
        record = 'callbacks_enabled = %s\ncallback_plugins = %s\n'
        if kind == 'stock':
            with open(os.path.join(work, 'ansible.cfg'), 'w') as f:
                f.write(
                    '[defaults]\nhost_key_checking = False\n'
                    + record
                    % ('spindle_record', os.path.join(rs.PKG, 'spindle_ansible', 'plugins', 'callback'))
                )
        else:
            rs.write_record_cfg(work, 'host_key_checking = False')
        rs.inventory(self.inventory, os.path.join(work, 'inventory.ini'))
        lib = os.path.join(work, 'library')
        os.makedirs(lib)
        for name, text in (('spx_olds_old', OLD_STYLE), ('spx_olds_want', WANT_JSON)):
            with open(os.path.join(lib, name), 'w') as f:
                f.write(text)
        src = os.path.join(work, 'bin.c')
        with open(src, 'w') as f:
            f.write(BINARY_C)
        subprocess.run([self.cc, '-O1', '-o', os.path.join(lib, 'spx_olds_bin'), src], check=True)
        with open(os.path.join(work, 'play.yml'), 'w') as f:
            f.write(PLAY % {'remote': REMOTE_TMP, 'system': SYSTEM_TMP})
        return work

    def play(self, kind, venv, extra_env=None):
        self.target('sh', '-c', 'rm -rf %s %s && mkdir -m 1777 %s' % (REMOTE_TMP, SYSTEM_TMP, SYSTEM_TMP))
        work = self.workdir(kind, venv)
        env = rs.env(work)
        env['SPINDLE_BIN'] = BIN
        env['PATH'] = os.path.join(rs.REPO, venv, 'bin') + os.pathsep + env['PATH']
        env['SPINDLE_RECORD'] = os.path.join(work, 'record.json')
        env['SPINDLE_PERSIST'] = '0'
        env['HOME'] = os.path.expanduser('~root')
        env.update(extra_env or {})
        p = subprocess.run(
            [os.path.join(rs.REPO, venv, 'bin', 'ansible-playbook'), '-i', 'inventory.ini', 'play.yml'],
            cwd=work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            universal_newlines=True,
        )
        with open(env['SPINDLE_RECORD']) as f:
            records = json.load(f)
        for r in records:  # async job ids and timings differ between any two runs
            for key in ('ansible_job_id', 'results_file', 'start', 'end', 'delta'):
                r['result'].pop(key, None)
        return p, records, rs.paths(work)

    def test_in_the_agent_equal_to_stock_on_each_core(self):
        tried = 0
        for venv in os.environ.get('SPX_OLDS_VENVS', ','.join(VENVS)).split(','):
            core = venv_core(venv)
            if core is None:
                continue
            tried += 1
            with self.subTest(core=core):
                sp, stock, _ = self.play('stock', venv)
                self.assertEqual(self.left(), [], 'stock left temp dirs')
                p, spin, paths = self.play('spindle', venv)
                print('%s: %s' % (core, json.dumps(paths, sort_keys=True)), file=sys.stderr)
                self.assertEqual(p.returncode, sp.returncode, p.stdout[-3000:])
                self.assertEqual(stock, spin)
                self.assertEqual(self.left(), [], 'spindle left temp dirs')
                self.assertEqual(paths['stock_reasons'], {ASYNC_REASON: 1}, p.stdout[-3000:])
                self.assertEqual(paths['forked'], IN_AGENT, paths)
                self.assertIn('old color=blue sky size=4', json.dumps(spin))
                # ANSIBLE_KEEP_REMOTE_FILES: the stock path, with its reason, and the files stay
                p, _kept, paths = self.play('spindle', venv, {'ANSIBLE_KEEP_REMOTE_FILES': '1'})
                self.assertIn(
                    'ANSIBLE_KEEP_REMOTE_FILES is set (modules run from files)', paths['stock_reasons']
                )
                self.assertEqual(paths['forked'], 0, paths)
                self.assertNotEqual(self.left(), [])
        self.target('rm', '-rf', REMOTE_TMP, SYSTEM_TMP, '/tmp/spx-olds-async')
        if not tried:
            self.skipTest('no ansible-core venv')


if __name__ == '__main__':
    unittest.main()
