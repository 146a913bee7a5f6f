#!/usr/bin/env bash
# Throwaway OpenStack Glance (Debian bookworm glance-api 2:25.1.0, Zed) on loopback,
# for imgcache's integration tests (test/helpers/glance.ts drives it).
#
# sqlite database, filesystem store; by default no Keystone (paste pipeline with
# UnauthenticatedContextMiddleware: every request is an admin with no project), or
# behind a real Keystone with GLANCE_AUTH=keystone (see keystone.sh).
# Everything (config, db, images, staging, locks, log, pid) lives under DATA_DIR;
# nothing is read from or written to /etc/glance or /var/lib/glance.
#
# Prerequisite (once per machine, as root; tested with glance-api installed):
#   DEBIAN_FRONTEND=noninteractive apt-get install -y -o DPkg::Lock::Timeout=600 \
#       --no-install-recommends glance-api
#   glance-api also adds a glance system user, /etc/glance, and a systemd unit that
#   is not started; none of that is used here. python3-glance alone should be
#   enough (the fallback below runs the modules directly), not tried on a clean box.
#
# Usage:
#   glance.sh start PORT DATA_DIR   start in background; prints the base URL
#                                          (e.g. http://127.0.0.1:19292) on stdout
#                                          once GET /versions answers 200; exit 0.
#   glance.sh run   PORT DATA_DIR   same, but stays in the foreground: prints
#                                          the URL when ready, then waits; SIGTERM/
#                                          SIGINT to this script stops glance.
#   glance.sh stop  DATA_DIR        stop the glance started on DATA_DIR
#                                          (SIGTERM, then SIGKILL after 10 s).
# PORT 0 = pick a free port (glance itself maps bind_port=0 to 9292).
# DATA_DIR is created if missing; if DATA_DIR/glance.sqlite already exists the
# db_sync step is skipped (restart keeps images; or copy in a pre-synced db).
#
# Environment knobs (optional):
#   GLANCE_HOST                  bind address            (default 127.0.0.1); also where the
#                                readiness probe connects, so run this script in the same
#                                network namespace as the address
#   GLANCE_TEMPLATE_DIR          cache directory: the first start that finds no template there
#                                saves its freshly synced database under
#                                GLANCE_TEMPLATE_DIR/glance-VERSION/; later starts copy it
#                                instead of running glance-manage db_sync (~3 s). Safe to share
#                                between concurrent starts.
#   GLANCE_READY_TIMEOUT         seconds to wait for 200 (default 90)
#   GLANCE_CLIENT_SOCKET_TIMEOUT idle socket timeout s   (default 30; glance's own default 900)
#   GLANCE_HTTP_KEEPALIVE        true|false              (default true, as glance)
#   GLANCE_DEBUG                 true|false              (default false)
#   GLANCE_SHOW_LOCATIONS        true|false              (default false) show_image_direct_url and
#                                show_multiple_locations: records carry direct_url and locations
#   GLANCE_API_BIN / GLANCE_MANAGE_BIN  override the programs (a wrapper must exec them)
#   GLANCE_AUTH                  noauth|headers|keystone (default noauth)
#       noauth : UnauthenticatedContextMiddleware, every request is admin, no project.
#       headers: glance's own ContextMiddleware without keystonemiddleware in front,
#                i.e. it trusts the headers keystonemiddleware would have set:
#                no "X-Identity-Status: Confirmed" -> 401; with it, identity comes
#                from X-User-Id, X-Project-Id, X-Roles (e.g. "admin" or "member").
#                No token is checked. Lets a test hit 401 and non-admin policy.
#       keystone: keystonemiddleware's authtoken in front of ContextMiddleware, as in
#                a real deployment: X-Auth-Token is validated against Keystone; no or
#                a bad token -> 401 with "WWW-Authenticate: Keystone uri=...".
#                A validated token stays cached in glance for 300 s (token_cache_time).
#                The service user's credentials come from:
#     KEYSTONE_DATA_DIR        keystone.sh's DATA_DIR (its env.json has the keystone
#                              URL and user glance in project service with its password)
#     KEYSTONE_URL, GLANCE_KEYSTONE_USER (default glance), GLANCE_KEYSTONE_PROJECT
#                              (default service), GLANCE_KEYSTONE_PASSWORD: each overrides
#                              env.json's value. The password is written only to
#                              DATA_DIR/etc/glance-api.conf (mode 0600), never to an argv.
set -euo pipefail

die() { echo "glance.sh: $*" >&2; exit 1; }

