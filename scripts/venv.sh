#!/usr/bin/env bash
# scripts/venv.sh — the Python venv for the demo and the Ansible tests: the newest
# ansible-core that installs on this Python (2.19.x on 3.11), and spindle's Python package.
# Idempotent: an existing venv with ansible-core is reused.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${SPINDLE_VENV:-.venv}
PY=${PYTHON:-python3}
if [[ ! -x $VENV/bin/python ]]; then
  echo "venv.sh: creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import ansible" 2>/dev/null; then
  echo "venv.sh: installing ansible-core (newest that supports $($VENV/bin/python --version))"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q "ansible-core>=2.18"
fi
"$VENV/bin/pip" install -q ./ansible_plugin
echo "venv.sh: $("$VENV/bin/ansible" --version | sed -n 1p)"
