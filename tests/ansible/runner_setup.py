"""ansible-runner jobs set up as a user (or AWX) would: a private data directory with
``project/`` (the playbook), ``inventory/``, ``env/settings`` and ``env/envvars``, run with the
``ansible-runner run`` CLI; and their job events (``artifacts/<ident>/job_events/*.json``)
reduced to what must not differ between stock Ansible and Ansible through spindle.

spindle is enabled in ``env/envvars`` by the lines ``python -m spindle_ansible --envvars``
prints (the README's three ansible.cfg lines as environment variables): runner sets
``ANSIBLE_CALLBACK_PLUGINS`` itself, which hides the ``callback_plugins`` line of any
ansible.cfg (test_runner.py checks that this stays so, and says why).
"""

import glob
import json
import os
import shutil
import subprocess
import time

import yaml

import readme_setup as rs

RUNNER = os.path.join(rs.VENV_BIN, 'ansible-runner')

#: a playbook with every kind of per-host result: ok, changed, failed (ignored and not),
#: skipped, loop items, a handler, become, facts; one host (t2) fails for good, so the job's
#: status is 'failed' and its rc 2.
PLAYBOOK = """\
- hosts: all
  gather_facts: true
  gather_subset: [min]
  tasks:
    - name: hostname
      command: hostname
      register: h
    - name: stat
      stat: {path: /etc/hostname}
    - name: copy changed
      copy: {content: "{{ inventory_hostname }}\\n", dest: "/tmp/runner-test-{{ job_id }}"}
      notify: handler
    - name: copy unchanged
      copy: {content: "{{ inventory_hostname }}\\n", dest: "/tmp/runner-test-{{ job_id }}"}
    - name: failed and ignored
      command: /bin/false
      ignore_errors: true
    - name: skipped
      command: /bin/true
      when: false
    - name: loop
      shell: echo {{ item }}
      loop: [1, 2]
      changed_when: item == 2
    - name: become
      command: id -u
      become: true
      changed_when: false
    - name: fail on t2
      fail: {msg: t2 fails}
      when: inventory_hostname == 't2'
    - name: after the failure
      command: hostname
  handlers:
    - name: handler
      command: /bin/true
"""

#: module runs per host of PLAYBOOK that must reach a target, at least (facts, hostname, stat,
#: 2 copies, false, 2 loop items, id): the paths check's lower bound
MODULE_RUNS_AT_LEAST = 9


def available():
    why = rs.available()
    if why:
        return why
    if not os.access(RUNNER, os.X_OK):
        return 'no ansible-runner in the venv (scripts/venv.sh installs it)'
    return None


def spindle_envvars():
    """``python -m spindle_ansible --envvars``, parsed."""
    out = subprocess.run(
        [os.path.join(rs.VENV_BIN, 'python'), '-m', 'spindle_ansible', '--envvars'],
        env=dict(os.environ, PYTHONPATH=rs.PKG),
        check=True,
        stdout=subprocess.PIPE,
        universal_newlines=True,
    ).stdout
    return yaml.safe_load(out)


def select_hosts(fleet_inventory, path, hosts):
    """An ordinary inventory (rs.inventory: discovery, no interpreter named) holding only
    ``hosts`` (None: all)."""
    rs.inventory(fleet_inventory, path)
    if hosts is None:
        return path
    out = []
    section_hosts = True
    with open(path) as f:
        for line in f:
            if line.startswith('['):
                section_hosts = ':vars]' not in line
            words = line.split()
            if section_hosts and words and not line.startswith(('[', ';', '#')) and words[0] not in hosts:
                continue
            out.append(line)
    with open(path, 'w') as f:
        f.writelines(out)
    return path


