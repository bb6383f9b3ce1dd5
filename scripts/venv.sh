#!/usr/bin/env bash
# scripts/venv.sh — the Python venv for operators, the demo and the Ansible tests: the newest
# ansible-core that installs on this Python (2.19.x on 3.11), ansible-runner (pinned: the
# tests drive it as AWX and ansible-navigator do, tests/ansible/test_runner.py), and spindle's wheel
# `spindle-ansible` built from this checkout with maturin and installed into it. The wheel
# holds the Python package (client and Ansible plugins) and the release `spindle` daemon
# binary, which lands in $VENV/bin/ next to ansible-playbook, where the strategies find it:
# nothing to set (no SPINDLE_BIN, no PATH). The wheel stays in target/wheels/ for other
# controllers (`pip install target/wheels/spindle_ansible-*.whl`).
#
# Idempotent: an existing venv with ansible-core is reused, and the wheel build is
# incremental (cargo's release artifacts are shared with `cargo build --release`: a few
# minutes the first time on 2 cores, a second when nothing changed); the wheel is reinstalled
# each run, so the venv always has this checkout's code.
#
# Needs: python3 with venv, cargo (rustup); the network only for PyPI (ansible-core, maturin)
# and crates.io (the crate's locked dependencies, unless already in cargo's cache).
#   SPINDLE_VENV=dir   the venv (default .venv)
#   PYTHON=python3.x   the interpreter to create it with
#   CARGO_TARGET_DIR   honoured as by cargo (the wheel goes to $CARGO_TARGET_DIR/wheels)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${SPINDLE_VENV:-.venv}
PY=${PYTHON:-python3}
RUNNER_VERSION=2.4.3     # ansible-runner: what AWX's and ansible-navigator's jobs run through
MATURIN_VERSION=1.16.0   # keep in step with ansible_plugin/pyproject.toml [build-system]
TARGET=${CARGO_TARGET_DIR:-target}
[[ $TARGET == /* ]] || TARGET=$ROOT/$TARGET
export CARGO_TARGET_DIR=$TARGET   # maturin runs in ansible_plugin/: keep the shared target dir
WHEELS=$TARGET/wheels

if [[ ! -x $VENV/bin/python ]]; then
  echo "venv.sh: creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
VENV=$(cd "$VENV" && pwd)
if ! "$VENV/bin/python" -c "import ansible" 2>/dev/null; then
  echo "venv.sh: installing ansible-core (newest that supports $($VENV/bin/python --version))"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q "ansible-core>=2.18"
fi
# The execution environment's tools (containers/ee/, tests/ansible/test_ee.py): ansible-runner
# (what AWX/AAP run jobs with), ansible-builder 3 (builds the EE image) and ansible-navigator
# (runs playbooks in it), pinned, with the venv's ansible-core held at its version.
EE_PINS=(ansible-runner==$RUNNER_VERSION ansible-builder==3.2.0 ansible-navigator==26.10.0)
have=$("$VENV/bin/pip" freeze 2>/dev/null | tr 'A-Z_' 'a-z-')
ee_missing=()
for pin in "${EE_PINS[@]}"; do
  grep -qx -- "$pin" <<<"$have" || ee_missing+=("$pin")
done
if ((${#ee_missing[@]})); then
  core=$("$VENV/bin/python" -c "from importlib.metadata import version; print(version('ansible-core'))")
  echo "venv.sh: installing ${ee_missing[*]} (ansible-core held at $core)"
  "$VENV/bin/pip" install -q "${EE_PINS[@]}" "ansible-core==$core"
fi
RUFF_VERSION=0.17.6      # `make lint`'s Python linter and format check (ruff.toml)
if [[ $("$VENV/bin/ruff" --version 2>/dev/null) != "ruff $RUFF_VERSION" ]]; then
  echo "venv.sh: installing ruff $RUFF_VERSION (make lint)"
  "$VENV/bin/pip" install -q "ruff==$RUFF_VERSION"
fi
PYSPY_VERSION=0.4.3      # `bench/run --profile`'s sampler (the README's floor suite)
if [[ $("$VENV/bin/py-spy" --version 2>/dev/null) != "py-spy $PYSPY_VERSION" ]]; then
  echo "venv.sh: installing py-spy $PYSPY_VERSION (bench/run --profile)"
  "$VENV/bin/pip" install -q "py-spy==$PYSPY_VERSION"
fi
if [[ $("$VENV/bin/maturin" --version 2>/dev/null) != "maturin $MATURIN_VERSION" ]]; then
  echo "venv.sh: installing maturin $MATURIN_VERSION (builds the wheel)"
  "$VENV/bin/pip" install -q "maturin==$MATURIN_VERSION"
fi
command -v cargo >/dev/null || { echo "venv.sh: cargo not found (install Rust: rustup)" >&2; exit 1; }

echo "venv.sh: building the spindle-ansible wheel (release; target dir $TARGET)"
mkdir -p "$WHEELS"
rm -f "$WHEELS"/spindle_ansible-*.whl
start=$SECONDS
(cd ansible_plugin && "$VENV/bin/maturin" build --release --out "$WHEELS")
wheels=("$WHEELS"/spindle_ansible-*.whl)
[[ ${#wheels[@]} == 1 && -f ${wheels[0]} ]] || { echo "venv.sh: no single wheel in $WHEELS" >&2; exit 1; }
echo "venv.sh: built ${wheels[0]} ($(du -k "${wheels[0]}" | cut -f1) KiB, $((SECONDS - start)) s)"
"$VENV/bin/pip" install -q --no-deps --force-reinstall "${wheels[0]}"

echo "venv.sh: $("$VENV/bin/ansible" --version | sed -n 1p); $("$VENV/bin/spindle" --version) in $VENV/bin"

# The third-party collections the tests compare with (community.general's chroot, ...).
SPINDLE_VENV=$VENV bash scripts/collections.sh
