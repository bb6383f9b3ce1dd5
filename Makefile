# spindle — the two commands of the README are `make demo` and `make test`.
# Both install what they need first (system packages, Rust build, Python venv).

CARGO ?= cargo
PY ?= python3

.PHONY: demo test setup venv wheel ee build build-debug lint unit-python test-rust test-ansible test-matrix test-matrix-ends test-scale test-bench test-bench-podman bench clean

setup:
	bash scripts/setup.sh

venv: setup
	bash scripts/venv.sh

## wheel: target/wheels/spindle_ansible-*.whl, the plugins and the spindle binary (venv.sh
## builds it with maturin and installs it into .venv)
wheel: venv

build:
	$(CARGO) build --release

## ee: spindle's execution environment image localhost/spindle-ee:latest (containers/ee/:
## ansible-builder 3 + podman, base image from Debian packages; as root; cached)
ee: venv
	SPINDLE_VENV=$(CURDIR)/.venv bash containers/ee/build-ee.sh

## demo: one playbook on a 10-target local sshd fleet: stock Ansible (defaults, and pipelining on) vs Ansible through spindle (README lines only), plus the debug floor
demo: venv build
	bash scripts/demo.sh

# Rust: rustfmt and clippy. Python (every file: plugin, agent, bench, scale-tests, tests): ruff's
# lint and format check, ruff.toml (the agent against Python 3.8, the oldest target Python).
lint: venv
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	.venv/bin/ruff check .
	python3 tests/python/agent_source.py | .venv/bin/ruff check --stdin-filename src/agent/agent.py -
	python3 tests/python/agent_source.py --modrun | .venv/bin/ruff check --stdin-filename src/agent/modrun.py -
	.venv/bin/ruff format --check .

# The agent's tests also on the oldest and newest target Python here (pyenv's 3.8 and 3.13,
# when installed: the agent must run on every Python ansible-core supports on targets).
# The plugin's tests run under the venv's Python: the plugin imports ansible-core.
unit-python: venv
	$(PY) -m unittest discover -s tests/python
	.venv/bin/python -m unittest discover -s ansible_plugin/tests
	@for v in 3.8 3.13; do p=$$(ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/$$v*/bin/python$$v 2>/dev/null | head -1); \
	  if [ -n "$$p" ]; then echo "== agent tests on $$($$p --version)"; $$p -m unittest discover -s tests/python || exit 1; \
	  else echo "SKIP: no Python $$v for the agent tests"; fi; done

# The behaviour tests run once per event-loop backend.
test-rust:
	SPINDLE_IO=epoll $(CARGO) test --all-targets
	SPINDLE_IO=uring $(CARGO) test --tests

# Real playbooks through stock Ansible and through spindle, results compared (needs the venv).
test-ansible: venv build-debug
	SPINDLE_BIN=$(CURDIR)/target/debug/spindle .venv/bin/python -m unittest discover -s tests/ansible -v

build-debug:
	$(CARGO) build

# The ansible-core version matrix (2.18, 2.20, 2.21 beside the main venv's 2.19): the field
# suites and the conformance linear pair on each; the table goes to target/matrix.md.
test-matrix: build-debug
	bash scripts/matrix.sh
	SPINDLE_BIN=$(CURDIR)/target/debug/spindle $(PY) tests/ansible/run_matrix.py; rc=$$?; \
	  if [ $$rc = 77 ]; then echo "test-matrix: SKIP (no matrix venvs)"; else exit $$rc; fi

# 2,000 simulated targets with a fault mix, both event-loop backends (~1 min after the build).
test-scale:
	bash scale-tests/ci.sh

# The bench harness's quick suite (stock, stock-nopipe, Mitogen, spindle on 1 and 3 netns
# targets, ~4 min), then a check that every output exists and parses; no timing thresholds.
# Needs root for the fleet (else it prints `check: SKIP` and passes). Uses the debug binary
# that test-ansible builds anyway.
test-bench: venv build-debug
	$(PY) bench/run --suite quick --check --require-modes stock,spindle --spindle-bin $(CURDIR)/target/debug/spindle

# The bench on real podman containers (containers/podman-fleet.sh, ssh to each container on
# podman's bridge): one cell, hostname20 on 2 targets with stock and spindle, first with the
# controller here, then with every ansible-playbook inside a controller container (spindle's
# execution environment image, `make ee`; built by the harness when missing), each with
# --check; no timing thresholds (37 s and 2 min here at load average 3 and 5, images cached).
# Without root or podman it prints `check: SKIP` and passes.
BENCH_PODMAN_PREFIX ?= bp
BENCH_PODMAN_CELL = --fleet podman --fleet-prefix $(BENCH_PODMAN_PREFIX) --suite custom --workloads hostname20 \
	--sizes 2 --modes stock,spindle --check --require-modes stock,spindle --spindle-bin $(CURDIR)/target/debug/spindle
test-bench-podman: venv build-debug
	$(PY) bench/run $(BENCH_PODMAN_CELL)
	$(PY) bench/run $(BENCH_PODMAN_CELL) --controller container

# criterion micro-benchmarks (frame codec, router dispatch, blob cache); bench/README.md.
bench:
	$(CARGO) bench --bench hot_paths

## test: everything CI runs (the version matrix on its oldest and newest ansible-core, 2.18 and
## 2.21, beside the main venv's 2.19: `make test-matrix` alone adds 2.20)
test: setup lint unit-python test-rust test-ansible test-matrix-ends test-scale test-bench test-bench-podman

test-matrix-ends:
	MATRIX="2.18 2.21" $(MAKE) test-matrix

clean:
	$(CARGO) clean
	rm -rf .venv
