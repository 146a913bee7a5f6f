#!/usr/bin/env bash
# Throwaway OpenStack Keystone (Debian bookworm keystone 2:22.0.2, Zed) on loopback,
# for imgcache's integration tests (test/helpers/keystone.ts drives it).
#
# sqlite database (WAL), fernet tokens, in-process cache, served the way keystone's
# own test server keystone-wsgi-public serves it (wsgiref: one process, one request
# at a time, HTTP/1.0, IPv4), with a bigger listen backlog.
# Everything (config, db, key repositories, policy dir, logs, pid, credentials)
# lives under DATA_DIR; nothing is read from or written to /etc/keystone.
#
# Prerequisite (once per machine, as root):
#   DEBIAN_FRONTEND=noninteractive apt-get install -y -o DPkg::Lock::Timeout=600 \
#       --no-install-recommends keystone sqlite3 curl
#   (keystone also adds a keystone system user, /etc/keystone and a systemd unit
#   that is not started; none of that is used here.)
#
# Usage:
#   keystone.sh start PORT DATA_DIR     start in background; prints the base URL
#                                              (e.g. http://127.0.0.1:15000) on stdout once
#                                              GET /v3 answers 200 and the accounts below
#                                              exist; exit 0.
#   keystone.sh run   PORT DATA_DIR     same, but stays in the foreground; SIGTERM/
#                                              SIGINT to this script stops keystone.
#   keystone.sh stop  DATA_DIR          stop the keystone started on DATA_DIR, by its
#                                              recorded pid (SIGTERM, SIGKILL after 10 s).
#   keystone.sh image-url DATA_DIR URL  repoint the image endpoints at URL (for a
#                                              glance started after keystone on port 0).
# PORT 0 = keystone binds a free port itself; the script reads it back from its log.
# DATA_DIR must not hold a keystone database yet, except one left by a previous start
# on the same DATA_DIR: that is restarted as it is (same accounts, same port).
#
# What start creates:
#   keystone-manage bootstrap: domain Default, project admin, user admin (role admin on
#     project admin and on the system), roles admin -> member -> reader (each implies
#     the next), region RegionOne.
#   Then over the REST API: service "keystone" (identity) with public/internal/admin
#     endpoints BASE/v3; project service with user glance (role admin, for Glance's
#     authtoken middleware); project demo with user demo (roles member and reader);
#     service "glance" (image) with public/internal/admin endpoints GLANCE_URL; an
#     application credential "imgcache-test" of user demo (roles member and reader).
#   DATA_DIR/env.json: URLs, ids, user names, passwords, the application credential's
#     id and secret. DATA_DIR/clouds.yaml (openstacksdk): clouds demo-password and
#     demo-appcred. Both mode 0600.
# Passwords are random per start and never appear in an argv: keystone-manage bootstrap
# reads the admin password from its environment (OS_BOOTSTRAP_PASSWORD) and the REST
# calls are made by an embedded python helper that reads it from its environment too.
#
# Environment knobs (optional):
#   GLANCE_URL               URL of the image endpoints   (default http://127.0.0.1:9292)
#   KEYSTONE_HOST            IPv4 bind address             (default 127.0.0.1)
#   KEYSTONE_READY_TIMEOUT   seconds to wait for readiness (default 90)
#   KEYSTONE_TEMPLATE_DIR    cache directory. The first start that finds no template there
#                            saves a copy of its freshly bootstrapped database (plus the
#                            admin password) under KEYSTONE_TEMPLATE_DIR/keystone-VERSION/;
#                            later starts copy it instead of running keystone-manage
#                            db_sync and bootstrap, then change the admin password.
#                            Safe to share between concurrent starts.
#   KEYSTONE_PASSWORD_HASH_ROUNDS  bcrypt cost for stored passwords and application
#                            credential secrets (default 4, bcrypt's minimum; keystone's own
#                            default is 12, which costs about 0.2 s of CPU per password check)
#   KEYSTONE_DEBUG           true|false                    (default false)
set -euo pipefail

die() { echo "keystone.sh: $*" >&2; exit 1; }

MANAGE=/usr/bin/keystone-manage