def private_data_dir(
    root,
    name,
    fleet_inventory,
    spindle,
    hosts=None,
    settings=None,
    cfg='env',
    cmdline=None,
    playbook=PLAYBOOK,
    more_env=None,
):
    """``root``/``name``: a private data dir. ``spindle``: enabled by ``cfg`` = 'env' (the
    printed env vars in env/envvars, beside an ansible.cfg with the README's lines) or 'cfg'
    (ansible.cfg with the README's lines only, by ANSIBLE_CONFIG); else stock Ansible (the
    same ansible.cfg without spindle's lines)."""
    pdd = os.path.join(root, name)
    for d in ('project', 'inventory', 'env', 'tmp'):
        os.makedirs(os.path.join(pdd, d))
    with open(os.path.join(pdd, 'project', 'site.yml'), 'w') as f:
        f.write(playbook)
    select_hosts(fleet_inventory, os.path.join(pdd, 'inventory', 'hosts'), hosts)
    extra = ['host_key_checking = False']
    if spindle:
        rs.write_cfg(pdd, *extra)
    else:
        with open(os.path.join(pdd, 'ansible.cfg'), 'w') as f:
            f.write('[defaults]\n' + ''.join(line + '\n' for line in extra))
    envvars = {
        'ANSIBLE_CONFIG': os.path.join(pdd, 'ansible.cfg'),
        'ANSIBLE_HOME': pdd,
        'ANSIBLE_LOCAL_TEMP': os.path.join(pdd, 'tmp'),
        'ANSIBLE_NOCOLOR': '1',
        # this checkout's plugin package and daemon (a user's come from the venv)
        'PYTHONPATH': rs.PKG,
        'SPINDLE_BIN': rs.BIN,
        'SPINDLE_PATHS_FILE': os.path.join(pdd, 'paths.json'),
    }
    if spindle and cfg == 'env':
        envvars.update(spindle_envvars())
    envvars.update(more_env or {})
    with open(os.path.join(pdd, 'env', 'envvars'), 'w') as f:
        yaml.safe_dump(envvars, f)
    with open(os.path.join(pdd, 'env', 'settings'), 'w') as f:
        yaml.safe_dump(dict(settings or {}), f)
    with open(os.path.join(pdd, 'env', 'extravars'), 'w') as f:
        # the copies' destination, new for each job (targets keep their /tmp between jobs)
        yaml.safe_dump({'job_id': '%s-%s' % (os.path.basename(root), name)}, f)
    if cmdline:
        with open(os.path.join(pdd, 'env', 'cmdline'), 'w') as f:
            f.write(cmdline)
    return pdd


def runner_env():
    """The environment ansible-runner itself runs in: the caller's without any ANSIBLE_ or
    SPINDLE_ setting (the job's come from env/envvars), the venv first on PATH."""
    out = {k: v for k, v in os.environ.items() if not k.startswith(('ANSIBLE_', 'SPINDLE_'))}
    out['PATH'] = rs.VENV_BIN + os.pathsep + os.environ.get('PATH', '')
    out.pop('PYTHONPATH', None)
    return out


