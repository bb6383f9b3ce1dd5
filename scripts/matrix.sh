#!/usr/bin/env bash
# scripts/matrix.sh — the venvs of the ansible-core version matrix (tests/ansible/run_matrix.py):
# the newest patch release of each supported ansible-core that is not the main venv's, each on
# a controller Python it supports (2.18 on the system's python3; 2.20 on 3.12, 2.21 on 3.13,
# from pyenv when installed there, else skipped with a message). Only ansible-core goes in:
# the tests take spindle's plugins from this checkout (PYTHONPATH) and the daemon from
# SPINDLE_BIN. Idempotent: a venv that already has its ansible-core is kept.
#   .venv-2.18 .venv-2.20 .venv-2.21   (listed in .venv-matrix.txt as "version venv")
# MATRIX="2.18 2.21" limits it to those versions (`make test` runs the oldest and the newest
# to stay well inside CI's time; `make test-matrix` alone runs all three).
set -euo pipefail
cd "$(dirname "$0")/.."
PYENV=${PYENV_ROOT:-$HOME/.pyenv}/versions
find_python() {  # MAJOR.MINOR -> an interpreter path, or nothing
  local want=$1 p
  for p in "python$want" "$PYENV/$want"*/bin/"python$want"; do
    if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import venv, ensurepip' 2>/dev/null; then
      command -v "$p"; return 0
    fi
  done
}
: > .venv-matrix.txt
MATRIX=${MATRIX:-2.18 2.20 2.21}
for entry in 2.18:3.11 2.20:3.12 2.21:3.13; do
  core=${entry%%:*} py=${entry#*:} venv=.venv-$core
  [[ " $MATRIX " == *" $core "* ]] || continue
  python=$(find_python "$py" || true)
  if [[ -z $python ]]; then
    echo "matrix.sh: SKIP ansible-core $core: no Python $py here (pyenv install $py, or a python$py on PATH)"
    continue
  fi
  if ! "$venv/bin/python" -c "import ansible.release as r, sys; sys.exit(not r.__version__.startswith('$core.'))" 2>/dev/null; then
    echo "matrix.sh: $venv: ansible-core $core.* on $("$python" --version)"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip
    "$venv/bin/pip" install -q "ansible-core==$core.*"
  fi
  echo "$core $venv" >> .venv-matrix.txt
done
echo "matrix.sh: $(wc -l < .venv-matrix.txt) venvs: $(cut -d' ' -f1 .venv-matrix.txt | tr '\n' ' ')"