# REST and file helper. Reads its inputs from the environment, so that no password
# is ever passed on a command line. Modes: provision, image-url.
ks_py() {
  /usr/bin/python3 -P - "$@" <<'PY'
import json, os, secrets, sys, time, urllib.error, urllib.request

E = os.environ

def call(method, url, body=None, token=None):
    req = urllib.request.Request(url, method=method,
                                 data=None if body is None else json.dumps(body).encode())
    req.add_header('Accept', 'application/json')
    if body is not None:
        req.add_header('Content-Type', 'application/json')
    if token:
        req.add_header('X-Auth-Token', token)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            raw, headers = r.read(), r.headers
    except urllib.error.HTTPError as e:
        sys.exit('%s %s -> %s %s' % (method, url, e.code, e.read()[:500].decode(errors='replace')))
    return (json.loads(raw) if raw else {}), headers

def token_for(v3, user, password, project):
    body = {'auth': {'identity': {'methods': ['password'], 'password': {'user': {
                'name': user, 'domain': {'name': 'Default'}, 'password': password}}},
            'scope': {'project': {'name': project, 'domain': {'name': 'Default'}}}}}
    js, headers = call('POST', v3 + '/auth/tokens', body)
    return headers['X-Subject-Token'], js['token']

def write_private(path, text):
    tmp = path + '.tmp'
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, 'w') as f:
        f.write(text)
    os.replace(tmp, path)

def endpoints(v3, tok, service_type, name, url):
    svc = call('POST', v3 + '/services', {'service': {'type': service_type, 'name': name}}, tok)[0]['service']
    for iface in ('public', 'internal', 'admin'):
        call('POST', v3 + '/endpoints', {'endpoint': {'service_id': svc['id'], 'interface': iface,
                                                      'region_id': 'RegionOne', 'url': url}}, tok)
    return svc['id']

def provision():
    base, glance_url, d = E['KS_URL'], E['GLANCE_URL'], E['DATA_DIR']
    v3 = base + '/v3'
    admin_pw = E['ADMIN_PASSWORD']
    if E.get('OLD_ADMIN_PASSWORD'):
        # Database copied from a template: give admin this start's password. That revokes
        # admin's tokens issued up to the end of this second (keystone stores revocation
        # times to the second), so wait for the next second before asking for a new one.
        tok, t = token_for(v3, 'admin', E['OLD_ADMIN_PASSWORD'], 'admin')
        call('PATCH', v3 + '/users/' + t['user']['id'], {'user': {'password': admin_pw}}, tok)
        time.sleep(1.05 - time.time() % 1)
    tok, t = token_for(v3, 'admin', admin_pw, 'admin')
    admin = {'user_id': t['user']['id'], 'username': 'admin', 'password': admin_pw,
             'project_id': t['project']['id'], 'project_name': 'admin'}
    roles = {r['name']: r['id'] for r in call('GET', v3 + '/roles', token=tok)[0]['roles']}
    identity_id = endpoints(v3, tok, 'identity', 'keystone', v3)

    def project_user(project, user, role_names):
        p = call('POST', v3 + '/projects', {'project': {'name': project, 'domain_id': 'default'}}, tok)[0]['project']
        pw = secrets.token_urlsafe(18)
        u = call('POST', v3 + '/users', {'user': {'name': user, 'domain_id': 'default', 'password': pw,
                                                  'default_project_id': p['id']}}, tok)[0]['user']
        for r in role_names:
            call('PUT', '%s/projects/%s/users/%s/roles/%s' % (v3, p['id'], u['id'], roles[r]), token=tok)
        return {'user_id': u['id'], 'username': user, 'password': pw,
                'project_id': p['id'], 'project_name': project}

    glance = project_user('service', 'glance', ['admin'])
    demo = project_user('demo', 'demo', ['member', 'reader'])
    image_id = endpoints(v3, tok, 'image', 'glance', glance_url)

    demo_tok, _ = token_for(v3, 'demo', demo['password'], 'demo')
    ac = call('POST', '%s/users/%s/application_credentials' % (v3, demo['user_id']),
              {'application_credential': {'name': 'imgcache-test',
                                          'description': 'throwaway test credential'}}, demo_tok)[0]['application_credential']
    env = {'keystone_url': base, 'auth_url': v3, 'region_name': 'RegionOne',
           'user_domain_name': 'Default', 'project_domain_name': 'Default',
           'glance_url': glance_url, 'admin': admin, 'glance': glance, 'demo': demo,
           'application_credential': {'id': ac['id'], 'name': ac['name'], 'secret': ac['secret'],
                                      'user_id': demo['user_id'], 'project_id': demo['project_id']},
           'role_ids': roles, 'service_ids': {'identity': identity_id, 'image': image_id}}
    write_private(os.path.join(d, 'env.json'), json.dumps(env, indent=2) + '\n')

    import yaml
    common = {'region_name': 'RegionOne', 'interface': 'public', 'identity_api_version': 3}
    clouds = {'clouds': {
        'demo-password': dict(auth_type='password', auth={
            'auth_url': v3, 'username': 'demo', 'password': demo['password'],
            'project_name': 'demo', 'user_domain_name': 'Default',
            'project_domain_name': 'Default'}, **common),
        'demo-appcred': dict(auth_type='v3applicationcredential', auth={
            'auth_url': v3, 'application_credential_id': ac['id'],
            'application_credential_secret': ac['secret']}, **common)}}
    write_private(os.path.join(d, 'clouds.yaml'), yaml.safe_dump(clouds, sort_keys=False))

