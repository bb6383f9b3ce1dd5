"""The stock enter connection plugins spindle routes (kubernetes.core.kubectl,
community.general.lxd / incus / jail / lxc, containers.podman.buildah): one small playbook
(command, shell, copy, template, file, stat, fetch, failing commands) runs once with the
STOCK plugins (from $VENV/collections, scripts/collections.sh) and once through spindle (the
callback entry point: builtin linear strategy, ``callbacks_enabled = spindle``), and the
per-task results (spindle_record), the files left and the fetched files must be equal.

No engine runs here: every tool is a stand-in (tests/fixtures/fake-enter-tool.sh) that
refuses any pod / namespace / kubeconfig / remote:instance / project / container / user / jail
not listed in its ``expect`` file, logs what it was asked for and runs the command on this
machine. So both runs must ask for the same place, which is also checked from the logs.
community.general.lxc needs the python ``lxc`` bindings, absent here: its host runs only
through spindle (routing and lxc-attach's argv checked, tasks must pass). The stock jail
plugin needs root; without root the jail host is spindle-only too.

Run: ``python3 -m unittest discover -s tests/ansible -p test_enter_routes.py -v``.
"""

import json
import os
import shutil
import subprocess
import tempfile
import textwrap
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
VENV = os.path.abspath(os.path.join(REPO, os.environ.get('SPINDLE_VENV') or '.venv'))
VENV_BIN = os.path.join(VENV, 'bin')
COLLECTIONS = os.path.join(VENV, 'collections')
PKG_ROOT = os.path.join(REPO, 'ansible_plugin')
PLUGINS = os.path.join(PKG_ROOT, 'spindle_ansible', 'plugins')
TOOLS = ('kubectl', 'lxc', 'incus', 'buildah', 'jexec', 'jls', 'lxc-attach', 'su')

with open(os.path.join(os.path.dirname(HERE), 'fixtures', 'fake-enter-tool.sh')) as _f:
    FAKE_TOOL = _f.read()

PLAY = '''
- hosts: all
  gather_facts: false
  vars:
    d: "{{ out }}/{{ inventory_hostname }}"
  tasks:
    - file: {path: "{{ d }}", state: directory, mode: "0755"}
    - command: echo hello {{ inventory_hostname }}
    - shell: echo $((1 + 2)); echo to-stderr >&2
    - copy: {content: "copied {{ inventory_hostname }}\\n", dest: "{{ d }}/copied.txt", mode: "0644"}
    - copy: {src: src.txt, dest: "{{ d }}/src.txt", mode: "0640"}
    - template: {src: t.j2, dest: "{{ d }}/t.txt", mode: "0644"}
    - stat: {path: "{{ d }}/copied.txt"}
    - fetch: {src: "{{ d }}/copied.txt", dest: "{{ fetched }}/"}
    - command: cat {{ d }}/missing.txt
      ignore_errors: true
    - shell: exit 3
      ignore_errors: true
'''


