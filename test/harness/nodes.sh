#!/usr/bin/env bash
# nodes.sh: simulated Nova "compute nodes" for imgcache's integration tests, one OpenSSH sshd each.
#
#   nodes.sh start N BASE_DIR            start N nodes; stdout: only a JSON array (also BASE_DIR/nodes.json)
#                                          [{name, host, port, user, identityFile, instancesPath,
#                                            knownHostsFile, sshConfigFile, pid, dir, binDir}]
#   nodes.sh kill-sshd BASE_DIR NAME [--listener-only]
#                                        stop NAME's sshd like a crash: the listener and every session
#                                        process under it (so open connections drop), by PID
#   nodes.sh start-sshd BASE_DIR NAME    start NAME's sshd again: same address, port, host key
#   nodes.sh restart-sshd BASE_DIR NAME  kill-sshd, then start-sshd
#   nodes.sh rotate-host-key BASE_DIR NAME
#                                        give NAME a new host key and restart its sshd; the client's
#                                        known_hosts keeps the old key (a "changed host key");
#                                        stdout: the known_hosts line for the new key
#   nodes.sh trust-host-key BASE_DIR NAME
#                                        replace NAME's line in the client's known_hosts by its current key
#   nodes.sh stop BASE_DIR [--clean]     the same as stop-nodes.sh
#
# Every node has its own host key, HOME, instances directory and PATH, with BASE_DIR/NAME/bin first
# (a test gives one node a fake `qemu-img` by writing it there). Each session's environment has
# IMGCACHE_NODE=NAME, IMGCACHE_INSTANCES_PATH, and IMGCACHE_TEST_NODE_DIR=BASE_DIR/NAME, the marker
# stop-nodes.sh uses to find commands orphaned by a dropped connection. stderr: progress and errors.
#
# Environment knobs for `start`:
#   BASE_PORT=            first port (node i gets BASE_PORT+i-1, refused when in use). Unset: free
#                         ports picked at random below the ephemeral range, retried when a bind races,
#                         so test files running at the same time never collide
#   NODE_NAMES=a,b,c      node names (letters, digits, - and _; default node1..nodeN); count must be N
#   NODE_USER=$(id -un)   login user (a non-root sshd can only log in as its own user)
#   NODE_DISK_MB=         (root) a tmpfs of that size on every node's instances dir (ENOSPC tests)
#   NODE_NET=NET_DIR      (root) every node in its own network namespace on the test network of
#                         `testnet.sh up NET_DIR`: own address, sshd on port 22, a link that can be
#                         capped (NODE_RATE, `testnet.sh rate`) or cut (`testnet.sh link NET NAME down`)
#   NODE_RATE=none        with NODE_NET: cap each node's link, both directions (tc units: 200mbit)
#   NODE_MESH=1           nodes can ssh to each other by name, as Nova's compute hosts do
#   NODE_KEEP_HOME=1      keep the real HOME (default: a per-node HOME, so root's ~/.bashrc, which
#                         bash sources for every ssh command, does not run; with pyenv in it that
#                         costs ~0.5 s per remote command)
#   NODE_INSTALL=0        do not apt-get install openssh-server when sshd is missing
#   NODE_VERIFY=0         skip the `ssh NAME true` check of every node
#
# Keep BASE_DIR short (mktemp -d /tmp/imgc.XXXXXX): BASE_DIR/client/cm/%C is a unix socket path,
# limited to about 108 bytes, and %C alone is 40 characters.
# Layout: BASE_DIR/client/{id_ed25519,known_hosts,ssh_config,cm/}
#         BASE_DIR/NAME/{node.env,sshd_config,ssh_host_ed25519_key,authorized_keys,sshd.pid,
#                        sshd.bgpid,sshd.log,home/,bin/,instances/}
# With NODE_NET, stop the nodes first (stop-nodes.sh), then `testnet.sh down NET_DIR`.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
SSHD=${SSHD:-/usr/sbin/sshd}
log() { echo "nodes: $*" >&2; }
die() { log "$*"; exit 1; }
usage() { sed -n '2,18p' "$0" >&2; exit 2; }