def image_url():
    d, url = E['DATA_DIR'], E['NEW_GLANCE_URL']
    path = os.path.join(d, 'env.json')
    with open(path) as f:
        env = json.load(f)
    v3 = env['auth_url']
    tok, _ = token_for(v3, 'admin', env['admin']['password'], 'admin')
    eps = call('GET', v3 + '/endpoints?service_id=' + env['service_ids']['image'], token=tok)[0]['endpoints']
    for ep in eps:
        call('PATCH', v3 + '/endpoints/' + ep['id'], {'endpoint': {'url': url}}, tok)
    env['glance_url'] = url
    write_private(path, json.dumps(env, indent=2) + '\n')

{'provision': provision, 'image-url': image_url}[sys.argv[1]]()
PY
}

random_password() { head -c 18 /dev/urandom | base64 | tr '+/' '-_'; }

# What keystone-manage fernet_setup / credential_setup write (keys 0 = staged,
# 1 = primary; a key is Fernet.generate_key(): 32 random bytes, urlsafe base64),
# without the 2.5 s it takes keystone-manage to import keystone.
new_key_repo() {
  local repo=$1 i
  rm -rf "$repo"; mkdir -m 700 "$repo"
  for i in 0 1; do head -c 32 /dev/urandom | base64 -w0 | tr '+/' '-_' > "$repo/$i"; done
}

write_config() {
  local dir=$1
  mkdir -p "$dir/etc" "$dir/policy.d"
  cat > "$dir/etc/keystone.conf" <<EOF
[DEFAULT]
use_stderr = true
debug = ${KEYSTONE_DEBUG:-false}

[database]
connection = sqlite:///$dir/keystone.sqlite

[fernet_tokens]
key_repository = $dir/fernet-keys

[fernet_receipts]
key_repository = $dir/fernet-keys

[credential]
key_repository = $dir/credential-keys

[identity]
password_hash_rounds = ${KEYSTONE_PASSWORD_HASH_ROUNDS:-4}

# in-process cache (there is only one process); measured: an authenticated
# GET takes ~40 ms with it, ~100 ms without
[cache]
enabled = true
backend = dogpile.cache.memory

[oslo_policy]
# no policy file: keystone's built-in defaults
policy_file = $dir/etc/policy.yaml
policy_dirs = $dir/policy.d
EOF
}

# Without WAL, keystone's writes soon fail with HTTP 500, "sqlite3.OperationalError:
# database is locked" (seen at the second POST /v3/endpoints). The mode is stored in the file.
set_wal() { [ "$(sqlite3 "$1" 'PRAGMA journal_mode=WAL;')" = wal ] || die "cannot set WAL on $1"; }

# alive PID: exists and is not a zombie (once the script that started it has exited,
# a dead keystone stays a zombie until init reaps it, and kill -0 still succeeds)
alive() { kill -0 "$1" 2>/dev/null && ! grep -q '^[0-9]* (.*) Z' "/proc/$1/stat" 2>/dev/null; }

