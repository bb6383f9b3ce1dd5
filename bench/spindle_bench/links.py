"""Link emulation for the RTT cells: bench/linkemu.py started as a TCP proxy per target (no netem in this kernel)."""

import json
import os
import subprocess

from spindle_bench.config import BENCH

# ------------------------------------------------------------------------------ link emulation


class LinkEmu(object):
    """bench/linkemu.py in front of every target: 127.0.0.1:port_i -> target_i:22."""

    def __init__(self, fleet, rtt_ms, rate_mbit, workdir, ctl):
        self.fleet = fleet
        self.rtt_ms = rtt_ms
        self.rate_mbit = rate_mbit
        self.workdir = workdir
        self.ctl = ctl  # runs where the controller runs: its 127.0.0.1 is the controller's
        self.proc = None
        self.pidfile = os.path.join(workdir, 'linkemu-%d.pid' % rtt_ms)

    def start(self):
        ups = (
            [('127.0.0.1', p) for p in self.fleet.ports]
            if self.fleet.kind == 'compose'
            else [(ip, 22) for ip in self.fleet.ips]
        )
        mapfile = os.path.join(self.workdir, 'linkemu-%d.map' % self.rtt_ms)
        with open(mapfile, 'w') as f:
            for host, port in ups:
                f.write('127.0.0.1:0 %s:%d\n' % (host, port))
        self.stats_path = os.path.join(self.workdir, 'linkemu-%d.stats.json' % self.rtt_ms)
        argv = [
            self.ctl.tool_python,
            os.path.join(BENCH, 'linkemu.py'),
            '--map-file',
            mapfile,
            '--rtt-ms',
            str(self.rtt_ms),
            '--stats',
            self.stats_path,
        ]
        if self.rate_mbit:
            argv += ['--rate-mbit', str(self.rate_mbit)]
        self.proc = self.ctl.popen(argv, self.pidfile, stdout=subprocess.PIPE, universal_newlines=True)
        self.ports = []
        for line in self.proc.stdout:
            if line.startswith('LISTEN'):
                self.ports.append(int(line.split()[2].rsplit(':', 1)[1]))
            elif line.startswith('READY'):
                break
        if len(self.ports) != len(ups):
            raise RuntimeError('linkemu did not start')
        # an inventory that goes through the proxy, and known_hosts for [127.0.0.1]:port
        known = os.path.join(self.workdir, 'known_hosts-rtt%d' % self.rtt_ms)
        hk = self.fleet.host_key()
        with open(known, 'w') as f:
            for port in self.ports:
                if hk:
                    f.write('[127.0.0.1]:%d %s\n' % (port, hk))
        self.inventory = os.path.join(self.workdir, 'inventory-rtt%d.ini' % self.rtt_ms)
        with open(self.inventory, 'w') as f:
            f.write('[fleet]\n')
            for i, port in enumerate(self.ports):
                f.write('t%d ansible_host=127.0.0.1 ansible_port=%d ansible_user=root\n' % (i, port))
            f.write('\n[fleet:vars]\nansible_ssh_private_key_file=%s\n' % self.fleet.key_file())
            if hk:
                f.write(
                    "ansible_ssh_common_args='-o UserKnownHostsFile=%s -o StrictHostKeyChecking=yes "
                    "-o GlobalKnownHostsFile=/dev/null'\n" % known
                )
            else:
                f.write(
                    "ansible_ssh_common_args='-o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no'\n"
                )
            f.write('ansible_python_interpreter=/usr/bin/python3\n')
        return self.inventory

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.ctl.terminate(self.proc, self.pidfile)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        try:
            with open(self.stats_path) as f:
                return json.load(f)
        except (OSError, ValueError, AttributeError):
            return None
