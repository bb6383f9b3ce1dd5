#!/usr/bin/env python3
"""Conformance runner: the same playbook through stock Ansible and through spindle must give
the same results.

Brings up a netns fleet of 3 sshd targets (containers/netns-fleet.sh), then for each
strategy pair runs tests/ansible/conformance.yml twice: stock (connection ssh) and spindle,
through its two entry points: stock ``linear`` with the ``spindle`` callback enabled, and the
``spindle_free`` strategy (ansible.cfg written here), each with the ``spindle_record``
callback. ``--pipelining auto`` (the default) runs the linear pair with ANSIBLE_PIPELINING=True
and the free pair with Ansible's default (off); the spindle runs must put every module task in
an agent either way, except those the playbook takes to the stock path by design (the
JSONARGS shell module: ``EXPECTED_STOCK``; old-style, WANT_JSON and binary modules run in the
agent, and its async tasks start there).  After each run it also collects what the play left on every
target (under /tmp/spindle-conf: content, mode, type) and in the controller fetch dir, then
cleans both.  Records, files and exit codes must be equal per host, and the spindle run must
leave no daemon behind; on mismatch it prints a readable diff and exits 1.  ``--via``: the
spindle runs reach t1 and t2 through t0 (``spindle_via=t0``; t0's namespace is joined to
theirs by veth pairs), the stock runs connect directly.  ``--bastions``: 23 targets, the
spindle runs reach 20 web hosts through a gateway and two bastions (t0 -> t1, t2 -> t3..t12,
t13..t22), the stock runs connect to each directly, and the bytes the spindle run sends on
the controller -> gateway link must stay under MAX_GATEWAY_SHARE of what the hops send on to
their targets (module code and large files cross it once).  Exit 77: cannot
run here (no fleet, venv or daemon binary).

Everything lives in a work dir that is removed at the end (``--keep`` keeps it); nothing is
written to $HOME.  Ansible comes from the venv .venv, or $SPINDLE_VENV (as in
scripts/venv.sh).  ``--target-pythons P1,P2``: t0 and t1 run modules (and, through spindle, their
agents) under those interpreters, in both runs; t2 keeps interpreter discovery.  Usage:
``python3 tests/ansible/run_conformance.py [--strategy linear|free|both] [--name NAME]
[--via | --bastions] [--target-pythons P1,P2] [--keep]``.
"""

import argparse
import difflib
import functools
import glob
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
VENV = os.path.abspath(os.path.join(REPO, os.environ.get('SPINDLE_VENV') or '.venv'))
VENV_BIN = os.path.join(VENV, 'bin')
FLEET = os.path.join(REPO, 'containers', 'netns-fleet.sh')
PKG_ROOT = os.path.join(REPO, 'ansible_plugin')
PLUGINS = os.path.join(PKG_ROOT, 'spindle_ansible', 'plugins')
PLAYBOOK = os.path.join(HERE, 'conformance.yml')
TARGET_DIR = '/tmp/spindle-conf'
COUNT = 3
SKIP = 77
# --bastions: at most this share of the bytes the hops send on to their targets may cross the
# controller -> gateway link (each target behind a hop gets module code and large files
# from its hop, not from the controller).
# Measured: 0.45. Module code sent once per target instead (each target's compressed copy, ~0.35
# MB, on the gateway link) would make it ~0.56. Most of what still crosses per target is
# Ansible's own payload for tasks on the stock command path (measured when async tasks took it).
MAX_GATEWAY_SHARE = 0.5

# Run inside each target: what the play left under TARGET_DIR, as JSON.
COLLECT = (
    r'''
import json, os, stat
root = %r
out = {}
for dp, dns, fns in os.walk(root):
    for n in dns + fns:
        p = os.path.join(dp, n)
        st = os.lstat(p)
        kind = ("dir" if stat.S_ISDIR(st.st_mode) else "file" if stat.S_ISREG(st.st_mode)
                else "link" if stat.S_ISLNK(st.st_mode) else "?")
        e = {"type": kind, "mode": oct(stat.S_IMODE(st.st_mode)), "uid": st.st_uid,
             "gid": st.st_gid}
        if kind == "link":
            e["target"] = os.readlink(p)
        if kind == "file":
            with open(p, "rb") as f:
                e["content"] = f.read().decode("utf-8", "replace")
        out[os.path.relpath(p, root)] = e
print(json.dumps(out, sort_keys=True))
'''
    % TARGET_DIR
)