do_stop() {
  local dir=$1 pid
  [ -f "$dir/keystone.pid" ] || { echo "no pid file in $dir" >&2; return 0; }
  pid=$(cat "$dir/keystone.pid")
  # keystone runs under setsid, so its pid is its process group id: signal the group
  # if it still exists, else the pid alone.
  local target="-$pid"
  kill -0 -- "$target" 2>/dev/null || target=$pid
  if alive "$pid" && ! tr '\0' ' ' < "/proc/$pid/cmdline" | grep -qF -- "--config-file $dir/etc/"; then
    echo "pid $pid is no longer the keystone of $dir; not signalling it" >&2
  elif alive "$pid"; then
    kill -TERM -- "$target" 2>/dev/null || true
    for _ in $(seq 1 100); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then kill -KILL -- "$target" 2>/dev/null || true; fi
  fi
  rm -f "$dir/keystone.pid"
}

fail() {  # fail LOG MESSAGE: show the log's tail, exit 1 (the EXIT trap cleans up)
  tail -n 30 "$1" >&2 || true
  die "$2 (log: $1)"
}

# While a start is under way, KS_DIR / BOOTSTRAP_PID name what it has started, so
# that any failure or signal stops it again.
KS_DIR="" BOOTSTRAP_PID=""
cleanup() {
  [ -z "$BOOTSTRAP_PID" ] || kill "$BOOTSTRAP_PID" 2>/dev/null || true
  [ -z "$KS_DIR" ] || do_stop "$KS_DIR"
}
trap cleanup EXIT