# Run in the venv's Python: spindle's kubectl flags equal the stock plugin's _build_exec_cmd
# for every option that becomes a flag; secrets and dict kubeconfigs are refused; routing.
OPTIONS_CHECK = textwrap.dedent('''
    from ansible.errors import AnsibleError
    from ansible.playbook.play_context import PlayContext
    from ansible.plugins.loader import connection_loader, init_plugin_loader
    init_plugin_loader()
    from spindle_ansible.specs import kubectl_words as _kubectl_words
    from spindle_ansible.routing import LoaderPatch, ROUTES
    connection_loader.add_directory(CONNECTION_DIR)
    pc = PlayContext()
    pc.remote_addr = 'pod-x'
    vars = {'ansible_kubectl_namespace': 'ns', 'ansible_kubectl_kubeconfig': '/k',
            'ansible_kubectl_context': 'ctx', 'ansible_kubectl_server': 'https://api:6443',
            'ansible_kubectl_user': 'u1', 'ansible_kubectl_client_cert': '/c.pem',
            'ansible_kubectl_key_file': '/k.pem', 'ansible_kubectl_ca_cert': '/ca.pem',
            'ansible_kubectl_validate_certs': True, 'ansible_kubectl_container': 'web',
            'ansible_kubectl_extra_args': '--v=2  --request-timeout=5s'}
    stock = connection_loader.get('kubernetes.core.kubectl', pc, None, kubectl_command='kubectl')
    stock.set_options(var_options=vars)
    argv, _ = stock._build_exec_cmd(['/bin/sh', '-c', 'X'])
    spin = connection_loader.get('spindle', pc, None)
    spin.set_options(var_options=vars)
    words, env = _kubectl_words(spin.get_option)
    want = [str(w) for w in argv[1:argv.index('exec')]]  # kubectl gets str(True) too
    assert words == want, (words, want)
    for bad in ({'ansible_kubectl_token': 't'}, {'ansible_kubectl_password': 'p'},
                {'ansible_kubectl_kubeconfig': {'apiVersion': 'v1'}}):
        spin.set_options(var_options=bad)
        try:
            _kubectl_words(spin.get_option)
        except AnsibleError as e:
            assert 'spindle' in str(e), e
        else:
            raise AssertionError('accepted %r' % bad)
    patch = LoaderPatch().apply()
    for name, transport in (('kubernetes.core.kubectl', 'kubectl'), ('kubectl', 'kubectl'),
                            ('community.general.lxd', 'lxd'), ('lxd', 'lxd'),
                            ('community.general.incus', 'incus'),
                            ('containers.podman.buildah', 'buildah'), ('buildah', 'buildah'),
                            ('community.general.jail', 'jail'), ('jail', 'jail'),
                            ('community.general.lxc', 'lxc'), ('lxc', 'lxc'),
                            ('community.general.chroot', 'chroot'), ('chroot', 'chroot')):
        c = connection_loader.get(name, PlayContext())
        assert c._spindle_forced_transport == transport, (name, c)
    assert 'community.general.machinectl' not in ROUTES  # a become plugin, not a connection
    patch.restore()
    print('options ok')
''')


def snapshot(path):
    out = {}
    for dp, dns, fns in os.walk(path):
        for n in dns + fns:
            p = os.path.join(dp, n)
            st = os.lstat(p)
            e = {'mode': oct(st.st_mode & 0o7777), 'dir': os.path.isdir(p)}
            if not e['dir']:
                with open(p, 'rb') as f:
                    e['content'] = f.read().decode('utf-8', 'replace')
            out[os.path.relpath(p, path)] = e
    return out