json_str() { local s=$1; s=${s//\\/\\\\}; s=${s//\"/\\\"}; printf '"%s"' "$s"; }

alive() { # running and not a zombie (PID 1 may reap orphans late, so kill -0 is not enough)
  local st
  st=$(sed -n 's/.*) \([A-Za-z]\).*/\1/p' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n "$st" && "$st" != Z && "$st" != X ]]
}

descendants() { # all descendant PIDs of $1
  local k
  for k in $(ps -o pid= --ppid "$1" 2>/dev/null); do echo "$k"; descendants "$k"; done
}

port_in_use() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }

# The node's sshd listener PID, only if it really is this node's sshd (its cmdline names the config).
listener_pid() {
  local D=$1 pid=""
  [[ -s "$D/sshd.bgpid" ]] && pid=$(<"$D/sshd.bgpid")
  [[ -n "$pid" ]] && alive "$pid" || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$D/sshd_config" || return 1
  echo "$pid"
}

node_dir() { # BASE NAME -> absolute node dir, which must have been made by `start`
  local base=$1 name=$2
  [[ -d "$base" ]] || die "no BASE_DIR $base"
  base=$(cd "$base" && pwd -P)
  [[ -f "$base/$name/node.env" ]] || die "no node $name under $base"
  echo "$base/$name"
}

load_node() { # sets NAME ADDR PORT NET for the node dir $1
  NAME='' ADDR='' PORT='' NET=''
  # shellcheck disable=SC1091  # written by write_node_env with printf %q
  . "$1/node.env"
}

write_node_env() { # D NAME ADDR PORT NET
  printf 'NAME=%q\nADDR=%q\nPORT=%q\nNET=%q\n' "$2" "$3" "$4" "$5" >"$1/node.env"
}

write_sshd_config() { # D NAME ADDR PORT USER
  local D=$1 name=$2 addr=$3 port=$4 user=$5 setenv
  setenv="IMGCACHE_NODE=$name IMGCACHE_INSTANCES_PATH=$D/instances IMGCACHE_TEST_NODE_DIR=$D"
  setenv+=" PATH=$D/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
  [[ "${NODE_KEEP_HOME:-0}" == 1 ]] || setenv="HOME=$D/home $setenv"
  # Every path absolute: sshd re-executes itself and changes to /.
  cat >"$D/sshd_config" <<EOF
# generated by nodes.sh: test node $name
Port $port
ListenAddress $addr
HostKey $D/ssh_host_ed25519_key
PidFile $D/sshd.pid
AuthorizedKeysFile $D/authorized_keys
AllowUsers $user
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin prohibit-password
StrictModes no
UseDNS no
PrintMotd no
PrintLastLog no
X11Forwarding no
AllowAgentForwarding no
MaxStartups 100:30:200
MaxSessions 100
ClientAliveInterval 15
Subsystem sftp internal-sftp
SetEnv $setenv
LogLevel VERBOSE
EOF
}

