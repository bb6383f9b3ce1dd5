"""The spindle-ansible wheel (maturin, ansible_plugin/pyproject.toml): installed into a fresh
venv, it brings the plugins and the ``spindle`` daemon binary (and none of the crate's other
bins), ``spindle --version`` runs from the venv's bin/, and the strategy finds that binary
and runs a playbook with nothing set: no SPINDLE_BIN, no spindle on PATH, only the two
ansible.cfg lines of the README.

The wheel: ``$SPINDLE_WHEEL`` if set, else built here with ``maturin build --release`` into a
temporary directory, the command scripts/venv.sh runs, on the same cargo target dir (so right
after venv.sh it takes a second or two; on a cold target dir it is a release build of the
crate, about a minute on 2 idle cores).  maturin: the venv's (scripts/venv.sh installs it),
else the version venv.sh pins, pip-installed into a throwaway venv; the test skips, saying
why, only when maturin cannot be installed.

Ansible, for the lookup and playbook checks, comes from the venv (.venv or $SPINDLE_VENV)
through a .pth file that sys.path puts after the fresh venv's own site-packages, so
``spindle_ansible`` is the wheel's copy; those checks skip, saying why, without that venv.

Also here: the lookup order of ``find_binary`` (SPINDLE_BIN, the install dirs, PATH) and its
error message, against fake binaries.

Run: ``.venv/bin/python -m unittest discover -s tests/ansible -p test_wheel.py -v``.
"""

import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import unittest
import zipfile
from unittest import mock

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
PKG_ROOT = os.path.join(REPO, 'ansible_plugin')
VENV = os.path.abspath(os.path.join(REPO, os.environ.get('SPINDLE_VENV') or '.venv'))
VENV_PY = os.path.join(VENV, 'bin', 'python')
OTHER_BINS = ('spindle-fleet-sim', 'spindle-scale')  # the crate's bins that stay out


def _cargo_version():
    with open(os.path.join(REPO, 'Cargo.toml')) as f:
        return re.search(r'^version\s*=\s*"([^"]+)"', f.read(), re.M).group(1)


def _maturin_pin():
    with open(os.path.join(REPO, 'scripts', 'venv.sh')) as f:
        return re.search(r'^MATURIN_VERSION=(\S+)', f.read(), re.M).group(1)


def _run(argv, **kw):
    kw.setdefault('stdout', subprocess.PIPE)
    kw.setdefault('stderr', subprocess.STDOUT)
    return subprocess.run(argv, universal_newlines=True, **kw)


def _checked(argv, **kw):
    p = _run(argv, **kw)
    if p.returncode != 0:
        raise AssertionError('%s failed (%s):\n%s' % (' '.join(argv), p.returncode, p.stdout))
    return p.stdout


def _purelib(python):
    return _checked(
        [python, '-c', 'import sysconfig; print(sysconfig.get_path("purelib"))'], env=_clean_env()
    ).strip()


def _venv_has_ansible():
    return os.access(VENV_PY, os.X_OK) and _run([VENV_PY, '-c', 'import ansible']).returncode == 0