GLANCE_API_BIN=${GLANCE_API_BIN:-/usr/bin/glance-api}
GLANCE_MANAGE_BIN=${GLANCE_MANAGE_BIN:-/usr/bin/glance-manage}
# The Debian scripts are thin wrappers; fall back to the modules if absent
# (python3-glance alone ships the modules but not the /usr/bin wrappers).
# -P: do not put the cwd on sys.path (a stray ./glance.py would shadow the package).
if [ -x "$GLANCE_API_BIN" ]; then API_CMD=("$GLANCE_API_BIN")
else API_CMD=(/usr/bin/python3 -P -c 'import sys; from glance.cmd.api import main; sys.exit(main())'); fi
if [ -x "$GLANCE_MANAGE_BIN" ]; then MANAGE_CMD=("$GLANCE_MANAGE_BIN")
else MANAGE_CMD=(/usr/bin/python3 -P -c 'import sys; from glance.cmd.manage import main; sys.exit(main())'); fi

# prints the keystone URL, user, project and password for [keystone_authtoken],
# one per line (see GLANCE_AUTH=keystone above)
keystone_settings() {
  /usr/bin/python3 -P - <<'PY'
import json, os
e = os.environ
env = {}
if e.get('KEYSTONE_DATA_DIR'):
    with open(os.path.join(e['KEYSTONE_DATA_DIR'], 'env.json')) as f:
        env = json.load(f)
g = env.get('glance', {})
print(e.get('KEYSTONE_URL') or env.get('keystone_url', ''))
print(e.get('GLANCE_KEYSTONE_USER') or g.get('username', 'glance'))
print(e.get('GLANCE_KEYSTONE_PROJECT') or g.get('project_name', 'service'))
print(e.get('GLANCE_KEYSTONE_PASSWORD') or g.get('password', ''))
PY
}

write_config() {
  local port=$1 dir=$2 host=${GLANCE_HOST:-127.0.0.1}
  local ctx authtoken_conf=""
  case "${GLANCE_AUTH:-noauth}" in
    noauth)   ctx=unauthenticated-context ;;
    headers)  ctx=context ;;
    keystone) ctx="authtoken context"
      if [ -n "${KEYSTONE_DATA_DIR:-}" ] && [ ! -s "$KEYSTONE_DATA_DIR/env.json" ]; then
        die "no env.json in KEYSTONE_DATA_DIR=$KEYSTONE_DATA_DIR"
      fi
      local ks_url ks_user ks_project ks_password
      { IFS= read -r ks_url; IFS= read -r ks_user; IFS= read -r ks_project; IFS= read -r ks_password
      } < <(keystone_settings)
      if [ -z "$ks_url" ] || [ -z "$ks_password" ]; then
        die "GLANCE_AUTH=keystone needs KEYSTONE_DATA_DIR, or KEYSTONE_URL and GLANCE_KEYSTONE_PASSWORD"
      fi
      authtoken_conf="
[keystone_authtoken]
www_authenticate_uri = $ks_url
auth_url = $ks_url
auth_type = password
user_domain_name = Default
project_domain_name = Default
username = $ks_user
project_name = $ks_project
password = ${ks_password//\$/\$\$}
service_token_roles_required = true" ;;
    *) die "GLANCE_AUTH must be noauth, headers or keystone" ;;
  esac
  mkdir -p "$dir/etc" "$dir/images" "$dir/staging" "$dir/lock" "$dir/policy.d" "$dir/tasks_work"
  # the config may hold the service user's password
  chmod 700 "$dir/etc"
  ( umask 077; : > "$dir/etc/glance-api.conf" )
  cat > "$dir/etc/glance-api.conf" <<EOF
[DEFAULT]
bind_host = $host
bind_port = $port
# 0 = one process, no forked workers (eventlet green threads still serve
# concurrent requests); the pid we record is the only one to stop.
workers = 0
node_staging_uri = file://$dir/staging
client_socket_timeout = ${GLANCE_CLIENT_SOCKET_TIMEOUT:-30}
http_keepalive = ${GLANCE_HTTP_KEEPALIVE:-true}
debug = ${GLANCE_DEBUG:-false}
use_stderr = true
show_image_direct_url = ${GLANCE_SHOW_LOCATIONS:-false}
show_multiple_locations = ${GLANCE_SHOW_LOCATIONS:-false}

[database]
connection = sqlite:///$dir/glance.sqlite

[glance_store]
# legacy single-store options (deprecated but working in Zed; they log a warning)
stores = file,http
default_store = file
filesystem_store_datadir = $dir/images

[task]
work_dir = $dir/tasks_work

[oslo_concurrency]
lock_path = $dir/lock

[oslo_policy]
policy_file = $dir/etc/policy.yaml
policy_dirs = $dir/policy.d

