"""bench/report_tables.py's merging of repeated runs (`bench/run --repeat N`): one record per cell and
mode, every figure the median of the runs that succeeded, the spread kept, a cell whose runs
all failed still reported as failed."""

import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'bench'))
import report  # noqa: E402


def run(mode, wall, cpu, status='ok', workload='hostname20', hosts=1, **extra):
    rec = {
        'id': '%s-%s' % (mode, wall),
        'mode': mode,
        'workload': workload,
        'hosts': hosts,
        'rtt_ms': None,
        'status': status,
        'wall_s': wall,
        'task_results': 20,
        'controller': {'cpu_s': cpu, 'orphans': ['ssh']},
    }
    rec.update(extra)
    return rec


class MergeRepeatsTest(unittest.TestCase):
    def test_one_run_per_cell_is_left_as_it_is(self):
        runs = [run('stock', 7.0, 2.0), run('spindle', 2.0, 1.5)]
        merged = report.merge_repeats(runs)
        self.assertEqual([r['wall_s'] for r in merged], [7.0, 2.0])
        self.assertTrue(all(r['repeats'] == 1 and 'spread' not in r for r in merged))
        self.assertIn('one run per cell', report.repeats_note(merged))
        self.assertEqual(report.spread_table(merged), [])

    def test_figures_are_medians_with_their_spread(self):
        runs = [
            run('spindle', 2.0, 1.5, spindle={'in_agent_share': 1.0}),
            run('spindle', 3.5, 1.9, spindle={'in_agent_share': 1.0}),
            run('spindle', 2.4, 1.6, spindle={'in_agent_share': 1.0}),
            run('stock', 7.0, 2.4),
            run('stock', 7.2, 2.3),
        ]
        by = report._by(report.merge_repeats(runs))
        sp = by[('hostname20', 1, None, 'spindle')]
        self.assertEqual(sp['wall_s'], 2.4)
        self.assertEqual(sp['controller']['cpu_s'], 1.6)
        self.assertEqual(sp['task_results'], 20)  # equal in every run: kept as it is
        self.assertEqual(sp['controller']['orphans'], ['ssh'])  # not a number: the first run's
        self.assertEqual(sp['spread']['wall_s'], [2.0, 3.5])
        self.assertEqual(sp['repeats'], 3)
        self.assertAlmostEqual(by[('hostname20', 1, None, 'stock')]['wall_s'], 7.1)
        table = '\n'.join(report.spread_table(list(by.values())))
        self.assertIn('2.00-3.50 / 1.50-1.90 (3 runs)', table)
        self.assertIn('median of up to 3 runs', report.repeats_note(list(by.values())))

    def test_failed_runs_are_left_out_and_counted(self):
        runs = [
            run('spindle', 2.0, 1.5),
            run('spindle', 99.0, 9.0, status='failed'),
            run('spindle', 3.0, 1.7),
        ]
        (m,) = report.merge_repeats(runs)
        self.assertEqual((m['wall_s'], m['repeats'], m['repeats_failed']), (2.5, 2, 1))

    def test_a_cell_whose_runs_all_failed_stays_failed(self):
        runs = [run('spindle', 1.0, 1.0, status='failed'), run('spindle', 2.0, 1.0, status='failed')]
        (m,) = report.merge_repeats(runs)
        self.assertEqual((m['status'], m['repeats'], m['repeats_failed']), ('failed', 0, 2))


if __name__ == '__main__':
    unittest.main()
