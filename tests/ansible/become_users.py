"""Local users with passwords for the become tests (test_become.py, test_enter_conformance.py):
created with a home directory, replacing leftovers of an earlier run, and removed when the
test ends. Needs root; skips the test (reason printed) when useradd or chpasswd is missing."""

import os
import subprocess

TOOLS = ('/usr/sbin/useradd', '/usr/sbin/userdel', '/usr/sbin/chpasswd')


def _run(argv, **kw):
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


def remove_users(names):
    for name in names:
        _run(['userdel', '-r', '-f', name])


def add_users(test, users):
    """Create ``users`` ({name: (password, login shell)}) for the unittest ``test``; their
    removal is registered with ``test.addCleanup``."""
    for tool in TOOLS:
        if not os.access(tool, os.X_OK):
            print('SKIP: %s missing (scripts/setup.sh installs it)' % tool)
            test.skipTest('%s missing' % tool)
    test.addCleanup(remove_users, list(users))
    for name, (password, shell) in users.items():
        _run(['userdel', '-r', '-f', name])
        p = _run(['useradd', '-m', '-s', shell, name])
        test.assertEqual(p.returncode, 0, 'useradd %s: %s' % (name, p.stdout))
        p = subprocess.run(['chpasswd'], input=('%s:%s\n' % (name, password)).encode())
        test.assertEqual(p.returncode, 0, 'chpasswd %s' % name)