[paste_deploy]
flavor =
config_file = $dir/etc/glance-api-paste.ini
$authtoken_conf
EOF
  # Same properties as Debian's /etc/glance/schema-image.json (upstream etc/),
  # kept here so the API does not depend on /etc/glance (glance looks for this
  # file next to --config-file first).
  cat > "$dir/etc/schema-image.json" <<'SCHEMA'
{
  "kernel_id": {"type": ["null", "string"], "pattern": "^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$", "description": "ID of image stored in Glance that should be used as the kernel when booting an AMI-style image."},
  "ramdisk_id": {"type": ["null", "string"], "pattern": "^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$", "description": "ID of image stored in Glance that should be used as the ramdisk when booting an AMI-style image."},
  "instance_uuid": {"type": "string", "description": "Metadata which can be used to record which instance this image is associated with."},
  "architecture": {"type": "string", "description": "Operating system architecture."},
  "os_distro": {"type": "string", "description": "Common name of operating system distribution."},
  "os_version": {"type": "string", "description": "Operating system version as specified by the distributor."},
  "description": {"type": "string", "description": "A human-readable string describing this image."},
  "cinder_encryption_key_id": {"type": "string", "description": "Key manager id of the encryption key for volumes created from this image."},
  "cinder_encryption_key_deletion_policy": {"type": "string", "enum": ["on_image_deletion", "do_not_delete"], "description": "When the Image Service deletes the key object."}
}
SCHEMA
  cat > "$dir/etc/glance-api-paste.ini" <<EOF
# Minimal pipeline; only GLANCE_AUTH=keystone puts keystonemiddleware's authtoken in it.
[pipeline:glance-api]
pipeline = healthcheck versionnegotiation $ctx rootapp

[composite:rootapp]
paste.composite_factory = glance.api:root_app_factory
/: apiversions
/v2: apiv2app

[app:apiversions]
paste.app_factory = glance.api.versions:create_resource

[app:apiv2app]
paste.app_factory = glance.api.v2.router:API.factory

[filter:healthcheck]
paste.filter_factory = oslo_middleware:Healthcheck.factory
backends = disable_by_file
disable_by_file_path = $dir/healthcheck_disable

[filter:versionnegotiation]
paste.filter_factory = glance.api.middleware.version_negotiation:VersionNegotiationFilter.factory

[filter:unauthenticated-context]
paste.filter_factory = glance.api.middleware.context:UnauthenticatedContextMiddleware.factory

[filter:context]
paste.filter_factory = glance.api.middleware.context:ContextMiddleware.factory

[filter:authtoken]
paste.filter_factory = keystonemiddleware.auth_token:filter_factory
# as upstream: a request without a valid token goes on marked "X-Identity-Status:
# Invalid", the context filter answers 401, and authtoken adds WWW-Authenticate
delay_auth_decision = true
EOF
}

# alive PID: exists and is not a zombie (once the script that started it has exited,
# a dead glance stays a zombie until init reaps it, and kill -0 still succeeds)
alive() { kill -0 "$1" 2>/dev/null && ! grep -q '^[0-9]* (.*) Z' "/proc/$1/stat" 2>/dev/null; }

do_stop() {
  local dir=$1 pid
  [ -f "$dir/glance-api.pid" ] || { echo "no pid file in $dir" >&2; return 0; }
  pid=$(cat "$dir/glance-api.pid")
  # glance runs under setsid and also makes itself a process-group leader
  # (glance.common.wsgi calls setpgid), so its pid is its group id: signal the
  # group (any helper it forked goes too), else the single pid. A custom
  # GLANCE_API_BIN must therefore exec glance-api, not run it as a child.
  local target="-$pid"
  kill -0 -- "$target" 2>/dev/null || target=$pid
  if alive "$pid" && ! tr '\0' ' ' < "/proc/$pid/cmdline" | grep -qF -- "--config-file $dir/etc/"; then
    echo "pid $pid is no longer the glance of $dir; not signalling it" >&2
  elif alive "$pid"; then
    kill -TERM -- "$target" 2>/dev/null || true
    for _ in $(seq 1 100); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then kill -KILL -- "$target" 2>/dev/null || true; fi
  fi
  rm -f "$dir/glance-api.pid"
}