# Start the node's sshd in the foreground (-D), in the background of this script, and wait for its
# listener. Returns 3 when the port was taken (the caller may try another), 1 on other failures.
launch_sshd() {
  local D=$1 inns=() pid t
  load_node "$D"
  if pid=$(listener_pid "$D"); then log "$NAME: sshd already running (pid $pid)"; return 1; fi
  [[ -z "$NET" ]] || inns=(bash "$HERE/testnet.sh" exec "$NET" "$NAME")
  "$SSHD" -t -f "$D/sshd_config" || return 1
  rm -f "$D/sshd.pid" "$D/sshd.bgpid"
  : >"$D/sshd.log"
  # No inherited stdout/stderr, so that `$(nodes.sh start ...)` and execa return when we exit.
  # `testnet.sh exec` execs `ip netns exec`, which execs sshd: $! is sshd's PID either way.
  "${inns[@]}" "$SSHD" -D -f "$D/sshd_config" -E "$D/sshd.log" </dev/null >/dev/null 2>&1 &
  pid=$!
  echo "$pid" >"$D/sshd.bgpid"
  for ((t = 0; t < 200; t++)); do # up to 10 s
    if ! alive "$pid"; then
      wait "$pid" 2>/dev/null || true
      if grep -q 'Address already in use' "$D/sshd.log"; then return 3; fi
      log "$NAME: sshd exited; see $D/sshd.log"
      tail -5 "$D/sshd.log" >&2
      return 1
    fi
    grep -q 'Server listening' "$D/sshd.log" 2>/dev/null && { echo "$pid"; return 0; }
    sleep 0.05
  done
  log "$NAME: sshd not listening on $ADDR:$PORT after 10 s; see $D/sshd.log"
  kill "$pid" 2>/dev/null || true
  return 1
}

