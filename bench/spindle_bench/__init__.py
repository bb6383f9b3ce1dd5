"""The bench harness behind bench/run, by part: config (paths, modes, workloads, suites),
util, fleets, controllers, links, modes, measure, runner and cli (see bench/README.md)."""