do_start() {
  local port=$1 dir=$2 host=${GLANCE_HOST:-127.0.0.1} timeout=${GLANCE_READY_TIMEOUT:-90}
  case "$port" in ''|*[!0-9]*) die "PORT must be a number (0 = ephemeral)";; esac
  mkdir -p "$dir"; dir=$(cd "$dir" && pwd)
  if [ -f "$dir/glance-api.pid" ] && alive "$(cat "$dir/glance-api.pid")"; then
    die "a glance started on $dir is already running (pid $(cat "$dir/glance-api.pid"))"
  fi
  # glance treats bind_port=0 as "use 9292", so PORT 0 is resolved here. And
  # glance binds with SO_REUSEPORT (eventlet default), so a second glance on a
  # busy port would silently share it: refuse a port that a plain bind cannot get.
  port=$(/usr/bin/python3 -P -c '
import socket, sys
s = socket.socket()
try:
    s.bind((sys.argv[1], int(sys.argv[2])))
except OSError as e:
    sys.exit("port %s on %s is not free: %s" % (sys.argv[2], sys.argv[1], e))
print(s.getsockname()[1]); s.close()' "$host" "$port") || die "cannot use port $1"
  write_config "$port" "$dir"
  if [ ! -s "$dir/glance.sqlite" ]; then
    local tmpl=""
    if [ -n "${GLANCE_TEMPLATE_DIR:-}" ]; then
      local ver   # a template only fits the glance version that made it
      ver=$(dpkg-query -W -f '${Version}' python3-glance 2>/dev/null) ||
        ver=$(/usr/bin/python3 -P -c 'import importlib.metadata as m; print(m.version("glance"))')
      tmpl=$GLANCE_TEMPLATE_DIR/glance-${ver//[^A-Za-z0-9.+~-]/_}
    fi
    if [ -n "$tmpl" ] && [ -s "$tmpl/glance.sqlite" ]; then
      cp "$tmpl/glance.sqlite" "$dir/glance.sqlite"
    else
      if ! "${MANAGE_CMD[@]}" --config-file "$dir/etc/glance-api.conf" db_sync > "$dir/db_sync.log" 2>&1; then
        tail -n 30 "$dir/db_sync.log" >&2; die "glance-manage db_sync failed (log: $dir/db_sync.log)"
      fi
      if [ -n "$tmpl" ]; then
        # nothing has the fresh database open yet: a plain copy is consistent; the rename
        # is atomic and fails harmlessly when a concurrent start got there first
        mkdir -p "$GLANCE_TEMPLATE_DIR"
        local t; t=$(mktemp -d "$GLANCE_TEMPLATE_DIR/.new.XXXXXX")
        cp "$dir/glance.sqlite" "$t/glance.sqlite"
        mv -T "$t" "$tmpl" 2>/dev/null || rm -rf "$t"
      fi
    fi
  fi
  : > "$dir/glance-api.log"
  # setsid: own process group, so the harness's signals to its own group do not
  # hit glance by accident; stdin from /dev/null; glance does not daemonize.
  setsid "${API_CMD[@]}" --config-file "$dir/etc/glance-api.conf" \
      </dev/null >>"$dir/glance-api.log" 2>&1 &
  local pid=$!
  echo "$pid" > "$dir/glance-api.pid"

  local url="" deadline=$((SECONDS + timeout))
  while [ $SECONDS -lt $deadline ]; do
    if ! alive "$pid"; then
      tail -n 30 "$dir/glance-api.log" >&2; rm -f "$dir/glance-api.pid"
      die "glance-api exited before becoming ready (log: $dir/glance-api.log)"
    fi
    # only trust the 200 once *our* glance has bound the port (it logs this line),
    # so another server already on the port cannot fake readiness
    if grep -q "wsgi starting up on http://$host:$port" "$dir/glance-api.log" &&
       [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$host:$port/versions" 2>/dev/null || true)" = 200 ]; then
      url="http://$host:$port"; break
    fi
    sleep 0.1
  done
  if [ -z "$url" ]; then
    tail -n 30 "$dir/glance-api.log" >&2; do_stop "$dir"
    die "glance-api not ready after ${timeout}s (log: $dir/glance-api.log)"
  fi
  echo "$url" > "$dir/url"
  echo "$url"
}

cmd=${1:-}
case "$cmd" in
  start) [ $# -eq 3 ] || die "usage: $0 start PORT DATA_DIR"; do_start "$2" "$3" ;;
  run)
    [ $# -eq 3 ] || die "usage: $0 run PORT DATA_DIR"
    mkdir -p "$3"; d=$(cd "$3" && pwd)
    trap 'do_stop "$d"; exit 0' TERM INT HUP
    do_start "$2" "$d"
    # wait on glance; when it exits by itself, so do we
    p=$(cat "$d/glance-api.pid")
    while alive "$p"; do sleep 0.5 & wait $! || true; done
    ;;
  stop)  [ $# -eq 2 ] || die "usage: $0 stop DATA_DIR"; [ -d "$2" ] || exit 0; do_stop "$(cd "$2" && pwd)" ;;
  *) die "usage: $0 {start PORT DATA_DIR | run PORT DATA_DIR | stop DATA_DIR}" ;;
esac