# Stop a node's sshd by PID: the listener and (unless --listener-only) its descendants, which are the
# per-connection sshd processes and the commands they run. TERM, then KILL after 5 s.
kill_sshd() {
  local D=$1 mode=${2:-} pid victims=() p t left
  load_node "$D"
  pid=$(listener_pid "$D") || { log "$NAME: sshd not running"; return 0; }
  victims=("$pid")
  [[ "$mode" == --listener-only ]] || mapfile -t -O 1 victims < <(descendants "$pid")
  # Sessions first, so clients see their connection drop rather than a half-closed channel.
  for ((p = ${#victims[@]} - 1; p >= 0; p--)); do kill "${victims[p]}" 2>/dev/null || true; done
  for ((t = 0; t < 100; t++)); do
    left=0
    for p in "${victims[@]}"; do alive "$p" && left=1; done
    ((left)) || break
    sleep 0.05
  done
  for p in "${victims[@]}"; do alive "$p" && kill -9 "$p" 2>/dev/null && log "$NAME: SIGKILLed $p"; done
  wait "$pid" 2>/dev/null || true
  rm -f "$D/sshd.pid" "$D/sshd.bgpid"
  log "$NAME: sshd stopped (pid $pid, ${#victims[@]} process(es))"
}

known_hosts_line() { # D: "[addr]:port ssh-ed25519 KEY" for the node's current host key
  load_node "$1"
  local hk=$ADDR
  [[ $PORT == 22 ]] || hk="[$ADDR]:$PORT"
  echo "$hk $(cut -d' ' -f1,2 "$1/ssh_host_ed25519_key.pub")"
}

free_port() { # a random port nobody listens on, below the ephemeral range (32768+)
  local p t
  for ((t = 0; t < 200; t++)); do
    p=$((20000 + ${SRANDOM:-$RANDOM} % 12000))
    port_in_use "$p" || { echo "$p"; return 0; }
  done
  return 1
}

cmd_start() {
  local N=${1:-} BASE=${2:-}
  [[ -n "$N" && -n "$BASE" && "$N" =~ ^[0-9]+$ && "$N" -ge 1 ]] || usage
  local user=${NODE_USER:-$(id -un)} net=${NODE_NET:-} names=() i name D port addr pid rc try
  if [[ -n "${NODE_NAMES:-}" ]]; then
    IFS=, read -r -a names <<<"$NODE_NAMES"
    ((${#names[@]} == N)) || die "NODE_NAMES has ${#names[@]} name(s) for $N node(s)"
  else
    for ((i = 1; i <= N; i++)); do names+=("node$i"); done
  fi
  for name in "${names[@]}"; do
    [[ $name =~ ^[A-Za-z0-9_-]{1,32}$ && $name != client ]] || die "bad node name '$name' (letters, digits, - and _; not 'client')"
  done
  [[ -z "$(printf '%s\n' "${names[@]}" | sort | uniq -d)" ]] || die "NODE_NAMES has duplicates"
  if [[ -n "$net" ]]; then
    [[ -f "$net/testnet.env" ]] || die "NODE_NET=$net: no test network there (testnet.sh up $net)"
    net=$(cd "$net" && pwd -P)
  fi
  if [[ -n "${NODE_DISK_MB:-}" ]]; then
    [[ "$NODE_DISK_MB" =~ ^[1-9][0-9]*$ ]] || die "NODE_DISK_MB must be a whole number of MiB"
    [[ $(id -u) == 0 ]] || die "NODE_DISK_MB needs root"
  fi
  [[ -z "${BASE_PORT:-}" || "$BASE_PORT" =~ ^[1-9][0-9]*$ ]] || die "BASE_PORT must be a port number"

  if [[ ! -x "$SSHD" ]]; then # the harness installs what it needs
    if [[ "${NODE_INSTALL:-1}" == 1 && $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
      log "installing openssh-server"
      local apt=(apt-get install -y -o DPkg::Lock::Timeout=600 --no-install-recommends openssh-server)
      DEBIAN_FRONTEND=noninteractive "${apt[@]}" >&2 ||
        { DEBIAN_FRONTEND=noninteractive apt-get update -o DPkg::Lock::Timeout=600 >&2 &&
          DEBIAN_FRONTEND=noninteractive "${apt[@]}" >&2; }
    fi
    [[ -x "$SSHD" ]] || die "no $SSHD (apt-get install openssh-server)"
  fi
  command -v ssh-keygen >/dev/null || die "ssh-keygen missing (apt-get install openssh-client)"

  mkdir -p "$BASE"
  BASE=$(cd "$BASE" && pwd -P)
  local CLIENT=$BASE/client
  mkdir -p "$CLIENT/cm"
  chmod 700 "$CLIENT" "$CLIENT/cm"
  local KEY=$CLIENT/id_ed25519 KNOWN=$CLIENT/known_hosts SSHCFG=$CLIENT/ssh_config
  [[ -f "$KEY" ]] || ssh-keygen -q -t ed25519 -N '' -C imgcache-test-client -f "$KEY"
  touch "$KNOWN" "$SSHCFG"
  if ((${#CLIENT} + 45 > 104)); then log "warning: $CLIENT/cm/%C may exceed the unix socket path limit; use a shorter BASE_DIR"; fi
  [[ $(id -u) != 0 ]] || { mkdir -p /run/sshd && chmod 0755 /run/sshd; } # privilege separation dir

  # On failure, stop what this run started (by PID); mounts stay for stop-nodes.sh to undo.
  STARTED=()
  trap 'st=$?; if ((st != 0)); then for d in "${STARTED[@]}"; do kill_sshd "$d" || true; done; fi' EXIT

  local json="[" n=0
  for name in "${names[@]}"; do
    D=$BASE/$name
    n=$((n + 1))
    mkdir -p "$D/home" "$D/bin" "$D/instances"
    if [[ -f "$D/node.env" ]] && listener_pid "$D" >/dev/null; then die "$name already running; run stop-nodes.sh $BASE first"; fi
    [[ -f "$D/ssh_host_ed25519_key" ]] || ssh-keygen -q -t ed25519 -N '' -C "$name" -f "$D/ssh_host_ed25519_key"
    cp "$KEY.pub" "$D/authorized_keys"
    if [[ "${NODE_MESH:-0}" == 1 ]]; then
      [[ -f "$CLIENT/mesh_ed25519" ]] || ssh-keygen -q -t ed25519 -N '' -C imgcache-test-mesh -f "$CLIENT/mesh_ed25519"
      cat "$CLIENT/mesh_ed25519.pub" >>"$D/authorized_keys"
    fi
    if [[ -n "${NODE_DISK_MB:-}" ]] && ! mountpoint -q "$D/instances"; then
      # Before sshd starts: a node in a network namespace has its own copy of the mount table.
      mount -t tmpfs -o "size=${NODE_DISK_MB}M,mode=0755" "imgc-$(basename "$BASE")-$name" "$D/instances"
      echo "$D/instances" >"$D/mounted"
    fi
    if [[ $(id -u) == 0 && "$user" != root ]]; then chown -R "$user" "$D/home" "$D/instances"; fi

    if [[ -n "$net" ]]; then
      port=22
      addr=$(awk -v n="$name" '$1 == n { print $5 }' "$net/hosts")
      if [[ -n "$addr" ]]; then # a host left by an earlier run on this network: reuse it
        bash "$HERE/testnet.sh" rate "$net" "$name" "${NODE_RATE:-none}"
      else
        addr=$(bash "$HERE/testnet.sh" host "$net" "$name" "${NODE_RATE:-none}")
      fi
    else
      addr=127.0.0.1
    fi
    for ((try = 1; ; try++)); do
      if [[ -n "$net" ]]; then :
      elif [[ -n "${BASE_PORT:-}" ]]; then
        port=$((BASE_PORT + n - 1))
        port_in_use "$port" && die "port $port already in use"
      else
        port=$(free_port) || die "no free port found"
      fi
      write_node_env "$D" "$name" "$addr" "$port" "$net"
      write_sshd_config "$D" "$name" "$addr" "$port" "$user"
      rc=0
      pid=$(launch_sshd "$D") || rc=$?
      ((rc == 0)) && break
      if ((rc == 3)) && [[ -z "$net" && -z "${BASE_PORT:-}" ]] && ((try < 20)); then
        log "$name: port $port taken meanwhile; trying another"
        continue
      fi
      ((rc == 3)) && die "$name: $addr:$port already in use"
      exit 1
    done
    STARTED+=("$D")

    # known_hosts straight from the generated host key, so StrictHostKeyChecking=yes works.
    local line hk
    line=$(known_hosts_line "$D")
    hk=${line%% *}
    if [[ -s "$KNOWN" ]]; then ssh-keygen -q -R "$hk" -f "$KNOWN" >/dev/null 2>&1 || true; rm -f "$KNOWN.old"; fi
    echo "$line" >>"$KNOWN"
    # ssh_config: one Host block per node (rewritten when a node of that name starts again)
    awk -v n="$name" '/^Host / { skip = ($2 == n) } !skip' "$SSHCFG" >"$SSHCFG.tmp" && mv "$SSHCFG.tmp" "$SSHCFG"
    cat >>"$SSHCFG" <<EOF
Host $name
  HostName $addr
  Port $port
  User $user
  IdentityFile $KEY
  IdentitiesOnly yes
  UserKnownHostsFile $KNOWN
  StrictHostKeyChecking yes
  BatchMode yes
  ConnectTimeout 10
  ServerAliveInterval 5
  ServerAliveCountMax 3
  ControlMaster auto
  ControlPath $CLIENT/cm/%C
  ControlPersist 60
  LogLevel ERROR

EOF
    ((n == 1)) || json+=","
    json+="{\"name\":$(json_str "$name"),\"host\":\"$addr\",\"port\":$port,\"user\":$(json_str "$user"),"
    json+="\"identityFile\":$(json_str "$KEY"),\"instancesPath\":$(json_str "$D/instances"),"
    json+="\"knownHostsFile\":$(json_str "$KNOWN"),\"sshConfigFile\":$(json_str "$SSHCFG"),\"pid\":$pid,"
    json+="\"dir\":$(json_str "$D"),\"binDir\":$(json_str "$D/bin")}"
    log "$name listening on $addr:$port (pid $pid)"
  done
  json+="]"

  if [[ "${NODE_MESH:-0}" == 1 ]]; then # the mesh key, all host keys and the names on every node
    local H
    for name in "${names[@]}"; do
      H=$BASE/$name/home/.ssh
      mkdir -p "$H" && chmod 700 "$H"
      cp "$CLIENT/mesh_ed25519" "$H/id_ed25519" && cp "$CLIENT/mesh_ed25519.pub" "$H/id_ed25519.pub"
      cp "$KNOWN" "$H/known_hosts"
      sed -e "s|^  IdentityFile .*|  IdentityFile $H/id_ed25519|" -e "s|^  UserKnownHostsFile .*|  UserKnownHostsFile $H/known_hosts|" \
        -e "s|^  ControlPath .*|  ControlPath none|" -e "s|^  ControlMaster .*|  ControlMaster no|" "$SSHCFG" >"$H/config"
      # ssh takes ~ from the passwd entry, not $HOME: a wrapper first on the node's PATH points it here
      printf '#!/bin/sh\nexec /usr/bin/ssh -F %s "$@"\n' "$H/config" >"$BASE/$name/bin/ssh"
      chmod 755 "$BASE/$name/bin/ssh"
      if [[ $(id -u) == 0 && "$user" != root ]]; then chown -R "$user" "$H"; fi
    done
    log "nodes can ssh to each other (NODE_MESH)"
  fi

  if [[ "${NODE_VERIFY:-1}" == 1 ]]; then
    local got
    for name in "${names[@]}"; do
      got=$(ssh -F "$SSHCFG" -o ControlMaster=no -o ControlPath=none "$name" 'echo "$IMGCACHE_NODE"') ||
        die "$name: ssh check failed; see $BASE/$name/sshd.log"
      [[ "$got" == "$name" ]] || die "$name: unexpected answer '$got'"
    done
    log "verified an ssh login on all $N node(s)"
  fi

  printf '%s\n' "$json" >"$BASE/nodes.json"
  trap - EXIT
  printf '%s\n' "$json"
}

cmd=${1:-}
[[ $# -gt 0 ]] && shift
case $cmd in
start) cmd_start "$@" ;;
stop) exec bash "$HERE/stop-nodes.sh" "$@" ;;
kill-sshd)
  [[ $# -ge 2 && ( $# -eq 2 || "${3:-}" == --listener-only ) ]] || usage
  D=$(node_dir "$1" "$2") || exit 1
  kill_sshd "$D" "${3:-}"
  ;;
start-sshd | restart-sshd)
  [[ $# -eq 2 ]] || usage
  D=$(node_dir "$1" "$2") || exit 1
  [[ $cmd == start-sshd ]] || kill_sshd "$D"
  rc=0
  pid=$(launch_sshd "$D") || rc=$?
  ((rc != 3)) || die "$2: its port is now taken by another process"
  ((rc == 0)) || exit 1
  log "$2: sshd started (pid $pid)"
  echo "$pid"
  ;;
rotate-host-key)
  [[ $# -eq 2 ]] || usage
  D=$(node_dir "$1" "$2") || exit 1
  kill_sshd "$D"
  rm -f "$D/ssh_host_ed25519_key" "$D/ssh_host_ed25519_key.pub"
  ssh-keygen -q -t ed25519 -N '' -C "$2" -f "$D/ssh_host_ed25519_key"
  launch_sshd "$D" >/dev/null || exit 1
  log "$2: new host key $(ssh-keygen -lf "$D/ssh_host_ed25519_key.pub" | cut -d' ' -f2); sshd restarted"
  known_hosts_line "$D"
  ;;
trust-host-key)
  [[ $# -eq 2 ]] || usage
  D=$(node_dir "$1" "$2") || exit 1
  KNOWN=$(dirname "$D")/client/known_hosts
  line=$(known_hosts_line "$D")
  ssh-keygen -q -R "${line%% *}" -f "$KNOWN" >/dev/null 2>&1 || true
  rm -f "$KNOWN.old"
  echo "$line" >>"$KNOWN"
  ;;
*) usage ;;
esac