def _clean_env(**extra):
    """No SPINDLE_*/ANSIBLE_* from the caller, and a PATH without any spindle binary."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(('SPINDLE_', 'ANSIBLE_', 'PYTHON', 'VIRTUAL_ENV'))
    }
    env['PATH'] = os.pathsep.join(
        d
        for d in ('/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin')
        if not os.path.exists(os.path.join(d, 'spindle'))
    )
    env.update(extra)
    return env


class WheelTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix='spindle-wheel-test-')
        try:
            cls.wheel = os.environ.get('SPINDLE_WHEEL') or cls._build_wheel()
            cls.venv = os.path.join(cls.tmp, 'venv')
            base = VENV_PY if os.access(VENV_PY, os.X_OK) else sys.executable
            _checked([base, '-m', 'venv', cls.venv])
            cls.py = os.path.join(cls.venv, 'bin', 'python')
            _checked(
                [
                    cls.py,
                    '-m',
                    'pip',
                    'install',
                    '-q',
                    '--no-index',
                    '--no-deps',
                    '--disable-pip-version-check',
                    cls.wheel,
                ],
                env=_clean_env(),
            )
            cls.site = _purelib(cls.py)
            cls.ansible = _venv_has_ansible()
            if cls.ansible:  # ansible-core from the venv, after the fresh venv's own packages
                with open(os.path.join(cls.site, 'zz_spindle_test_ansible.pth'), 'w') as f:
                    f.write(_purelib(VENV_PY) + '\n')
        except BaseException:
            shutil.rmtree(cls.tmp, True)
            raise

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, True)

    @classmethod
    def _build_wheel(cls):
        maturin = os.path.join(VENV, 'bin', 'maturin')
        pin = _maturin_pin()
        usable = os.access(maturin, os.X_OK) and _run([maturin, '--version']).stdout.strip()
        if usable != 'maturin ' + pin:
            tools = os.path.join(cls.tmp, 'tools')
            _checked([sys.executable, '-m', 'venv', tools])
            p = _run(
                [
                    os.path.join(tools, 'bin', 'pip'),
                    'install',
                    '-q',
                    '--disable-pip-version-check',
                    'maturin==' + pin,
                ]
            )
            if p.returncode != 0:
                print('SKIP: cannot install maturin==%s: %s' % (pin, p.stdout.strip()[-500:]))
                raise unittest.SkipTest('maturin==%s cannot be installed' % pin)
            maturin = os.path.join(tools, 'bin', 'maturin')
        out = os.path.join(cls.tmp, 'wheels')
        target = os.environ.get('CARGO_TARGET_DIR') or 'target'
        env = dict(os.environ, CARGO_TARGET_DIR=os.path.join(REPO, target))  # absolute
        _checked([maturin, 'build', '--release', '--out', out], cwd=PKG_ROOT, env=env)
        wheels = glob.glob(os.path.join(out, 'spindle_ansible-*.whl'))
        assert len(wheels) == 1, wheels
        return wheels[0]

    def _need_ansible(self):
        if not self.ansible:
            print('SKIP: no venv with ansible-core at %s (run scripts/venv.sh)' % VENV)
            self.skipTest('no venv with ansible-core (scripts/venv.sh)')

    def test_wheel_contents(self):
        names = zipfile.ZipFile(self.wheel).namelist()
        scripts = sorted(n.rsplit('/', 1)[1] for n in names if '.data/scripts/' in n)
        self.assertEqual(scripts, ['spindle'], names)
        for need in (
            'spindle_ansible/__init__.py',
            'spindle_ansible/plugins/strategy/spindle_linear.py',
            'spindle_ansible/plugins/connection/spindle.py',
        ):
            self.assertIn(need, names)
        self.assertFalse([n for n in names if '__pycache__' in n or n.endswith('.pyc')], names)
        self.assertIn('-%s-' % _cargo_version(), os.path.basename(self.wheel))
        print('wheel %s: %d KiB' % (os.path.basename(self.wheel), os.path.getsize(self.wheel) // 1024))

    def test_spindle_version_from_venv_bin(self):
        binary = os.path.join(self.venv, 'bin', 'spindle')
        out = _checked([binary, '--version'], env=_clean_env())
        self.assertEqual(out.strip(), 'spindle %s' % _cargo_version())
        for other in OTHER_BINS:
            self.assertFalse(os.path.exists(os.path.join(self.venv, 'bin', other)), other)

    def test_plugin_finds_the_wheel_binary(self):
        self._need_ansible()
        out = _checked(
            [
                self.py,
                '-c',
                textwrap.dedent('''
            import spindle_ansible.plugins.strategy as s
            print(s.__file__)
            print(s.find_binary())
        '''),
            ],
            env=_clean_env(),
            cwd=self.tmp,
        )
        where, found = out.strip().splitlines()[-2:]
        self.assertTrue(where.startswith(self.site), where)  # the wheel's copy, not the source tree
        self.assertEqual(found, os.path.join(self.venv, 'bin', 'spindle'))

    def test_playbook_with_two_cfg_lines(self):
        """The README's install: the wheel and two ansible.cfg lines, nothing else."""
        self._need_ansible()
        work = os.path.join(self.tmp, 'play')
        os.makedirs(os.path.join(work, 'run'))
        with open(os.path.join(work, 'ansible.cfg'), 'w') as f:
            f.write(
                '[defaults]\nstrategy_plugins = %s\nstrategy = spindle_linear\n'
                % os.path.join(self.site, 'spindle_ansible', 'plugins', 'strategy')
            )
        with open(os.path.join(work, 'hosts'), 'w') as f:
            f.write('localhost ansible_connection=local ansible_python_interpreter=%s\n' % self.py)
        with open(os.path.join(work, 'play.yml'), 'w') as f:
            f.write(
                textwrap.dedent('''
                - hosts: all
                  gather_facts: false
                  tasks:
                    - command: echo spindle-wheel-ok
                      register: r
                    - assert: {that: [r.stdout == "spindle-wheel-ok"]}
            ''')
            )
        playbook = os.path.join(VENV, 'bin', 'ansible-playbook')
        p = _run(
            [self.py, playbook, '-i', 'hosts', 'play.yml', '-vv'],
            cwd=work,
            timeout=300,
            env=_clean_env(
                ANSIBLE_HOME=os.path.join(work, 'home'),
                ANSIBLE_LOCAL_TEMP=os.path.join(work, 'tmp'),
                XDG_RUNTIME_DIR=os.path.join(work, 'run'),
            ),
        )
        self.assertEqual(p.returncode, 0, p.stdout)
        self.assertIn('daemon pid', p.stdout)  # the strategy started the wheel's daemon
        self.assertRegex(p.stdout, r'localhost\s*: ok=2 ')


