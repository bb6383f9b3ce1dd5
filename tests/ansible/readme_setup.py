"""Ansible set up as the README tells users: only the ansible.cfg lines that
``python -m spindle_ansible`` prints (Ansible's defaults otherwise: pipelining off), for tests
that must see what a new user sees. ``SPINDLE_PATHS_FILE`` gets the run's module path counts
(written by the ``spindle`` callback)."""

import json
import os
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
VENV_BIN = os.path.join(REPO, os.environ.get('SPINDLE_VENV') or '.venv', 'bin')
BIN = os.environ.get('SPINDLE_BIN') or os.path.join(REPO, 'target', 'debug', 'spindle')
PKG = os.path.join(REPO, 'ansible_plugin')


def available():
    """Why these tests cannot run here, or None."""
    if not os.access(os.path.join(VENV_BIN, 'ansible-playbook'), os.X_OK):
        return 'no venv with ansible-core (scripts/venv.sh)'
    if not os.access(BIN, os.X_OK):
        return 'no spindle binary at %s' % BIN
    return None


def write_cfg(work, *extra):
    """``work``/ansible.cfg: the printed lines, then ``extra`` lines of [defaults]."""
    lines = subprocess.run(
        [os.path.join(VENV_BIN, 'python'), '-m', 'spindle_ansible'],
        env=dict(os.environ, PYTHONPATH=PKG),
        check=True,
        stdout=subprocess.PIPE,
        universal_newlines=True,
    ).stdout
    path = os.path.join(work, 'ansible.cfg')
    with open(path, 'w') as f:
        f.write(lines.rstrip('\n') + '\n' + ''.join(line + '\n' for line in extra))
    return path


def write_record_cfg(work, *extra):
    """:func:`write_cfg` with the ``spindle_record`` callback enabled beside ``spindle`` (the
    tests that compare per-task results with stock's)."""
    path = write_cfg(work, *extra)
    with open(path) as f:
        text = f.read().replace(
            'callbacks_enabled = spindle\n', 'callbacks_enabled = spindle, spindle_record\n'
        )
    with open(path, 'w') as f:
        f.write(text)
    return path


def env(work):
    """The environment for an Ansible CLI run in ``work``: nothing of the caller's ANSIBLE_ or
    SPINDLE_ settings, this checkout's plugin package and daemon binary."""
    out = {k: v for k, v in os.environ.items() if not k.startswith(('ANSIBLE_', 'SPINDLE_'))}
    out.update(
        {
            'ANSIBLE_CONFIG': os.path.join(work, 'ansible.cfg'),
            'ANSIBLE_HOME': work,
            'ANSIBLE_LOCAL_TEMP': os.path.join(work, 'tmp'),
            'ANSIBLE_NOCOLOR': '1',
            'SPINDLE_BIN': BIN,
            'SPINDLE_PATHS_FILE': os.path.join(work, 'paths.json'),
            'PYTHONPATH': PKG,
            'PATH': VENV_BIN + os.pathsep + os.environ.get('PATH', ''),
        }
    )
    return out


def paths(work):
    """The module path counts the last run in ``work`` wrote, or None."""
    p = os.path.join(work, 'paths.json')
    if not os.path.exists(p):
        return None
    with open(p) as f:
        out = json.load(f)
    os.remove(p)
    return out


def inventory(fleet_inventory, path, user=None, interpreters=None):
    """A copy of a netns fleet's inventory at ``path`` as an ordinary one would be: no
    ``ansible_python_interpreter`` unless ``interpreters`` ({host: path}) names one (else
    Ansible's interpreter discovery), and ``ansible_user`` = ``user`` when given."""
    out = []
    hosts = True  # in a host section (not [group:vars])
    with open(fleet_inventory) as f:
        for line in f:
            if line.startswith('['):
                hosts = ':vars]' not in line
            if line.startswith('ansible_python_interpreter='):
                continue
            words = line.split()
            if hosts and words and not line.startswith(('[', ';', '#')):
                if user:
                    words = [w for w in words if not w.startswith('ansible_user=')]
                    words.append('ansible_user=%s' % user)
                if (interpreters or {}).get(words[0]):
                    words.append('ansible_python_interpreter=%s' % interpreters[words[0]])
                line = ' '.join(words) + '\n'
            out.append(line)
    with open(path, 'w') as f:
        f.writelines(out)
    return path


def login_user(name, shell='/bin/bash'):
    """Make local user ``name`` (home, login ``shell``, an unlocked password: the fleet's sshd
    refuses locked accounts) with passwordless sudo; returns a cleanup function, or None if it
    cannot be made here."""
    if subprocess.run(['id', name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode:
        if subprocess.run(['useradd', '-m', '-s', shell, name]).returncode:
            return None
    subprocess.run(['usermod', '-s', shell, name], check=True)
    subprocess.run(['chpasswd'], input=('%s:spindle-%s\n' % (name, os.getpid())).encode(), check=True)
    sudoers = '/etc/sudoers.d/spindle-test-%s' % name
    with open(sudoers, 'w') as f:
        f.write('%s ALL=(ALL) NOPASSWD: ALL\n' % name)
    os.chmod(sudoers, 0o440)

    def cleanup():
        if os.path.exists(sudoers):
            os.remove(sudoers)
        subprocess.run(['userdel', '-r', '-f', name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    return cleanup


FLEET = os.path.join(REPO, 'containers', 'netns-fleet.sh')


def udiff(stock, spindle):
    """Two runs' per-task records as a unified diff of their JSON (stock, spindle)."""
    import difflib

    dump = lambda x: json.dumps(x, indent=1, sort_keys=True).splitlines()  # noqa: E731
    return '\n'.join(difflib.unified_diff(dump(stock), dump(spindle), 'stock', 'spindle', lineterm=''))


def run(argv, **kw):
    """``argv``'s CompletedProcess, stdout and stderr together as text."""
    return subprocess.run(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, **kw
    )


def fleet_up(name, count):
    """A netns fleet of ``count`` sshd targets: its inventory path (unittest.SkipTest when
    this machine cannot make one; RuntimeError when it fails)."""
    import unittest

    why = available()
    if why:
        raise unittest.SkipTest(why)
    up = run(['bash', FLEET, 'up', name, str(count)])
    if up.returncode == 77:
        raise unittest.SkipTest('netns fleet unavailable: ' + up.stdout[-300:])
    if up.returncode != 0:
        raise RuntimeError(up.stdout)
    return up.stdout.strip().splitlines()[-1]


def fleet_down(name):
    run(['bash', FLEET, 'down', name])
