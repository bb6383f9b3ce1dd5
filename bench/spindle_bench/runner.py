"""One ansible-playbook run of a mode on a cell, and its record (results JSON per run)."""

import datetime
import json
import os
import shutil

from spindle_bench.config import BENCH, FLOOR_BOOKS, PLAYBOOKS, WORKLOADS
from spindle_bench.measure import PYSPY, PYSPY_RATE, copy_rate, phases
from spindle_bench.util import percentile, tail


class Runner(object):
    def __init__(self, args, out, progress, ctl, tmp):
        self.args = args
        self.out = out
        self.progress = progress
        self.ctl = ctl
        self.runs = []
        self.seq = 0
        self.known_children = set()  # our own long-lived children (linkemu)
        self.line_rates = {}  # hosts -> raw ssh line rate of the bigcopy file
        self.me = os.getpid()
        self.tmp = tmp  # short: ssh ControlPath must fit 108 bytes; the controller container sees it
        self.extra = {}

    # -- a run --------------------------------------------------------------------------------
    def run(
        self,
        mode,
        workload,
        fleet,
        inventory,
        hosts,
        rtt,
        link_info,
        forks,
        playbook=None,
        label_extra='',
        record=True,
        reap=True,
    ):
        """One ansible-playbook run. ``reap=False`` keeps what it leaves running (a warm
        series: the next run may use it; its CPU is then not in this run's figures)."""
        self.seq += 1
        idx = self.seq
        wl_book, wl_extra = WORKLOADS.get(workload, (playbook, {}))
        if mode.name == 'floor':
            wl_book = FLOOR_BOOKS[workload]
        book = os.path.join(PLAYBOOKS, playbook or wl_book)
        link = 'direct' if rtt is None else 'rtt%d' % rtt
        rid = '%03d-%s-%s-h%d-%s' % (idx, mode.name, workload, hosts, link)
        logs = os.path.join(self.out, 'logs')
        os.makedirs(logs, exist_ok=True)
        log_path = os.path.join(logs, rid + '.log')
        timer_out = os.path.join(logs, rid + '.timer.json')
        fetch_dir = os.path.join(self.tmp, 'fetch-%03d' % idx)
        cp_dir = os.path.join(self.tmp, 'cp%03d' % idx)
        os.makedirs(cp_dir, exist_ok=True)
        env = self._env(mode, forks, cp_dir, timer_out)
        argv = [
            mode.playbook_bin,
            '-i',
            inventory,
            book,
            '-e',
            '@' + self._extra_file(idx, fetch_dir, wl_extra),
        ]
        profile = None
        if workload.endswith('-pyspy'):
            profile = os.path.join(logs, rid + '.pyspy.txt')
            pyspy = [PYSPY, 'record', '--subprocesses', '--nonblocking', '--rate', str(PYSPY_RATE)]
            argv = pyspy + ['--format', 'raw', '-o', profile, '--'] + argv
        label = '%-12s %-11s hosts=%-3d %-7s%s' % (mode.name, workload, hosts, link, label_extra)
        if record:
            self.progress.start(label)

        measure = self.args.fleet_measure
        fleet.settle()
        before = _fleet_snapshot(fleet, measure, record)
        load0 = [round(x, 2) for x in os.getloadavg()]
        res = self.ctl.execute(
            argv,
            env,
            PLAYBOOKS,
            log_path,
            self.args.run_timeout,
            reap=reap,
            keep=self.known_children,
            cgroup_name='spbench-%d-c%03d' % (os.getpid(), idx),
            tick=self.progress.tick if record else None,
        )
        settle_s = fleet.settle()
        after = _fleet_snapshot(fleet, measure, record)
        shutil.rmtree(fetch_dir, ignore_errors=True)
        shutil.rmtree(cp_dir, ignore_errors=True)
        timer = _read_json(timer_out)
        if not record:
            ok = bool(timer and timer.get('records'))
            return res['rc'] == 0 and ok and not res['timed_out'], log_path

        rec = self._base_record(
            rid, mode, workload, book, fleet, hosts, rtt, link_info, forks, res, reap, log_path
        )
        rec['loadavg_before'] = load0
        if measure:
            rec.update(_target_fields(before, after, settle_s))
        if timer:
            self._timer_fields(rec, timer, workload, hosts, profile)
        if rec.get('wire') and rec.get('task_results'):
            rec['wire']['bytes_per_task'] = round(rec['wire']['bytes_total'] / rec['task_results'], 1)
        if res.get('cpu_container_cgroup_s') is not None:
            rec['controller']['cpu_container_cgroup_s'] = round(res['cpu_container_cgroup_s'], 3)
        return self._finish(rec, res, timer, log_path)

    # -- the parts of a run -------------------------------------------------------------------
    def _env(self, mode, forks, cp_dir, timer_out):
        """The run's environment: Ansible settings common to every mode, then the mode's."""
        cfg = os.path.join(self.tmp, 'ansible.cfg')
        if not os.path.exists(cfg):
            with open(cfg, 'w') as f:
                f.write('[defaults]\n# bench/run: settings come from the environment\n')
        cb_dirs = [os.path.join(BENCH, 'callback_plugins')]
        env = {
            'ANSIBLE_CONFIG': cfg,
            'ANSIBLE_FORKS': str(forks),
            'ANSIBLE_CALLBACKS_ENABLED': 'bench_timer',
            'ANSIBLE_SSH_CONTROL_PATH_DIR': cp_dir,
            'ANSIBLE_LOCAL_TEMP': os.path.join(self.tmp, 'local'),
            'ANSIBLE_RETRY_FILES_ENABLED': 'False',
            'ANSIBLE_NOCOLOR': '1',
            'ANSIBLE_FORCE_COLOR': '0',
            'ANSIBLE_DEPRECATION_WARNINGS': 'False',
            'ANSIBLE_TIMEOUT': '30',
            'BENCH_TIMER_OUT': timer_out,
        }
        env.update(mode.env)
        if 'ANSIBLE_CALLBACK_PLUGINS' in mode.env:
            cb_dirs.append(mode.env['ANSIBLE_CALLBACK_PLUGINS'])
        env['ANSIBLE_CALLBACK_PLUGINS'] = os.pathsep.join(cb_dirs)
        return env

    def _extra_file(self, idx, fetch_dir, wl_extra):
        """The run's extra vars file (the workload's payload paths, the fetch directory)."""
        extra = dict(self.extra, bench_fetch_dir=fetch_dir)
        extra.update({k: self.payloads[v] for k, v in wl_extra.items()})
        extra_file = os.path.join(self.tmp, 'extra-%03d.json' % idx)
        with open(extra_file, 'w') as f:
            json.dump(extra, f)
        return extra_file

    def _base_record(
        self, rid, mode, workload, book, fleet, hosts, rtt, link_info, forks, res, reap, log_path
    ):
        """What every run's record has: the cell, the exit and the controller's figures."""
        o_user, o_sys, o_rss, o_names = res['o_user'], res['o_sys'], res['o_rss'], res['o_names']
        ctl_cg = res['cpu_cgroup_s']
        return {
            'id': rid,
            'mode': mode.name,
            'workload': workload,
            'playbook': os.path.basename(book),
            'hosts': hosts,
            'rtt_ms': rtt,
            'link': link_info,
            'forks': forks,
            'fleet': fleet.kind,
            'controller_kind': self.ctl.kind,
            'rc': res['rc'],
            'timed_out': res['timed_out'],
            'wall_s': round(res['wall_s'], 3),
            'controller': {
                'cpu_user_s': round(res['ru_utime'] + o_user, 3),
                'cpu_sys_s': round(res['ru_stime'] + o_sys, 3),
                'cpu_s': round(res['ru_utime'] + res['ru_stime'] + o_user + o_sys, 3),
                'orphans_cpu_s': round(o_user + o_sys, 3),
                'kept_running': not reap,
                'orphans': sorted(set(o_names)),
                'peak_rss_max_process_kb': max(res['ru_maxrss'], o_rss),
                'peak_rss_tree_kb': res['peak_rss_tree_kb'],
                'cpu_cgroup_s': None if ctl_cg is None else round(ctl_cg, 3),
            },
            'log': os.path.relpath(log_path, self.out),
            'started': datetime.datetime.now().isoformat(timespec='seconds'),
        }

    def _timer_fields(self, rec, timer, workload, hosts, profile):
        """What the bench_timer callback saw: per-task latency, the recap, the profile's
        phases, bigcopy's throughput and spindle's daemon counters."""
        recs = [r for r in timer['records'] if r['status'] != 'skipped']
        lat = sorted((r['end'] - r['start']) * 1000.0 for r in recs)
        rec['latency_ms'] = {
            'n': len(lat),
            'p50': percentile(lat, 50),
            'p90': percentile(lat, 90),
            'p99': percentile(lat, 99),
            'max': lat[-1] if lat else None,
            'mean': sum(lat) / len(lat) if lat else None,
            'start_source': sorted(set(r['start_source'] for r in recs)),
        }
        rec['task_results'] = len(recs)
        rec['tasks_per_host'] = len(recs) / float(hosts) if hosts else None
        rec['skipped_results'] = len(timer['records']) - len(recs)
        rec['recap'] = {
            k: sum(v.get(k, 0) for v in timer['recap'].values())
            for k in ('ok', 'changed', 'failures', 'unreachable', 'skipped')
        }
        rec['strategy'] = timer.get('strategy')
        if profile and os.path.exists(profile):
            rec['profile'] = phases(profile, len(recs))
            rec['profile']['raw'] = os.path.relpath(profile, self.out)
        if workload == 'bigcopy':
            cr = copy_rate(timer, hosts, os.path.getsize(self.payloads['big']))
            if cr:
                lr = self.line_rates.get(hosts)
                if lr:
                    cr['line_MiB_per_s'] = lr['MiB_per_s']
                    cr['fraction_of_line_rate'] = round(cr['MiB_per_s'] / lr['MiB_per_s'], 3)
                rec['bigcopy'] = cr
        if 'spindle_stats' in timer:
            rec['spindle'] = _spindle_fields(timer, len(recs))

    def _finish(self, rec, res, timer, log_path):
        """Status, the record written to runs/, the progress line."""
        ok = res['rc'] == 0 and not res['timed_out'] and timer is not None
        rec['status'] = 'ok' if ok else 'failed'
        if not ok:
            rec['error'] = tail(log_path)
        path = os.path.join(self.out, 'runs', rec['id'] + '.json')
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'w') as f:
            json.dump(rec, f, indent=1, sort_keys=True)
        self.runs.append(rec)
        if ok:
            summ = '%.1fs  cpu %.1fs' % (rec['wall_s'], rec['controller']['cpu_s'])
            if rec.get('latency_ms', {}).get('p50') is not None:
                summ += '  p50 %.0fms' % rec['latency_ms']['p50']
        else:
            summ = 'FAILED (rc %s%s) see %s' % (
                res['rc'],
                ', timeout' if res['timed_out'] else '',
                rec['log'],
            )
        self.progress.end(summ)
        return rec


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _fleet_snapshot(fleet, measure, record):
    """The fleet's counters around a run (None where not measured)."""
    if not measure:
        return {'cpu': None, 'cgroup': None, 'wire': None, 'files': None}
    return {
        'cpu': fleet.target_cpu()[0],
        'cgroup': fleet.target_cpu_cgroup(),
        'wire': fleet.wire(),
        'files': fleet.files() if record else None,
    }


