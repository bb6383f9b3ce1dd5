#!/usr/bin/env bash
# scripts/demo.sh — the README's main job on an embedded fleet: one ordinary playbook
# (scripts/demo/site.yml: facts, command, shell, file, copy, template, lineinfile, stat,
# become, fetch) on a local fleet of network-namespace sshd targets (10 by default), run in
# one go by
#   - stock Ansible with its defaults (ssh, ControlPersist, pipelining off),
#   - stock Ansible with pipelining on (the usual tuning),
#   - Ansible through spindle, configured only with the lines `python -m spindle_ansible`
#     prints (pipelining left at its default),
# plus the `debug` floor (scripts/demo/floor.yml: Ansible's own per-task cost), each timed,
# side by side, with where spindle ran the modules. Tears the fleet down at the end.
#
#   scripts/demo.sh [TARGETS]        (make demo runs it with the default)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10}
VENV=$(cd "${SPINDLE_VENV:-.venv}" && pwd)
WORK=$(mktemp -d "${XDG_RUNTIME_DIR:-/run}/spindle-demo.XXXXXX")
FLEET=demo
export SPINDLE_BIN=${SPINDLE_BIN:-$PWD/target/release/spindle}

cleanup() {
  # the demo's persistent spindle daemon lives under $WORK (XDG_RUNTIME_DIR below)
  XDG_RUNTIME_DIR="$WORK" "$VENV/bin/python" -m spindle_ansible --stop >/dev/null 2>&1 || true
  bash containers/netns-fleet.sh down "$FLEET" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "== bringing up $N sshd targets (network namespaces)"
INV=$(bash containers/netns-fleet.sh up "$FLEET" "$N" | tail -1)
# An ordinary inventory: interpreter discovery, as most have.
grep -v '^ansible_python_interpreter=' "$INV" > "$WORK/inventory.ini"
cp scripts/demo/*.yml scripts/demo/*.j2 "$WORK/"

# One ansible.cfg per mode; nothing else differs.
common="forks = $N
host_key_checking = False
stdout_callback = default
display_ok_hosts = False
display_skipped_hosts = False
inventory = $WORK/inventory.ini"
printf '[defaults]\n%s\n' "$common" > "$WORK/stock.cfg"
printf '[defaults]\n%s\n[ssh_connection]\npipelining = True\n' "$common" > "$WORK/stock-pipelining.cfg"
{ "$VENV/bin/python" -m spindle_ansible; printf '%s\n' "$common"; } > "$WORK/spindle.cfg"

now() { date +%s.%N; }
calc() { awk "BEGIN { printf \"%.2f\", $1 }"; }
run() {  # NAME CFG PLAYBOOK
  local name=$1 cfg=$2 play=$3 t0 t1
  rm -rf "$WORK/fetched" "$WORK/ansible-home"
  t0=$(now)
  (cd "$WORK" && env ANSIBLE_CONFIG="$WORK/$cfg" ANSIBLE_HOME="$WORK/ansible-home" \
      ANSIBLE_LOCAL_TEMP="$WORK/ansible-tmp" ANSIBLE_SSH_CONTROL_PATH_DIR="$WORK/cp-$name" \
      SPINDLE_PATHS_FILE="$WORK/paths-$name.json" XDG_RUNTIME_DIR="$WORK" \
      "$VENV/bin/ansible-playbook" "$play" -e "fetch_dir=$WORK/fetched" >"$WORK/$name.out" 2>&1) \
    || { tail -30 "$WORK/$name.out" >&2; echo "demo: the $name run failed" >&2; exit 1; }
  t1=$(now)
  calc "$t1 - $t0"
}

echo "== the playbook ($(grep -c '^    - name' scripts/demo/site.yml) tasks + facts) on $N hosts, four ways"
floor=$(run floor stock.cfg floor.yml)
stock=$(run stock stock.cfg site.yml)
piped=$(run stock-pipelining stock-pipelining.cfg site.yml)
spin=$(run spindle spindle.cfg site.yml)
again=$(run spindle-again spindle.cfg site.yml)  # the daemon outlived the run (SPINDLE_PERSIST)

printf '\n%-44s %9s %14s\n' run "wall (s)" "stock / this"
printf '%-44s %9s %14s\n' "stock Ansible, defaults (pipelining off)" "$stock" "1.0x"
printf '%-44s %9s %13sx\n' "stock Ansible, pipelining = True" "$piped" "$(calc "$stock / $piped")"
printf '%-44s %9s %13sx\n' "Ansible + spindle (README lines only)" "$spin" "$(calc "$stock / $spin")"
printf '%-44s %9s %13sx\n' "  the same again (agents kept warm)" "$again" "$(calc "$stock / $again")"
printf '%-44s %9s %14s\n' "debug floor (same task count, no target)" "$floor" "-"
echo
python3 - "$WORK/paths-spindle.json" <<'PY'
import json, sys
p = json.load(open(sys.argv[1]))
total = p["in_agent"] + p["forked"] + p["stock"]
print("spindle: in-agent share %.0f%% of %d module runs" % (100.0 * (p["in_agent"] + p["forked"]) / max(total, 1), total))
PY
for f in stock stock-pipelining spindle spindle-again; do
  echo "$f: $(grep -A$((N + 1)) 'PLAY RECAP' "$WORK/$f.out" | grep -c 'failed=0') of $N hosts without failures"
done
echo "(same fleet, same run; spindle's first time includes starting its daemon and agents)"
