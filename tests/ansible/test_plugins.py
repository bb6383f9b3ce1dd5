"""Tests of spindle's Ansible plugins: ansible-doc finds them, the connection routing patch
behaves, and the conformance playbook gives the same results through spindle as through
stock Ansible (run_conformance.py, real sshd targets in network namespaces).

Run: ``python3 -m unittest discover -s tests/ansible -v`` (as root, for the fleet).  Skips,
with the reason printed, when the venv (scripts/venv.sh), the daemon binary or the fleet
(netns-fleet.sh exit 77) is missing.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
VENV = os.path.abspath(os.path.join(REPO, os.environ.get('SPINDLE_VENV') or '.venv'))
VENV_BIN = os.path.join(VENV, 'bin')
PKG_ROOT = os.path.join(REPO, 'ansible_plugin')
PLUGINS = os.path.join(PKG_ROOT, 'spindle_ansible', 'plugins')
SKIP = 77

ROUTING_CHECK = textwrap.dedent('''
    from ansible.playbook.play_context import PlayContext
    from ansible.plugins.loader import connection_loader, init_plugin_loader
    init_plugin_loader()
    from spindle_ansible.routing import LoaderPatch
    from ansible import constants as C
    before = connection_loader.get_with_context
    p1 = LoaderPatch().apply()
    # Loaded before Ansible forks its workers: they inherit its module and option
    # definitions instead of parsing its DOCUMENTATION each task.
    assert C.config.has_configuration_definition('connection', 'spindle')
    p2 = LoaderPatch().apply()  # idempotent: the second one does nothing
    assert connection_loader.get_with_context is not before
    ssh = connection_loader.get('ssh', PlayContext())
    assert ssh._load_name.endswith('spindle') and ssh.transport == 'spindle', ssh
    local = connection_loader.get('ansible.builtin.local', PlayContext())
    assert local._spindle_forced_transport == 'local' and local.transport == 'local'
    other = connection_loader.get('winrm', PlayContext())  # not routed
    assert other is not None and other.transport != 'spindle', other
    p2.restore()
    assert connection_loader.get_with_context is not before
    p1.restore()
    assert connection_loader.get_with_context == before
    assert connection_loader.get('ssh', PlayContext()).transport == 'ssh'
    print('routing ok')
''')


# Stand-in for docker/podman (shared with tests/container_transport.rs).
with open(os.path.join(os.path.dirname(HERE), 'fixtures', 'fake-container-engine.sh')) as _f:
    FAKE_ENGINE = _f.read()


def _env(home):
    env = {k: v for k, v in os.environ.items() if not k.startswith(('ANSIBLE_', 'SPINDLE_'))}
    env.update(
        {
            'ANSIBLE_HOME': home,
            'ANSIBLE_LOCAL_TEMP': os.path.join(home, 'tmp'),
            'ANSIBLE_STRATEGY_PLUGINS': os.path.join(PLUGINS, 'strategy'),
            'ANSIBLE_CONNECTION_PLUGINS': os.path.join(PLUGINS, 'connection'),
            'ANSIBLE_CALLBACK_PLUGINS': os.path.join(PLUGINS, 'callback'),
            'PYTHONPATH': PKG_ROOT,
        }
    )
    return env


class PluginTests(unittest.TestCase):
    def setUp(self):
        if not os.access(os.path.join(VENV_BIN, 'ansible-doc'), os.X_OK):
            print('SKIP: no venv with ansible-core at %s (run scripts/venv.sh)' % VENV_BIN)
            self.skipTest('no venv with ansible-core (scripts/venv.sh)')
        self.home = tempfile.mkdtemp(prefix='spindle-ansible-test-')
        self.addCleanup(shutil.rmtree, self.home, True)

    def run_venv(self, *argv):
        p = subprocess.run(
            list(argv),
            env=_env(self.home),
            cwd=self.home,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            universal_newlines=True,
        )
        self.assertEqual(p.returncode, 0, '%s failed:\n%s' % (' '.join(argv), p.stdout))
        return p.stdout

    def test_ansible_doc(self):
        doc = os.path.join(VENV_BIN, 'ansible-doc')
        for kind, name in (
            ('strategy', 'spindle_linear'),
            ('strategy', 'spindle_free'),
            ('connection', 'spindle'),
            ('callback', 'spindle_record'),
            ('callback', 'spindle'),
        ):
            out = self.run_venv(doc, '-t', kind, name)
            self.assertIn(name, out)
        self.assertIn('spindle_socket', self.run_venv(doc, '-t', 'connection', 'spindle'))

    def test_config_lines(self):
        out = self.run_venv(os.path.join(VENV_BIN, 'python'), '-m', 'spindle_ansible')
        self.assertIn('callbacks_enabled = spindle', out)
        for line in out.splitlines():
            if line.endswith(('/strategy', '/connection', '/callback')):
                self.assertTrue(os.path.isdir(line.split(' = ', 1)[1]), line)

    def test_connection_routing(self):
        out = self.run_venv(os.path.join(VENV_BIN, 'python'), '-c', ROUTING_CHECK)
        self.assertIn('routing ok', out)

    def test_container_connections_routed(self):
        """Hosts with ansible_connection docker / containers.podman.podman run through spindle's
        container transports. No container engine runs here: stand-in `docker`/`podman` on
        PATH check their argv and run the command on this machine (the rest is real)."""
        binary = os.environ.get('SPINDLE_BIN') or os.path.join(REPO, 'target', 'debug', 'spindle')
        if not os.access(binary, os.X_OK):
            self.skipTest('no spindle binary')
        bindir = os.path.join(self.home, 'bin')
        os.mkdir(bindir)
        for engine in ('docker', 'podman'):
            path = os.path.join(bindir, engine)
            with open(path, 'w') as f:
                f.write(FAKE_ENGINE)
            os.chmod(path, 0o755)
        out_dir = os.path.join(self.home, 'out')
        os.mkdir(out_dir)
        with open(os.path.join(self.home, 'inv.ini'), 'w') as f:
            f.write(
                'box-c1 ansible_connection=docker\n'
                'box-c2 ansible_connection=containers.podman.podman ansible_user=root\n'
                '[all:vars]\nansible_python_interpreter=/usr/bin/python3\n'
            )
        with open(os.path.join(self.home, 'play.yml'), 'w') as f:
            f.write(
                textwrap.dedent(
                    '''
                - hosts: all
                  gather_facts: false
                  tasks:
                    - ping:
                    - command: echo {{ inventory_hostname }}
                      register: r
                    - assert: {that: ["r.stdout == inventory_hostname"]}
                    - copy: {content: "from {{ inventory_hostname }}\\n", dest: "%s/{{ inventory_hostname }}"}
            '''
                    % out_dir
                )
            )
        env = _env(self.home)
        env.update(
            {
                'ANSIBLE_STRATEGY': 'spindle_linear',
                'SPINDLE_BIN': binary,
                'PATH': bindir + os.pathsep + os.environ.get('PATH', ''),
                'ANSIBLE_PIPELINING': 'True',
            }
        )
        p = subprocess.run(
            [os.path.join(VENV_BIN, 'ansible-playbook'), '-i', 'inv.ini', 'play.yml'],
            env=env,
            cwd=self.home,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            universal_newlines=True,
        )
        self.assertEqual(p.returncode, 0, p.stdout)
        for host in ('box-c1', 'box-c2'):
            with open(os.path.join(out_dir, host)) as f:
                self.assertEqual(f.read(), 'from %s\n' % host)
        with open(os.path.join(bindir, 'calls.log')) as f:
            log = f.read()
        self.assertIn('docker exec -i box-c1 /bin/sh -c', log)
        self.assertIn('podman exec -i -u root box-c2 /bin/sh -c', log)

    def test_local_actions_run_concurrently(self):
        """delegate_to localhost from several hosts: the commands overlap in time (forks
        local actions at once), as with stock Ansible."""
        binary = os.environ.get('SPINDLE_BIN') or os.path.join(REPO, 'target', 'debug', 'spindle')
        if not os.access(binary, os.X_OK):
            self.skipTest('no spindle binary')
        with open(os.path.join(self.home, 'inv.ini'), 'w') as f:
            f.write(
                'h1\nh2\nh3\n[all:vars]\nansible_connection=local\n'
                'ansible_python_interpreter=/usr/bin/python3\n'
            )
        with open(os.path.join(self.home, 'play.yml'), 'w') as f:
            f.write(
                textwrap.dedent('''
                - hosts: all
                  gather_facts: false
                  tasks:
                    - shell: "date +%s.%N; sleep 1.5; date +%s.%N"
                      delegate_to: localhost
                      register: r
                    - copy: {content: "{{ r.stdout }}", dest: "{{ playbook_dir }}/span-{{ inventory_hostname }}"}
                      delegate_to: localhost
            ''')
            )
        env = _env(self.home)
        env.update(
            {
                'ANSIBLE_STRATEGY': 'linear',
                'ANSIBLE_CALLBACKS_ENABLED': 'spindle',
                'SPINDLE_BIN': binary,
                'ANSIBLE_PIPELINING': 'True',
                'ANSIBLE_FORKS': '5',
            }
        )
        p = subprocess.run(
            [os.path.join(VENV_BIN, 'ansible-playbook'), '-i', 'inv.ini', 'play.yml'],
            env=env,
            cwd=self.home,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            universal_newlines=True,
        )
        self.assertEqual(p.returncode, 0, p.stdout)
        spans = []
        for host in ('h1', 'h2', 'h3'):
            with open(os.path.join(self.home, 'span-' + host)) as f:
                start, end = (float(x) for x in f.read().split())
            spans.append((start, end))
        self.assertLess(
            max(s for s, _ in spans),
            min(e for _, e in spans),
            'the delegated commands ran one after another: %r' % spans,
        )

    def test_chroot_connection_routed(self):
        """Hosts with ansible_connection community.general.chroot run through spindle's chroot
        transport without the collection on Ansible's path (spindle's routing does not need
        it; test_enter_conformance compares with the stock plugin). The chroot is a tree of
        read-only bind mounts with a tmpfs /tmp."""
        binary = os.environ.get('SPINDLE_BIN') or os.path.join(REPO, 'target', 'debug', 'spindle')
        if not os.access(binary, os.X_OK) or os.geteuid() != 0:
            print('SKIP: needs root (bind mounts, chroot) and the spindle binary')
            self.skipTest('needs root and the spindle binary')
        tree = os.path.join(self.home, 'tree')
        make = (
            'set -e; mkdir -p {r}/usr {r}/etc {r}/dev {r}/tmp; '
            'for l in bin sbin lib lib64; do [ -e /$l ] && ln -sfn usr/$l {r}/$l; done; '
            'mount --bind /usr {r}/usr && mount -o remount,bind,ro {r}/usr; '
            'mount --bind /etc {r}/etc && mount -o remount,bind,ro {r}/etc; '
            '[ -e {r}/dev/null ] || mknod -m 666 {r}/dev/null c 1 3; mount -t tmpfs -o size=16m spindle-chroot {r}/tmp; '
            'echo inside > {r}/marker.txt'
        ).format(r=tree)
        self.addCleanup(
            subprocess.run,
            ['sh', '-c', 'for m in tmp etc usr; do umount -l %s/$m; done' % tree],
            stderr=subprocess.DEVNULL,
        )
        subprocess.run(['sh', '-c', make], check=True)
        with open(os.path.join(self.home, 'inv.ini'), 'w') as f:
            f.write(
                '%s ansible_connection=community.general.chroot '
                'ansible_python_interpreter=/usr/bin/python3\n' % tree
            )
        with open(os.path.join(self.home, 't.j2'), 'w') as f:
            f.write('rendered for {{ inventory_hostname | basename }}\n')
        with open(os.path.join(self.home, 'play.yml'), 'w') as f:
            f.write(
                textwrap.dedent('''
                - hosts: all
                  gather_facts: false
                  tasks:
                    - command: cat /marker.txt
                      register: marker
                    - copy: {content: "copied\\n", dest: /tmp/copied.txt, mode: "0600"}
                    - template: {src: t.j2, dest: /tmp/rendered.txt}
                    - file: {path: /tmp/dir, state: directory}
                    - stat: {path: /tmp/copied.txt}
                      register: st
                    - shell: cat /tmp/copied.txt /tmp/rendered.txt; test -e /work || echo no-host-fs
                      register: out
                    - assert:
                        that:
                          - marker.stdout == "inside"
                          - st.stat.mode == "0600"
                          - out.stdout_lines == ["copied", "rendered for tree", "no-host-fs"]
            ''')
            )
        env = _env(self.home)
        env.update(
            {
                'ANSIBLE_STRATEGY': 'linear',
                'ANSIBLE_CALLBACKS_ENABLED': 'spindle',
                'SPINDLE_BIN': binary,
                'ANSIBLE_PIPELINING': 'True',
            }
        )
        p = subprocess.run(
            [os.path.join(VENV_BIN, 'ansible-playbook'), '-i', 'inv.ini', 'play.yml'],
            env=env,
            cwd=self.home,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            universal_newlines=True,
        )
        self.assertEqual(p.returncode, 0, p.stdout)
        with open(os.path.join(tree, 'tmp', 'copied.txt')) as f:
            self.assertEqual(f.read(), 'copied\n')

    def test_conformance(self):
        # Two of the three targets on the oldest and newest target Python this ansible-core
        # supports (as found here, run_matrix.target_pythons); the third keeps discovery.
        import run_matrix

        core = subprocess.run(
            [os.path.join(VENV_BIN, 'python'), '-c', 'import ansible.release as r; print(r.__version__)'],
            stdout=subprocess.PIPE,
            universal_newlines=True,
        ).stdout.strip()
        argv = [sys.executable, os.path.join(HERE, 'run_conformance.py')]
        pythons = run_matrix.target_pythons(core) if core else []
        if pythons:
            argv += ['--target-pythons', ','.join(pythons)]
        p = subprocess.run(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            universal_newlines=True,
        )
        print(p.stdout)
        if p.returncode == SKIP:
            lines = p.stdout.strip().splitlines()
            self.skipTest(lines[-1] if lines else 'cannot run here')
        self.assertEqual(p.returncode, 0, 'stock and spindle runs differ:\n%s' % p.stdout)


if __name__ == '__main__':
    unittest.main()