class EnterRoutesTests(unittest.TestCase):
    def setUp(self):
        self.binary = os.environ.get('SPINDLE_BIN') or os.path.join(REPO, 'target', 'debug', 'spindle')
        if not os.access(os.path.join(VENV_BIN, 'ansible-playbook'), os.X_OK):
            print('SKIP: no venv with ansible-core at %s (run scripts/venv.sh)' % VENV_BIN)
            self.skipTest('no venv (scripts/venv.sh)')
        if not os.path.isdir(os.path.join(COLLECTIONS, 'ansible_collections', 'kubernetes')):
            print('SKIP: no collections in %s (scripts/collections.sh)' % COLLECTIONS)
            self.skipTest('no collections (scripts/collections.sh)')
        if not os.access(self.binary, os.X_OK):
            print('SKIP: no spindle binary at %s (cargo build)' % self.binary)
            self.skipTest('no spindle binary')
        self.work = tempfile.mkdtemp(prefix='ertr-')
        self.addCleanup(shutil.rmtree, self.work, True)

    def path(self, *parts):
        return os.path.join(self.work, *parts)

    def setup_world(self):
        """Stand-ins, their expectations, inventories, playbook; returns the hosts' main
        (command-running) stand-in lines."""
        bindir = self.path('bin')
        os.makedirs(bindir)
        for tool in TOOLS:
            with open(os.path.join(bindir, tool), 'w') as f:
                f.write(FAKE_TOOL)
            os.chmod(os.path.join(bindir, tool), 0o755)
        with open(os.path.join(bindir, 'jails'), 'w') as f:
            f.write('box-jail\n')
        kubeconfig = self.path('kubeconfig')
        main = {
            'box-k': 'kubectl -n ertr-ns --kubeconfig %s --context ertr-ctx --v=0 exec -i '
            'ertr-pod -c web [ENTER_STANDIN_TAG=k8s]' % kubeconfig,
            'box-lxd.ertr.test': 'lxc --project ertr-proj exec ertr-remote:box-lxd',
            'box-inc': 'incus --project default exec local:ertr-inc',
            'box-b': 'buildah run --user app ertr-wc1',
            'box-jail': 'jexec -U root box-jail',
            'box-lxc': 'lxc-attach --clear-env --name ertr-lxc1',
        }
        others = ['su app', 'jls -q name', 'buildah mount ertr-wc1', 'buildah copy --chown app ertr-wc1']
        for tool, where in (
            ('lxc --project ertr-proj', 'ertr-remote:box-lxd'),
            ('incus --project default', 'local:ertr-inc'),
        ):
            others += ['%s file %s %s' % (tool, op, where) for op in ('push', 'pull')]
        with open(os.path.join(bindir, 'expect'), 'w') as f:
            f.write('\n'.join(list(main.values()) + others) + '\n')
        hosts = {
            'box-k': 'ansible_connection=kubernetes.core.kubectl ansible_kubectl_pod=ertr-pod '
            'ansible_kubectl_namespace=ertr-ns ansible_kubectl_container=web '
            'ansible_kubectl_kubeconfig=%s ansible_kubectl_context=ertr-ctx '
            'ansible_kubectl_extra_args=--v=0 ansible_user=ignored '
            'ansible_kubectl_local_env_vars=\'{"ENTER_STANDIN_TAG": "k8s"}\'' % kubeconfig,
            'box-lxd.ertr.test': 'ansible_connection=community.general.lxd '
            'ansible_lxd_remote=ertr-remote ansible_lxd_project=ertr-proj '
            'ansible_user=app lxd_become_method=%s/su' % bindir,
            'box-inc': 'ansible_connection=community.general.incus '
            'ansible_incus_host=ertr-inc.example.org ansible_user=root',
            'box-b': 'ansible_connection=containers.podman.buildah ansible_host=ertr-wc1 ansible_user=app',
            'box-jail': 'ansible_connection=community.general.jail ansible_user=root',
            'box-lxc': 'ansible_connection=community.general.lxc ansible_lxc_host=ertr-lxc1',
        }
        stock_only_skip = {'box-lxc'}  # needs the python lxc bindings
        if os.geteuid() != 0:
            stock_only_skip.add('box-jail')  # the stock jail plugin needs root
        common = (
            '[all:vars]\nansible_python_interpreter=/usr/bin/python3\n'
            'ansible_remote_tmp=%s\n' % self.path('rtmp')
        )
        for name, keep in (('stock', lambda h: h not in stock_only_skip), ('spindle', lambda h: True)):
            with open(self.path(name + '.ini'), 'w') as f:
                f.write(''.join('%s %s\n' % (h, v) for h, v in hosts.items() if keep(h)) + common)
        with open(self.path('src.txt'), 'w') as f:
            f.write('a file from the controller\n')
        with open(self.path('t.j2'), 'w') as f:
            f.write('rendered for {{ inventory_hostname }}\n')
        with open(self.path('play.yml'), 'w') as f:
            f.write(PLAY)
        return main, stock_only_skip

    def run_play(self, kind):
        cfg = self.path(kind + '.cfg')
        callbacks = 'spindle_record, spindle' if kind == 'spindle' else 'spindle_record'
        with open(cfg, 'w') as f:
            f.write(
                '[defaults]\ncallback_plugins = %s\ncallbacks_enabled = %s\n'
                'strategy = linear\nretry_files_enabled = False\n'
                % (os.path.join(PLUGINS, 'callback'), callbacks)
            )
        record = self.path(kind + '.json')
        env = {k: v for k, v in os.environ.items() if not k.startswith(('ANSIBLE_', 'SPINDLE_'))}
        env.update(
            {
                'ANSIBLE_CONFIG': cfg,
                'ANSIBLE_HOME': self.path('home'),
                'ANSIBLE_LOCAL_TEMP': self.path('tmp'),
                'ANSIBLE_COLLECTIONS_PATH': COLLECTIONS,
                'ANSIBLE_PIPELINING': 'True',
                'ANSIBLE_NOCOLOR': '1',
                'XDG_RUNTIME_DIR': self.path('run'),
                # a private daemon stopped at exit (the persistent one is test_persist's): the run
                # must leave nothing in XDG_RUNTIME_DIR
                'SPINDLE_PERSIST': '0',
                'SPINDLE_RECORD': record,
                'SPINDLE_BIN': self.binary,
                'PATH': self.path('bin') + os.pathsep + os.environ.get('PATH', os.defpath),
                'PYTHONPATH': PKG_ROOT,
            }
        )
        os.makedirs(self.path('run'), mode=0o700, exist_ok=True)
        for d in ('out', 'fetched'):
            shutil.rmtree(self.path(d), ignore_errors=True)
            os.makedirs(self.path(d))
        log = self.path('bin', 'calls.log')
        if os.path.exists(log):
            os.unlink(log)
        t0 = time.monotonic()
        p = subprocess.run(
            [
                os.path.join(VENV_BIN, 'ansible-playbook'),
                '-i',
                kind + '.ini',
                'play.yml',
                '-e',
                'out=%s fetched=%s' % (self.path('out'), self.path('fetched')),
            ],
            env=env,
            cwd=self.work,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            universal_newlines=True,
        )
        took = time.monotonic() - t0
        print('  %s: rc=%d %.1fs' % (kind, p.returncode, took))
        self.assertTrue(os.path.exists(record), p.stdout)
        with open(record) as f:
            records = json.load(f)
        with open(log) as f:
            calls = f.read().splitlines()
        return {
            'rc': p.returncode,
            'out': p.stdout,
            'records': records,
            'calls': calls,
            'files': snapshot(self.path('out')),
            'fetched': snapshot(self.path('fetched')),
            'left': sorted(os.listdir(self.path('run'))),
        }

    def test_kubectl_options_and_routing(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith(('ANSIBLE_', 'SPINDLE_'))}
        env.update(
            {
                'ANSIBLE_HOME': self.path('home'),
                'ANSIBLE_COLLECTIONS_PATH': COLLECTIONS,
                'PYTHONPATH': PKG_ROOT,
            }
        )
        script = 'CONNECTION_DIR = %r\n%s' % (os.path.join(PLUGINS, 'connection'), OPTIONS_CHECK)
        p = subprocess.run(
            [os.path.join(VENV_BIN, 'python'), '-c', script],
            env=env,
            cwd=self.work,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            universal_newlines=True,
        )
        self.assertEqual(p.returncode, 0, p.stdout)
        self.assertIn('options ok', p.stdout)

    def test_stock_and_spindle_agree(self):
        main, spindle_only = self.setup_world()
        stock = self.run_play('stock')
        spin = self.run_play('spindle')
        for run in (stock, spin):
            refused = [c for c in run['calls'] if c.startswith('REFUSED')]
            self.assertEqual(refused, [], run['out'])
        self.assertEqual(spin['left'], [], 'the daemon was not cleaned up')
        # both ran each host's commands through the expected stand-in line
        for host, line in main.items():
            self.assertIn(line, spin['calls'], host)
            if host not in spindle_only:
                self.assertIn(line, stock['calls'], host)
        self.assertIn('su app', spin['calls'])
        self.assertIn('su app', stock['calls'])
        # spindle started one agent per host: one exec line each (stock: one per command)
        for host, line in main.items():
            self.assertEqual(spin['calls'].count(line), 1, (host, spin['calls']))

        def by_host(records, skip=()):
            out = {}
            for r in records:
                if r['host'] not in skip:
                    out.setdefault(r['host'], []).append(r)
            return out

        a = by_host(stock['records'])
        b = by_host(spin['records'], skip=spindle_only)
        self.assertEqual(sorted(a), sorted(b))
        for host in sorted(a):
            for i, (x, y) in enumerate(zip(a[host], b[host])):
                self.assertEqual(
                    x,
                    y,
                    'host %s, result #%d (%s)\nstock: %s\nspindle: %s'
                    % (host, i, x.get('task'), stock['out'][-3000:], spin['out'][-3000:]),
                )
            self.assertEqual(len(a[host]), len(b[host]), host)

        def without(snap, hosts):
            return {k: v for k, v in snap.items() if k.split('/', 1)[0] not in hosts}

        self.assertEqual(stock['files'], without(spin['files'], spindle_only))
        self.assertEqual(stock['fetched'], without(spin['fetched'], spindle_only))
        # the spindle-only hosts did everything too
        for host in spindle_only:
            statuses = [r['status'] for r in spin['records'] if r['host'] == host and r['status'] != 'recap']
            self.assertEqual(statuses.count('failed'), 2, (host, statuses))
            self.assertEqual(len(statuses), 10, (host, statuses))
        self.assertEqual(stock['rc'], spin['rc'])
        print(
            '  equal: %s; spindle-only: %s; stand-in lines: stock %d, spindle %d'
            % (
                ', '.join('%s %d results' % (h, len(a[h])) for h in sorted(a)),
                ', '.join(sorted(spindle_only)),
                len(stock['calls']),
                len(spin['calls']),
            )
        )
        if os.environ.get('ERTR_SHOW_CALLS'):
            print('\n'.join(['stock:'] + sorted(set(stock['calls'])) + ['spindle:'] + spin['calls']))


if __name__ == '__main__':
    unittest.main()
