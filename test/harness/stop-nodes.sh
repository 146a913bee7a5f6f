#!/usr/bin/env bash
# stop-nodes.sh BASE_DIR [--clean]
#
# Stops what `nodes.sh start` started under BASE_DIR, by PID only, never by name:
#   - every node's sshd listener (PID from BASE_DIR/NAME/sshd.bgpid, accepted only when its command
#     line names that node's sshd_config) and its descendants: the per-connection sshd processes and
#     the commands they run, which outlive the listener; all collected before anything is killed;
#   - commands orphaned earlier by a dropped connection (without a pty sshd sends no SIGHUP), found
#     by the IMGCACHE_TEST_NODE_DIR=BASE_DIR/NAME variable the node's sshd puts in every session;
#   - ssh ControlMaster connections whose sockets are under BASE_DIR (`ssh -O exit`);
#   - the tmpfs mounts made for NODE_DISK_MB.
# TERM first, KILL after 5 s. Processes of other BASE_DIRs are never touched. Safe to run twice.
# --clean also removes BASE_DIR (only when everything above succeeded, never across a mount).
# Network namespaces of NODE_NET nodes belong to the test network: `testnet.sh down NET_DIR` after this.
# Exit status: 0 when everything is stopped and unmounted, 1 otherwise.
set -uo pipefail
BASE=${1:-}
[[ -n "$BASE" ]] || { echo "usage: $0 BASE_DIR [--clean]" >&2; exit 2; }
[[ -d "$BASE" ]] || exit 0 # already stopped and removed
BASE=$(cd "$BASE" && pwd -P)
log() { echo "stop-nodes: $*" >&2; }

descendants() { # all descendant PIDs of $1
  local k
  for k in $(ps -o pid= --ppid "$1" 2>/dev/null); do echo "$k"; descendants "$k"; done
}
marked() { # PIDs whose initial environment carries this node's marker (one grep pass)
  grep -a -z -H '^IMGCACHE_TEST_NODE_DIR=' /proc/[0-9]*/environ 2>/dev/null | tr '\0' '\n' |
    awk -v want="IMGCACHE_TEST_NODE_DIR=$1" -F: '{ f = $1; sub(/^[^:]*:/, ""); if ($0 == want) { split(f, a, "/"); print a[3] } }'
}
alive() { # running and not a zombie (PID 1 may reap orphans late, so kill -0 is not enough)
  local st
  st=$(sed -n 's/.*) \([A-Za-z]\).*/\1/p' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n "$st" && "$st" != Z && "$st" != X ]]
}

rc=0
nodes=() listeners=() victims=()
for D in "$BASE"/*/; do
  D=${D%/}
  # a node dir: configured, or at least mounted by a start that failed part-way
  [[ -f "$D/sshd_config" || -f "$D/mounted" ]] || continue
  name=$(basename "$D")
  nodes+=("$D")
  pid=""
  [[ -s "$D/sshd.bgpid" ]] && pid=$(<"$D/sshd.bgpid")
  [[ -z "$pid" && -s "$D/sshd.pid" ]] && pid=$(<"$D/sshd.pid")
  if [[ -n "$pid" ]] && alive "$pid"; then
    if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$D/sshd_config"; then
      listeners+=("$pid")
      mapfile -t kids < <(descendants "$pid")
      victims+=("${kids[@]}")
      log "$name: sshd $pid, ${#kids[@]} session process(es)"
    else
      log "$name: pid $pid is not this node's sshd; left alone"
    fi
  fi
  mapfile -t orphans < <(marked "$D")
  if ((${#orphans[@]})); then
    victims+=("${orphans[@]}")
    log "$name: ${#orphans[@]} process(es) with its marker"
  fi
done

# Close multiplexed master connections (client side) before their servers go away.
while IFS= read -r -d '' s; do
  timeout 5 ssh -o ControlPath="$s" -O exit placeholder-host >/dev/null 2>&1 || true
  rm -f "$s"
done < <(find "$BASE" -maxdepth 4 -type s -print0 2>/dev/null)

all=("${listeners[@]}" "${victims[@]}")
if ((${#all[@]})); then
  mapfile -t all < <(printf '%s\n' "${all[@]}" | sort -un)
  for p in "${all[@]}"; do [[ $p != "$$" ]] && kill "$p" 2>/dev/null; done
  for ((t = 0; t < 100; t++)); do
    left=0
    for p in "${all[@]}"; do alive "$p" && left=1; done
    ((left)) || break
    sleep 0.05
  done
  for p in "${all[@]}"; do alive "$p" && kill -9 "$p" 2>/dev/null && log "SIGKILLed $p"; done
  sleep 0.05
  for p in "${all[@]}"; do alive "$p" && { log "pid $p still running"; rc=1; }; done
fi

for D in "${nodes[@]}"; do
  rm -f "$D/sshd.pid" "$D/sshd.bgpid"
  if [[ -s "$D/mounted" ]]; then
    mnt=$(<"$D/mounted")
    if mountpoint -q "$mnt"; then
      umount "$mnt" || umount -l "$mnt" || { log "$(basename "$D"): umount $mnt failed"; rc=1; }
    fi
    mountpoint -q "$mnt" || rm -f "$D/mounted"
  fi
done
log "stopped ${#listeners[@]} node(s)"

if [[ "${2:-}" == --clean ]]; then
  if ((rc == 0)) && ! findmnt -rno TARGET | grep -q "^$BASE/"; then
    rm -rf --one-file-system "$BASE" && log "removed $BASE"
  else
    log "kept $BASE (something is still running or mounted)"; rc=1
  fi
fi
exit $rc