do_start() {
  local port=$1 dir=$2 host=${KEYSTONE_HOST:-127.0.0.1} timeout=${KEYSTONE_READY_TIMEOUT:-90}
  case "$port" in ''|*[!0-9]*) die "PORT must be a number (0 = any free port)";; esac
  command -v sqlite3 >/dev/null || die "sqlite3 is missing (apt-get install sqlite3)"
  mkdir -p "$dir"; dir=$(cd "$dir" && pwd)
  if [ -f "$dir/keystone.pid" ] && alive "$(cat "$dir/keystone.pid")"; then
    die "a keystone started on $dir is already running (pid $(cat "$dir/keystone.pid"))"
  fi
  local restart=false
  if [ -e "$dir/keystone.sqlite" ]; then
    [ -s "$dir/env.json" ] || die "$dir holds a keystone.sqlite but no env.json; use an empty DATA_DIR"
    local old_port
    old_port=$(/usr/bin/python3 -P -c 'import json,sys,urllib.parse as u; print(u.urlsplit(json.load(open(sys.argv[1]))["keystone_url"]).port)' "$dir/env.json")
    [ "$port" = 0 ] || [ "$port" = "$old_port" ] || die "$dir was set up for port $old_port, not $port"
    port=$old_port restart=true
  fi

  local mlog=$dir/keystone-manage.log log=$dir/keystone.log
  local admin_pw old_admin_pw="" tmpl=""
  if ! $restart; then
    write_config "$dir"
    new_key_repo "$dir/fernet-keys"
    new_key_repo "$dir/credential-keys"
    admin_pw=$(random_password)
    if [ -n "${KEYSTONE_TEMPLATE_DIR:-}" ]; then
      local ver   # a template only fits the keystone version that made it
      ver=$(dpkg-query -W -f '${Version}' python3-keystone 2>/dev/null) ||
        ver=$(/usr/bin/python3 -P -c 'import importlib.metadata as m; print(m.version("keystone"))')
      tmpl=$KEYSTONE_TEMPLATE_DIR/keystone-${ver//[^A-Za-z0-9.+~-]/_}
    fi
    : > "$mlog"
    if [ -n "$tmpl" ] && [ -s "$tmpl/admin-password" ]; then
      cp "$tmpl/keystone.sqlite" "$dir/keystone.sqlite"
      old_admin_pw=$(<"$tmpl/admin-password")
      set_wal "$dir/keystone.sqlite"
    else
      "$MANAGE" --config-file "$dir/etc/keystone.conf" db_sync >>"$mlog" 2>&1 ||
        fail "$mlog" "keystone-manage db_sync failed"
      set_wal "$dir/keystone.sqlite"
      # bootstrap runs while the server starts (both spend ~3 s importing keystone)
      OS_BOOTSTRAP_PASSWORD=$admin_pw "$MANAGE" --config-file "$dir/etc/keystone.conf" \
          bootstrap --bootstrap-region-id RegionOne >>"$mlog" 2>&1 &
      BOOTSTRAP_PID=$!
    fi
  fi

  : > "$log"
  # What /usr/bin/keystone-wsgi-public does (keystone's wsgiref test server: one
  # request at a time, HTTP/1.0), but with a listen backlog of 128 instead of 5: with
  # 5, connections beyond ~6 at once are dropped and their clients retry only 1 s later.
  # setsid: own process group, so the harness's signals to its own group do not hit
  # keystone by accident; stdin from /dev/null; it does not daemonize.
  OS_KEYSTONE_CONFIG_FILES=$dir/etc/keystone.conf setsid /usr/bin/python3 -P -c '
import sys, wsgiref.simple_server as wss
from keystone.server.wsgi import initialize_public_application
class Server(wss.WSGIServer):
    request_queue_size = 128
host, port = sys.argv[1], int(sys.argv[2])
sys.argv[1:] = sys.argv[3:]   # what keystone parses: --config-file ...
server = wss.make_server(host, port, initialize_public_application(), server_class=Server)
print("Available at http://%s:%d/" % (host, server.server_port), flush=True)
server.serve_forever()' "$host" "$port" --config-file "$dir/etc/keystone.conf" \
      </dev/null >>"$log" 2>&1 &
  local pid=$!
  echo "$pid" > "$dir/keystone.pid"
  KS_DIR=$dir

  if [ -n "$BOOTSTRAP_PID" ]; then
    wait "$BOOTSTRAP_PID" || fail "$mlog" "keystone-manage bootstrap failed"
    BOOTSTRAP_PID=""
    if [ -n "$tmpl" ]; then
      # save the bootstrapped db as the template; the rename is atomic, and fails
      # harmlessly when a concurrent start got there first
      mkdir -p "$KEYSTONE_TEMPLATE_DIR"
      local t; t=$(mktemp -d "$KEYSTONE_TEMPLATE_DIR/.new.XXXXXX")
      sqlite3 "$dir/keystone.sqlite" ".backup '$t/keystone.sqlite'"
      (umask 077; printf '%s' "$admin_pw" > "$t/admin-password")
      mv -T "$t" "$tmpl" 2>/dev/null || rm -rf "$t"
    fi
  fi

  # The server prints "Available at http://NAME:PORT/" once it has bound its port.
  local bound="" url="" deadline=$((SECONDS + timeout))
  while [ $SECONDS -lt $deadline ]; do
    alive "$pid" || fail "$log" "keystone exited before becoming ready"
    bound=$(sed -n 's#^Available at http://.*:\([0-9][0-9]*\)/$#\1#p' "$log")
    if [ -n "$bound" ] &&
       [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$host:$bound/v3" 2>/dev/null || true)" = 200 ]; then
      url="http://$host:$bound"; break
    fi
    sleep 0.1
  done
  [ -n "$url" ] || fail "$log" "keystone not ready after ${timeout}s"

  if ! $restart; then
    KS_URL=$url GLANCE_URL=${GLANCE_URL:-http://127.0.0.1:9292} DATA_DIR=$dir \
      ADMIN_PASSWORD=$admin_pw OLD_ADMIN_PASSWORD=$old_admin_pw ks_py provision ||
      fail "$log" "creating the projects, users and endpoints failed"
  fi
  KS_DIR=
  echo "$url" > "$dir/url"
  echo "$url"
}

cmd=${1:-}
case "$cmd" in
  start)
    [ $# -eq 3 ] || die "usage: $0 start PORT DATA_DIR"
    trap 'exit 1' TERM INT HUP
    do_start "$2" "$3" ;;
  run)
    [ $# -eq 3 ] || die "usage: $0 run PORT DATA_DIR"
    mkdir -p "$3"; d=$(cd "$3" && pwd)
    trap 'KS_DIR=$d; exit 0' TERM INT HUP
    do_start "$2" "$d"
    # wait on keystone; when it exits by itself, so do we
    p=$(cat "$d/keystone.pid")
    while alive "$p"; do sleep 0.5 & wait $! || true; done
    ;;
  stop)  [ $# -eq 2 ] || die "usage: $0 stop DATA_DIR"; [ -d "$2" ] || exit 0; do_stop "$(cd "$2" && pwd)" ;;
  image-url)
    [ $# -eq 3 ] || die "usage: $0 image-url DATA_DIR URL"
    [ -s "$2/env.json" ] || die "no env.json in $2"
    DATA_DIR=$2 NEW_GLANCE_URL=$3 ks_py image-url ;;
  *) die "usage: $0 {start PORT DATA_DIR | run PORT DATA_DIR | stop DATA_DIR | image-url DATA_DIR URL}" ;;
esac