class Skip(Exception):
    """This machine cannot run the conformance test (exit 77)."""


def fleet(*args, check=True):
    p = subprocess.run(
        ['bash', FLEET] + [str(a) for a in args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        universal_newlines=True,
    )
    if p.returncode == SKIP:
        raise Skip('netns-fleet.sh %s: %s' % (args[0], p.stderr.strip()))
    if check and p.returncode != 0:
        raise RuntimeError(
            'netns-fleet.sh %s failed (%d): %s' % (' '.join(map(str, args)), p.returncode, p.stderr)
        )
    return p


def start_http(ips, root):
    """One quiet static server per host-side IP (each target reaches only its own)."""
    handler = functools.partial(_QuietHandler, directory=root)
    servers = {}
    for ip in ips:
        srv = http.server.ThreadingHTTPServer((ip, 0), handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers[ip] = srv
    return servers


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def host_side(ip):
    a, b, c, d = ip.split('.')
    return '%s.%s.%s.%d' % (a, b, c, int(d) - 1)


def spindle_bin():
    return os.environ.get('SPINDLE_BIN') or os.path.join(REPO, 'target', 'release', 'spindle')


def write_cfg(path, kind, strategy):
    lines = [
        '[defaults]',
        'callback_plugins = %s' % os.path.join(PLUGINS, 'callback'),
        'callbacks_enabled = spindle_record',
        'retry_files_enabled = False',
        'forks = %d' % max(5, COUNT + 1),
    ]
    if kind == 'spindle' and strategy == 'linear':
        # The callback entry point: Ansible's own linear strategy, routed by the callback.
        lines[2] = 'callbacks_enabled = spindle_record, spindle'
        lines += ['strategy = linear']
    elif kind == 'spindle':
        lines += [
            'strategy_plugins = %s' % os.path.join(PLUGINS, 'strategy'),
            'connection_plugins = %s' % os.path.join(PLUGINS, 'connection'),
            'strategy = spindle_%s' % strategy,
        ]
    else:
        lines += ['strategy = %s' % strategy]
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')


def run_env(work, cfg, record, pipelining=True):
    env = {k: v for k, v in os.environ.items() if not k.startswith(('ANSIBLE_', 'SPINDLE_'))}
    env.update(
        {
            'ANSIBLE_CONFIG': cfg,
            'ANSIBLE_HOME': os.path.join(work, 'home'),
            'ANSIBLE_LOCAL_TEMP': os.path.join(work, 'tmp'),
            'ANSIBLE_SSH_CONTROL_PATH_DIR': os.path.join(work, 'cp'),
            'ANSIBLE_NOCOLOR': '1',
            'XDG_RUNTIME_DIR': os.path.join(work, 'run'),  # where the strategy puts its daemon
            'SPINDLE_RECORD': record,
            'SPINDLE_BIN': spindle_bin(),
            # the playbook's library/ plus the binary module built for this run
            'ANSIBLE_LIBRARY': os.pathsep.join(
                [os.path.join(HERE, 'library'), os.path.join(work, 'library')]
            ),
            'PYTHONPATH': os.pathsep.join([PKG_ROOT] + [p for p in [os.environ.get('PYTHONPATH')] if p]),
            'SPINDLE_PATHS_FILE': record + '.paths',
        }
    )
    if pipelining:  # else Ansible's default (off)
        env['ANSIBLE_PIPELINING'] = 'True'
    return env


def snapshot(path):
    out = {}
    for dp, _dns, fns in os.walk(path):
        for n in fns:
            p = os.path.join(dp, n)
            with open(p, 'rb') as f:
                out[os.path.relpath(p, path)] = {
                    'mode': oct(os.stat(p).st_mode & 0o7777),
                    'content': f.read().decode('utf-8', 'replace'),
                }
    return out


def clean_state(name, fetch_dir):
    for i in range(COUNT):
        fleet('exec', name, i, 'rm', '-rf', TARGET_DIR)
    shutil.rmtree(fetch_dir, ignore_errors=True)
    os.makedirs(fetch_dir)


BINARY_MODULE_C = r"""
/* A binary Ansible module: argv[1] is a file holding the arguments as JSON. */
#include <stdio.h>
#include <sys/stat.h>
int main(int argc, char **argv) {
    struct stat st;
    long n = 0;
    int c;
    FILE *f = argc > 1 ? fopen(argv[1], "r") : NULL;
    if (!f || fstat(fileno(f), &st) != 0) {
        printf("{\"failed\": true, \"msg\": \"no args file\"}\n");
        return 1;
    }
    while ((c = fgetc(f)) != EOF) n += (c == '{');
    printf("{\"changed\": false, \"msg\": \"binary: %ld objects, mode %o\"}\n", n, (unsigned)(st.st_mode & 0777));
    return 0;
}
"""


def build_binary_module(work):
    """Compile library/spx_binary for this run (cc on the controller; the targets share its
    filesystem and libc). Returns False when there is no C compiler."""
    cc = shutil.which('cc') or shutil.which('gcc')
    lib = os.path.join(work, 'library')
    os.makedirs(lib, exist_ok=True)
    if not cc:
        return False
    src = os.path.join(work, 'spx_binary.c')
    with open(src, 'w') as f:
        f.write(BINARY_MODULE_C)
    return subprocess.run([cc, '-O1', '-o', os.path.join(lib, 'spx_binary'), src]).returncode == 0


def link(name, a, a_ip, b, b_ip):
    """A veth pair between fleet targets a and b with host routes to each other's address."""
    na, nb = 'sp-%s-%d' % (name, a), 'sp-%s-%d' % (name, b)
    ia, ib = 'vv%dx%d' % (a, b), 'vv%dx%d' % (b, a)
    for cmd in (
        ['link', 'add', ia, 'netns', na, 'type', 'veth', 'peer', 'name', ib, 'netns', nb],
        ['-n', na, 'link', 'set', ia, 'up'],
        ['-n', nb, 'link', 'set', ib, 'up'],
        ['-n', na, 'route', 'add', b_ip + '/32', 'dev', ia],
        ['-n', nb, 'route', 'add', a_ip + '/32', 'dev', ib],
    ):
        subprocess.run(['ip'] + cmd, check=True)


def tx_bytes(ns, dev):
    """Bytes sent out of interface `dev` (in namespace `ns`, or the host's when None)."""
    if ns is None:
        path = '/sys/class/net/%s/statistics/tx_bytes' % dev
        with open(path) as f:
            return int(f.read())
    out = subprocess.run(
        ['ip', '-n', ns, '-s', '-j', 'link', 'show', 'dev', dev],
        check=True,
        stdout=subprocess.PIPE,
        universal_newlines=True,
    ).stdout
    return int(json.loads(out)[0]['stats64']['tx']['bytes'])


def link_bytes(name, hops):
    """Bytes sent so far on the controller -> gateway link and on every hop -> target link."""
    down = sum(tx_bytes('sp-%s-%d' % (name, hop), 'vv%dx%d' % (hop, i)) for i, hop in hops.items())
    return tx_bytes(None, 'sp%sh0' % name), down


def one_run(name, work, kind, strategy, inventories, extra, pipelining=True):
    tag = '%s-%s' % (kind, strategy)
    cfg = os.path.join(work, tag + '.cfg')
    record = os.path.join(work, tag + '.json')
    write_cfg(cfg, kind, strategy)
    clean_state(name, os.path.join(work, 'fetched'))
    os.makedirs(os.path.join(work, 'run'), mode=0o700, exist_ok=True)
    argv = [os.path.join(VENV_BIN, 'ansible-playbook'), PLAYBOOK, '-e', '@' + extra]
    for inv in inventories:
        argv += ['-i', inv]
    t0 = time.monotonic()
    p = subprocess.run(
        argv,
        env=run_env(work, cfg, record, pipelining),
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        universal_newlines=True,
    )
    took = time.monotonic() - t0
    with open(os.path.join(work, tag + '.log'), 'w') as f:
        f.write(p.stdout)
    if not os.path.exists(record):
        raise RuntimeError(
            '%s: no record written (rc %d); output:\n%s' % (tag, p.returncode, p.stdout[-4000:])
        )
    with open(record) as f:
        records = json.load(f)
    files = {}
    for i in range(COUNT):
        out = fleet('exec', name, i, 'python3', '-c', COLLECT).stdout
        files['t%d' % i] = json.loads(out)
    print('  %-16s rc=%d  %.1fs  %d records' % (tag, p.returncode, took, len(records)))
    paths = None
    if os.path.exists(record + '.paths'):
        with open(record + '.paths') as f:
            paths = json.load(f)
        print(
            '  %-16s module runs: %d in the agent, %d forked, %d stock %s'
            % (
                '',
                paths['in_agent'],
                paths['forked'],
                paths['stock'],
                json.dumps(paths['stock_reasons'], sort_keys=True),
            )
        )
    return {
        'paths': paths,
        'rc': p.returncode,
        'records': records,
        'files': files,
        'fetched': snapshot(os.path.join(work, 'fetched')),
        'log': p.stdout,
        'left_behind': left_behind(work, cfg, record, pipelining) if kind == 'spindle' else [],
    }


def left_behind(work, cfg, record, pipelining):
    """What the run's daemon left in $XDG_RUNTIME_DIR: the persistent daemon (it outlives the
    run by design, SPINDLE_PERSIST) must be the only one, and go with everything of its own
    when stopped (``python -m spindle_ansible --stop``); nothing else may remain."""
    run = os.path.join(work, 'run')
    mine = 'spindle-%d' % os.getuid()
    left = [n for n in sorted(os.listdir(run)) if n != mine]
    socks = glob.glob(os.path.join(run, mine, '*', 'sock'))
    if len(socks) != 1:
        left.append('%d persistent daemon sockets (expected 1): %s' % (len(socks), socks))
    p = subprocess.run(
        [os.path.join(VENV_BIN, 'python'), '-m', 'spindle_ansible', '--stop'],
        env=run_env(work, cfg, record, pipelining),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        universal_newlines=True,
    )
    if 'stopped %d persistent' % len(socks) not in p.stdout:
        left.append('--stop: %s' % p.stdout.strip())
    deadline = time.monotonic() + 10
    while glob.glob(os.path.join(run, mine, '*', 'sock')) and time.monotonic() < deadline:
        time.sleep(0.1)
    left += glob.glob(os.path.join(run, mine, '*', 'sock'))
    return left


def by_host(records):
    out = {}
    for r in records:
        out.setdefault(r['host'], []).append(r)
    return out


def _udiff(a, b):
    dump = functools.partial(json.dumps, indent=1, sort_keys=True)
    lines = difflib.unified_diff(
        dump(a).splitlines(), dump(b).splitlines(), 'stock', 'spindle', lineterm='', n=2
    )
    return '\n'.join(lines)


def compare(stock, spindle):
    """Readable differences between two runs (empty list: equal)."""
    problems = []
    if stock['rc'] != spindle['rc']:
        problems.append('exit code: stock %d, spindle %d' % (stock['rc'], spindle['rc']))
    a, b = by_host(stock['records']), by_host(spindle['records'])
    for host in sorted(set(a) | set(b)):
        ra, rb = a.get(host, []), b.get(host, [])
        for i in range(max(len(ra), len(rb))):
            x = ra[i] if i < len(ra) else None
            y = rb[i] if i < len(rb) else None
            if x != y:
                label = (x or y).get('task')
                problems.append('host %s, result #%d (task %r):\n%s' % (host, i, label, _udiff(x, y)))
                break  # later results of this host usually follow from the first difference
    if spindle['left_behind']:
        problems.append(
            'the spindle daemon was not cleaned up at exit: %s left in $XDG_RUNTIME_DIR'
            % ', '.join(spindle['left_behind'])
        )
    for what in ('files', 'fetched'):
        if stock[what] != spindle[what]:
            problems.append('%s differ:\n%s' % (what, _udiff(stock[what], spindle[what])))
    return problems


#: The conformance playbook's module tasks that take Ansible's stock command path, by design
#: (the JSONARGS shell module: a non-Python module piped to its interpreter). Its old-style,
#: WANT_JSON and binary modules run in the agent (one call each), and its async tasks
#: (command, shell) start in the agent: any other reason is unexpected.
EXPECTED_STOCK = ('non-Python module',)
#: ansible-core 2.18 does not pipeline su tasks: its module (the playbook's su task) runs from a
#: file on the stock path, and says so (2.19+ asks the connection, and they run in the agent).
EXPECTED_STOCK_218 = ('Ansible does not pipeline this task (ansible-core 2.18 with su)',)


def core_version():
    """The venv's ansible-core ``major.minor``."""
    out = subprocess.run(
        [os.path.join(VENV_BIN, 'python'), '-c', 'import ansible.release as r; print(r.__version__)'],
        stdout=subprocess.PIPE,
        universal_newlines=True,
    ).stdout
    return '.'.join(out.strip().split('.')[:2])


def unexpected_stock(paths, target_pythons=(), core=None):
    """Stock-path reasons the conformance playbook should not produce (every other module
    task runs in an agent, whatever pipelining says and whatever the interpreter).

    With ``--target-pythons`` (interpreters under root's 0700 home), the task that becomes
    ``nobody`` with su cannot run them: stock fails at "Permission denied", and spindle, whose
    nested agent for nobody runs the system's python3, takes the stock path to fail the same
    way (the results are compared as every other); one such task per host is expected."""
    if paths is None:
        return ['the spindle run wrote no module path counts (SPINDLE_PATHS_FILE)']
    expected = EXPECTED_STOCK + tuple('interpreter %s is not the agent' % p for p in target_pythons)
    if core == '2.18':
        expected += EXPECTED_STOCK_218
    bad = dict((r, n) for r, n in paths['stock_reasons'].items() if not r.startswith(expected))
    for p in target_pythons:
        for r, n in paths['stock_reasons'].items():
            if r.startswith('interpreter %s is not the agent' % p) and n > 1:
                bad[r] = n
    if bad:
        return ['module tasks on the stock path for unexpected reasons: %s' % bad]
    if not paths['in_agent']:
        return ['no module task ran in the agent']
    return []


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--strategy', choices=('linear', 'free', 'both'), default='both')
    ap.add_argument(
        '--pipelining',
        choices=('on', 'off', 'auto'),
        default='auto',
        help="ANSIBLE_PIPELINING for both runs; auto: on for linear, Ansible's default (off) for free",
    )
    ap.add_argument('--name', default='acnf', help='fleet name ([a-z0-9]{1,5})')
    ap.add_argument(
        '--target-pythons',
        metavar='P1[,P2]',
        help='ansible_python_interpreter of t0 (and t1) in both runs (t2 keeps discovery): '
        'the agent and modules on those Pythons',
    )
    ap.add_argument('--keep', action='store_true', help='keep the work dir (logs, records)')
    ap.add_argument('--via', action='store_true', help='spindle reaches t1, t2 through t0')
    ap.add_argument(
        '--bastions',
        action='store_true',
        help='23 targets: spindle reaches t3..t22 through t0 and bastions t1, t2',
    )
    args = ap.parse_args(argv)
    global COUNT
    if args.bastions:
        COUNT = 23

    if not os.access(os.path.join(VENV_BIN, 'ansible-playbook'), os.X_OK):
        print('SKIP: no venv with ansible-core at %s (run scripts/venv.sh)' % VENV_BIN)
        return SKIP
    binary = spindle_bin()
    if not os.access(binary, os.X_OK):
        print('SKIP: no spindle daemon binary at %s (cargo build --release)' % binary)
        return SKIP

    strategies = ['linear', 'free'] if args.strategy == 'both' else [args.strategy]
    work = tempfile.mkdtemp(prefix='spc-')
    servers = {}
    failed = False
    try:
        try:
            inventory = fleet('up', args.name, COUNT).stdout.strip().splitlines()[-1]
        except Skip as e:
            print('SKIP: %s' % e)
            return SKIP
        with open(os.path.join(os.path.dirname(inventory), 'hosts.txt')) as f:
            ips = f.read().split()
        www = os.path.join(work, 'www')
        os.makedirs(www)
        with open(os.path.join(www, 'payload.txt'), 'w') as f:
            f.write('payload served over http\n')
        servers = start_http([host_side(ip) for ip in ips], www)
        urls = {}
        for i, ip in enumerate(ips):
            gw = host_side(ip)
            urls['t%d' % i] = 'http://%s:%d/payload.txt' % (gw, servers[gw].server_address[1])
        extra = os.path.join(work, 'extra.json')
        have_binary = build_binary_module(work)
        if not have_binary:
            print('note: no C compiler here: the binary module task is skipped in both runs')
        with open(extra, 'w') as f:
            json.dump(
                {'fetch_dir': os.path.join(work, 'fetched'), 'http_urls': urls, 'binary_module': have_binary},
                f,
            )
        # Hosts that cannot be served, which both runs must report alike: one that refuses
        # connections and one whose name does not resolve (UNREACHABLE), and one whose
        # ansible_connection names no plugin (FAILED: spindle must not turn it into ssh).
        dead = os.path.join(work, 'dead.ini')
        with open(dead, 'w') as f:
            f.write(
                '[fleet]\ntdead ansible_host=%s ansible_port=1\n'
                'tnoname ansible_host=no-such-host.invalid\n'
                'tnoconn ansible_connection=no_such_connection\n' % ips[0]
            )
        inventories = [inventory, dead]
        if args.target_pythons:
            pythons = os.path.join(work, 'pythons.ini')
            with open(pythons, 'w') as f:
                f.write('[fleet]\n')
                for i, py in enumerate(args.target_pythons.split(',')[: COUNT - 1]):
                    f.write('t%d ansible_python_interpreter=%s\n' % (i, py))
            inventories.append(pythons)
            print('target Pythons: %s (t2: discovered)' % args.target_pythons)
        spindle_inventories = inventories
        if args.via:
            for i in range(1, COUNT):
                link(args.name, 0, ips[0], i, ips[i])
            via = os.path.join(work, 'via.ini')
            with open(via, 'w') as f:
                f.write('[fleet]\n' + ''.join('t%d spindle_via=t0\n' % i for i in range(1, COUNT)))
            spindle_inventories = inventories + [via]
        hops = {}
        if args.bastions:  # gateway t0 -> bastions t1, t2 -> 10 web hosts each
            hops = dict((i, 0) for i in (1, 2))
            hops.update((i, 1 if i < 13 else 2) for i in range(3, COUNT))
            for i, hop in sorted(hops.items()):
                link(args.name, hop, ips[hop], i, ips[i])
            via = os.path.join(work, 'via.ini')
            with open(via, 'w') as f:
                f.write('[fleet]\n' + ''.join('t%d spindle_via=t%d\n' % kv for kv in sorted(hops.items())))
            spindle_inventories = inventories + [via]

        for strategy in strategies:
            pipelining = {'on': True, 'off': False}.get(args.pipelining, strategy == 'linear')
            print(
                'strategy %s vs %s, pipelining %s:'
                % (
                    strategy,
                    'linear + callback spindle' if strategy == 'linear' else 'spindle_' + strategy,
                    'on' if pipelining else "off (Ansible's default)",
                )
            )
            stock = one_run(args.name, work, 'stock', strategy, inventories, extra, pipelining)
            before = link_bytes(args.name, hops) if args.bastions else None
            spin = one_run(args.name, work, 'spindle', strategy, spindle_inventories, extra, pipelining)
            if before:
                # What the hops pass on to the 22 targets behind them against what crossed
                # the gateway's own link: module code and large files cross it once.
                gw, down = [b - a for a, b in zip(before, link_bytes(args.name, hops))]
                print(
                    '  bytes sent: controller -> gateway %d, hops -> their targets %d '
                    '(%.2f)' % (gw, down, gw / float(down or 1))
                )
                if gw > down * MAX_GATEWAY_SHARE:
                    failed = True
                    print(
                        'MISMATCH: over %.2f of the hops\' bytes crossed the gateway link' % MAX_GATEWAY_SHARE
                    )
            problems = compare(stock, spin)
            pythons = args.target_pythons.split(',')[: COUNT - 1] if args.target_pythons else []
            problems += unexpected_stock(spin['paths'], pythons, core_version())
            if problems:
                failed = True
                print('MISMATCH (%d):' % len(problems))
                for p in problems:
                    print('- ' + p)
            else:
                hosts = by_host(stock['records'])
                print(
                    '  equal: %d hosts, %s results, files and fetched files identical'
                    % (len(hosts), '/'.join(str(len(v)) for _, v in sorted(hosts.items())))
                )
        if failed and args.keep:
            print('work dir kept: %s' % work)
        return 1 if failed else 0
    finally:
        for srv in servers.values():
            srv.shutdown()
            srv.server_close()
        fleet('down', args.name, check=False)
        if args.keep:
            print('work dir: %s' % work)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    sys.exit(main())