def start(pdd, ident):
    """``ansible-runner run PDD -p site.yml --ident IDENT`` started: a Popen."""
    log = open(os.path.join(pdd, 'runner.log'), 'w')
    try:
        return subprocess.Popen(
            [RUNNER, 'run', pdd, '-p', 'site.yml', '--ident', ident],
            cwd=pdd,
            env=runner_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    finally:
        log.close()


class Job(object):
    """A finished runner job: status, rc, events, the spindle paths counts, wall time."""

    def __init__(self, pdd, ident, rc, wall):
        self.pdd, self.ident, self.runner_rc, self.wall = pdd, ident, rc, wall
        art = os.path.join(pdd, 'artifacts', ident)
        self.status = _read(os.path.join(art, 'status'))
        self.rc = _read(os.path.join(art, 'rc'))
        self.stdout = _read(os.path.join(art, 'stdout')) or ''
        self.log = _read(os.path.join(pdd, 'runner.log')) or ''
        self.events = load_events(art)
        self.paths = rs.paths(pdd)

    def describe(self):
        return '%s: runner rc %s, status %s, rc %s, %.1f s\n--- runner output:\n%s\n--- stdout:\n%s' % (
            self.ident,
            self.runner_rc,
            self.status,
            self.rc,
            self.wall,
            self.log[-3000:],
            self.stdout[-6000:],
        )


def run(pdd, ident):
    t0 = time.monotonic()
    p = start(pdd, ident)
    p.wait()
    return Job(pdd, ident, p.returncode, time.monotonic() - t0)


def run_concurrently(jobs):
    """[(pdd, ident)] started at once: ([Job], [(start, end)] monotonic times)."""
    procs = []
    for pdd, ident in jobs:
        procs.append((pdd, ident, time.monotonic(), start(pdd, ident)))
    out, spans = [], []
    for pdd, ident, t0, p in procs:
        p.wait()
        t1 = time.monotonic()
        out.append(Job(pdd, ident, p.returncode, t1 - t0))
        spans.append((t0, t1))
    return out, spans


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def load_events(artifacts):
    events = []
    for p in glob.glob(os.path.join(artifacts, 'job_events', '*.json')):
        with open(p) as f:
            events.append(json.load(f))
    events.sort(key=lambda e: e['counter'])
    return events


#: job event types that carry a host's result
RESULT_EVENTS = (
    'runner_on_ok',
    'runner_on_failed',
    'runner_on_skipped',
    'runner_on_unreachable',
    'runner_item_on_ok',
    'runner_item_on_failed',
    'runner_item_on_skipped',
    'runner_on_async_ok',
    'runner_on_async_failed',
)

#: event types that only carry stdout lines (display output outside any callback method)
STDOUT_ONLY = ('verbose',)


def event_blocks(events):
    """The sequence of event types with the interleaving of hosts taken out: one entry per
    playbook/play/task/handler start (its type and name), and for the events that follow it
    until the next start, their types sorted (hosts run in parallel; their order is not the
    playbook's). Timings, uuids, pids and stdout-only events are left out."""
    blocks = []
    for e in events:
        kind = e['event']
        if kind in STDOUT_ONLY:
            continue
        data = e.get('event_data', {})
        if kind.startswith('playbook_on_') and kind != 'playbook_on_stats' or not blocks:
            name = data.get('task') or data.get('play') or data.get('playbook') or ''
            blocks.append([kind, name, []])
            if kind.startswith('playbook_on_'):
                continue
        blocks[-1][2].append(kind)
    return [(kind, name, sorted(inner)) for kind, name, inner in blocks]


def results(events):
    """{(task name, host, item): outcome} of every result event: the outcome is the event's
    status with the result's changed, failed/skipped, rc, stdout (module stdout: hostname,
    id -u, echo), msg of failures, warnings, its field names and the names of facts."""
    out = {}
    for e in events:
        kind = e['event']
        if kind not in RESULT_EVENTS:
            continue
        data = e.get('event_data', {})
        res = data.get('res') or {}
        item = res.get('item') if '_item_' in kind else None
        key = (data.get('task'), data.get('host'), json.dumps(item, sort_keys=True))
        outcome = {
            'status': kind,
            'changed': bool(res.get('changed')),
            'ignore_errors': bool(data.get('ignore_errors')),
        }
        for field in ('rc', 'stdout', 'skipped', 'failed'):
            if field in res:
                outcome[field] = res[field]
        if kind.endswith('failed') or kind.endswith('unreachable'):
            outcome['msg'] = res.get('msg')
        if 'results' in res:
            outcome['items'] = len(res['results'])
        outcome['fields'] = sorted(res)  # the result's shape (its values vary: times, facts)
        outcome['warnings'] = res.get('warnings')  # e.g. interpreter discovery's
        if 'ansible_facts' in res:
            outcome['facts'] = sorted(res['ansible_facts'])
        assert key not in out, ('two results for', key)
        out[key] = outcome
    return out


def stats(events):
    """The playbook_on_stats counters per host: {counter: {host: n}}."""
    for e in events:
        if e['event'] == 'playbook_on_stats':
            data = e['event_data']
            return {
                k: data.get(k) or {}
                for k in ('ok', 'changed', 'failures', 'skipped', 'dark', 'ignored', 'rescued', 'processed')
            }
    return None


def merge_stats(many):
    out = {}
    for s in many:
        for counter, per_host in s.items():
            out.setdefault(counter, {}).update(per_host)
    return out


def bwrap_settings(fleet_inventory):
    """env/settings for ``--process-isolation`` in bubblewrap's sandbox (no container: the
    job sees /bin, /etc, /usr, /opt, its private data dir and a private /tmp; here it also
    needs, read-only, the venv and its base Python, this checkout (plugin and daemon
    binary) and the fleet's key)."""
    base = subprocess.run(
        [os.path.join(rs.VENV_BIN, 'python'), '-c', 'import sys; print(sys.base_prefix)'],
        check=True,
        stdout=subprocess.PIPE,
        universal_newlines=True,
    ).stdout.strip()
    key_dir = None
    with open(fleet_inventory) as f:
        for line in f:
            if line.startswith('ansible_ssh_private_key_file='):
                key_dir = os.path.dirname(line.split('=', 1)[1].strip())
    ro = [os.path.dirname(rs.VENV_BIN), base, rs.REPO, os.path.dirname(os.path.realpath(rs.BIN))]
    if key_dir:
        ro.append(key_dir)
    return {
        'process_isolation': True,
        'process_isolation_executable': 'bwrap',
        'process_isolation_ro_paths': ro,
    }


def bwrap_works():
    """None if bubblewrap can make a sandbox here, else why not."""
    bwrap = shutil.which('bwrap')
    if not bwrap:
        return 'no bwrap (Debian package bubblewrap; scripts/setup.sh installs it)'
    p = subprocess.run(
        [
            bwrap,
            '--die-with-parent',
            '--unshare-pid',
            '--dev-bind',
            '/dev',
            '/dev',
            '--proc',
            '/proc',
            '--ro-bind',
            '/usr',
            '/usr',
            '--symlink',
            'usr/bin',
            '/bin',
            '--symlink',
            'usr/lib',
            '/lib',
            '--symlink',
            'usr/lib64',
            '/lib64',
            '/bin/true',
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        universal_newlines=True,
    )
    if p.returncode:
        return 'bwrap cannot make a sandbox here: ' + p.stdout[-300:]
    return None