def _target_fields(before, after, settle_s):
    """The record's ``targets`` and ``wire``: the fleet's CPU, bytes and files of the run."""
    to = after['wire'][0] - before['wire'][0]
    frm = after['wire'][1] - before['wire'][1]
    proc_s = round(after['cpu'] - before['cpu'], 3)
    tcg0, tcg1 = before['cgroup'], after['cgroup']
    cg_s = None if tcg0 is None or tcg1 is None else round(tcg1 - tcg0, 3)
    targets = {
        'cpu_s': cg_s if cg_s is not None else proc_s,
        'cpu_method': 'cgroup' if cg_s is not None else 'proc',
        'cpu_proc_s': proc_s,
        'cpu_cgroup_s': cg_s,
        'settled_s': settle_s,
    }
    if before['files'] is not None and after['files'] is not None:
        left = created = 0
        for i, files in after['files'].items():
            for d, (n1, ino1) in files.items():
                n0, ino0 = before['files'].get(i, {}).get(d, (n1, ino1))
                left += n1 - n0
                created += max(0, ino1 - ino0 - 1)
        targets['files_left'] = left
        targets['inodes_created'] = created
    return {
        'targets': targets,
        'wire': {'bytes_to_targets': to, 'bytes_from_targets': frm, 'bytes_total': to + frm},
    }