class LookupOrderTests(unittest.TestCase):
    """find_binary: SPINDLE_BIN, then install_dirs(), then PATH; the error lists all three."""

    def setUp(self):
        try:
            sys.path.insert(0, PKG_ROOT)
            from spindle_ansible import daemon
        except ImportError as e:
            print('SKIP: ansible-core not importable here (%s); run with the venv\'s python' % e)
            self.skipTest('ansible-core not importable')
        finally:
            sys.path.remove(PKG_ROOT)
        self.s = daemon
        self.tmp = tempfile.mkdtemp(prefix='spindle-lookup-test-')
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.scripts, self.onpath = (os.path.join(self.tmp, d) for d in ('scripts', 'onpath'))
        for d in (self.scripts, self.onpath):
            os.mkdir(d)
            self._fake(os.path.join(d, 'spindle'))

    def _fake(self, path):
        with open(path, 'w') as f:
            f.write('#!/bin/sh\n')
        os.chmod(path, 0o755)
        return path

    def find(self, env, dirs):
        with mock.patch.dict(os.environ, env, clear=True), mock.patch.object(
            self.s, 'install_dirs', return_value=dirs
        ):
            return self.s.find_binary()

    def test_order(self):
        given = self._fake(os.path.join(self.tmp, 'given'))
        self.assertEqual(self.find({'SPINDLE_BIN': given, 'PATH': self.onpath}, [self.scripts]), given)
        self.assertEqual(
            self.find({'PATH': self.onpath}, [self.tmp, self.scripts]), os.path.join(self.scripts, 'spindle')
        )
        self.assertEqual(self.find({'PATH': self.onpath}, [self.tmp]), os.path.join(self.onpath, 'spindle'))

    def test_errors_say_where(self):
        with self.assertRaisesRegex(self.s.AnsibleError, 'SPINDLE_BIN=/nonexistent'):
            self.find({'SPINDLE_BIN': '/nonexistent', 'PATH': self.onpath}, [self.scripts])
        with self.assertRaises(self.s.AnsibleError) as cm:
            self.find({'PATH': self.tmp}, [self.tmp])
        msg = str(cm.exception)
        for part in (
            'SPINDLE_BIN (not set)',
            os.path.join(self.tmp, 'spindle'),
            'spindle on PATH (%s)' % self.tmp,
            'spindle-ansible wheel',
        ):
            self.assertIn(part, msg)

    def test_install_dirs(self):
        with mock.patch.object(self.s.sysconfig, 'get_path', return_value=self.scripts), mock.patch.object(
            self.s.sys, 'executable', os.path.join(self.onpath, 'python')
        ):
            self.assertEqual(self.s.install_dirs()[0], self.scripts)
            self.assertEqual(self.s.install_dirs()[-1], self.onpath)
        with mock.patch.object(self.s.sysconfig, 'get_path', return_value=self.scripts), mock.patch.object(
            self.s.sys, 'executable', os.path.join(self.scripts, 'python')
        ):
            self.assertEqual(self.s.install_dirs(), [self.scripts])  # no duplicates
        # installed with pip --user (this module under the user site): the user scheme's scripts
        preferred = getattr(self.s.sysconfig, 'get_preferred_scheme', lambda _: 'posix_user')
        user_scheme = preferred('user')
        with mock.patch.object(self.s.site, 'getusersitepackages', return_value=PKG_ROOT):
            dirs = self.s.install_dirs()
        self.assertEqual(dirs[1], os.path.abspath(self.s.sysconfig.get_path('scripts', user_scheme)))


if __name__ == '__main__':
    unittest.main()