def _spindle_fields(timer, tasks):
    """The record's ``spindle``: the daemon's counters and module paths at the run's end."""
    st = timer['spindle_stats'] or {}
    c = st.get('counters', {})
    sp = {'stats': st}
    if c:
        sp['calls'] = c.get('calls')
        sp['frames_out'] = c.get('frames_out')
        sp['frames_in'] = c.get('frames_in')
        sp['connects'] = c.get('connects')
        sp['round_trips_per_task'] = round(c.get('calls', 0) / max(1, tasks), 3)
    paths = st.get('paths')
    if isinstance(paths, dict):
        # Where the module runs went (ARCHITECTURE rule 9): the daemon counts in-agent and
        # forked runs, and the stock-path runs the plugin reported.
        runs_n = sum(int(paths.get(k) or 0) for k in ('in_agent', 'forked', 'stock'))
        sp['paths'] = paths
        sp['in_agent_share'] = round((runs_n - int(paths.get('stock') or 0)) / runs_n, 4) if runs_n else None
        sp['frames_per_task'] = round((c.get('frames_out', 0) + c.get('frames_in', 0)) / max(1, tasks), 3)
    ds = timer.get('spindle_daemons') or []
    if ds:
        sp['daemon_pid'] = ds[0]['pid']
        sp['daemon_cpu_s_at_end'] = round(sum(d['cpu_s'] for d in ds), 3)
        sp['daemon_peak_rss_kb'] = max(d['vmhwm_kb'] or 0 for d in ds)
        sp['daemon_cpu_accounted'] = (
            'child of ansible-playbook, waited at its exit: included in controller cpu_s'
        )
    return sp
