/**
 * The agent imgcache runs on an SSH node for the length of a run: one python3 process on one SSH
 * channel, answering JSON requests line by line. It holds the nova-compatible locks (POSIX fcntl,
 * as oslo.concurrency takes them) and does the file operations, so that each costs one round trip
 * and no process start. Its stdin is the channel: when the connection drops or imgcache dies,
 * stdin closes, the agent exits, and the kernel releases every lock it held.
 *
 * Written for the python3 every compute host has (3.6 and newer; standard library only). The scan
 * returns exactly what LocalNode's scan returns (test/integration checks they agree).
 *
 * Protocol: → {"id": 1, "op": "...", ...}  ← {"id": 1, "ok": true, "result": ...}
 *                                          ← {"id": 1, "ok": false, "error": {"code": "ENOENT", "message": "..."}}
 * Lock waits are polled with LOCK_NB every 50 ms, as fasteners does; other requests are answered
 * meanwhile.
 */
export const AGENT_PY = String.raw`
import base64, errno, fcntl, hashlib, json, mmap, os, select, signal, stat as S, subprocess, sys, time

held = {}
pending = []
children = {}

def reply(o):
    sys.stdout.write(json.dumps(o) + "\n"); sys.stdout.flush()

def ecode(e):
    return errno.errorcode.get(e.errno, "EIO") if getattr(e, "errno", None) else "EIO"

def kind(m):
    if S.S_ISLNK(m): return "symlink"
    if S.S_ISREG(m): return "file"
    if S.S_ISDIR(m): return "dir"
    return "other"

def ms(ns):
    # As Node computes mtimeMs: seconds * 1e3 + nanoseconds / 1e6, in doubles.
    return (ns // 1000000000) * 1e3 + (ns % 1000000000) / 1e6

def entry(d, name):
    p = os.path.join(d, name)
    l = os.lstat(p)
    e = {"allocated": l.st_blocks * 512, "ctimeMs": ms(l.st_ctime_ns), "dev": l.st_dev,
         "mtimeMs": ms(l.st_mtime_ns), "name": name, "size": l.st_size, "type": kind(l.st_mode)}
    if e["type"] == "symlink":
        try: e["symlinkTarget"] = os.readlink(p)
        except OSError: e["symlinkTarget"] = ""
        try:
            t = os.stat(p)
            e["targetType"] = "file" if S.S_ISREG(t.st_mode) else "dir" if S.S_ISDIR(t.st_mode) else "other"
            e["mtimeMs"] = ms(t.st_mtime_ns); e["size"] = t.st_size
        except OSError:
            e["targetType"] = "missing"
    return e

def head(p, n):
    with open(p, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        return f.read(min(n, size)), size

def b64(b):
    return base64.b64encode(b).decode("ascii")

def is_disk(n):
    return n in ("disk", "kernel", "ramdisk") or (n.startswith("disk.") and not n.startswith("disk.info"))

def is_overlay_tmp(n):
    # naming.ts OVERLAY_TEMPORARY: .<disk>.imgcache-<8 hex>.tmp
    return (len(n) >= 24 and n[0] == "." and n[-22:-12] == ".imgcache-" and n[-4:] == ".tmp"
            and all(c in "0123456789abcdef" for c in n[-12:-4]))

def read_text(p):
    with open(p, "rb") as f:
        return f.read().decode("utf-8", "replace")

def fsusage(p):
    v = os.statvfs(p)
    return {"available": v.f_bavail * v.f_frsize, "total": v.f_blocks * v.f_frsize}

def scan(q):
    out = {"cacheDir": {"entries": [], "exists": False}, "domainXml": [], "instanceDirs": [],
           "instancesPath": {"exists": False}, "lockDir": {"entries": [], "exists": False},
           "now": time.time() * 1000, "sidecars": {}}
    ip, cd = q["instancesPath"], q["cacheDir"]
    try:
        s = os.stat(ip)
        out["instancesPath"] = {"dev": s.st_dev, "exists": S.S_ISDIR(s.st_mode)}
        if not S.S_ISDIR(s.st_mode):
            out["instancesPath"].update({"error": "not a directory", "errorCode": "ENOTDIR"})
            return out
        top = list(os.scandir(ip))
    except OSError as e:
        out["instancesPath"] = {"error": e.strerror or str(e), "errorCode": ecode(e), "exists": False}
        return out
    dirs = []
    for d in top:
        if not d.is_dir(follow_symlinks=False) or os.path.join(ip, d.name) == cd: continue
        r = {"disks": [], "name": d.name}
        dp = os.path.join(ip, d.name)
        try:
            files = [f for f in os.scandir(dp) if f.is_file(follow_symlinks=False) or f.is_symlink()]
        except OSError as e:
            r["error"] = "cannot list %s: %s" % (dp, e.strerror); dirs.append(r); continue
        for f in files:
            fp = os.path.join(dp, f.name)
            if is_overlay_tmp(f.name):
                try: l = os.lstat(fp)
                except OSError: continue
                r.setdefault("temporaries", []).append({"mtimeMs": ms(l.st_mtime_ns), "name": f.name, "size": l.st_size})
            elif f.name == "libvirt.xml":
                try: r["libvirtXml"] = read_text(fp)
                except OSError: pass
            elif is_disk(f.name):
                disk = {"name": f.name}
                try:
                    h, size = head(fp, q["headBytes"]); disk["head"] = b64(h); disk["size"] = size
                except OSError as e:
                    disk["error"] = "cannot read: %s" % (e.strerror or e); disk["errorCode"] = ecode(e)
                r["disks"].append(disk)
        r["disks"].sort(key=lambda x: x["name"])
        if "temporaries" in r: r["temporaries"].sort(key=lambda x: x["name"])
        dirs.append(r)
    dirs.sort(key=lambda x: x["name"])
    out["instanceDirs"] = dirs
    try:
        names = os.listdir(cd)
        out["cacheDir"]["exists"] = True
    except OSError as e:
        c = ecode(e)
        out["cacheDir"] = {"entries": [], "exists": False, "errorCode": c}
        if c != "ENOENT": out["cacheDir"]["error"] = e.strerror
        names = []
    for n in names:
        try:
            e = entry(cd, n)
        except OSError:
            continue
        if q["cacheHeadBytes"] > 0 and (e["type"] == "file" or e.get("targetType") == "file"):
            try: e["head"] = b64(head(os.path.join(cd, n), q["cacheHeadBytes"])[0])
            except OSError: pass
        out["cacheDir"]["entries"].append(e)
    sd = os.path.join(cd, ".imgcache")
    try:
        for n in os.listdir(sd):
            if n.endswith(".json"):
                try: out["sidecars"][n[:-5]] = read_text(os.path.join(sd, n))
                except OSError: pass
    except OSError: pass
    try: out["lockDir"] = {"entries": sorted(os.listdir(q["lockDir"])), "exists": True}
    except OSError: pass
    for xd in q["domainXmlDirs"]:
        try: names = sorted(os.listdir(xd))
        except OSError: continue
        for n in names:
            if n.endswith(".xml"):
                try: out["domainXml"].append({"path": os.path.join(xd, n), "text": read_text(os.path.join(xd, n))})
                except OSError: pass
    out["domainXml"].sort(key=lambda x: x["path"])
    try: out["fs"] = fsusage(cd if out["cacheDir"]["exists"] else ip)
    except OSError: pass
    return out

def read_ranges(q):
    res = []
    for r in q["ranges"]:
        try:
            with open(r["path"], "rb") as f:
                f.seek(r["offset"]); res.append(b64(f.read(r["length"])))
        except OSError as e:
            if e.errno == errno.ENOENT: res.append("")
            else: raise
    return res

def remove(q):
    p = q["path"]
    try: l = os.lstat(p)
    except OSError as e:
        if e.errno == errno.ENOENT: return "missing"
        raise
    if S.S_ISDIR(l.st_mode): raise OSError(errno.EISDIR, "is a directory", p)
    if q.get("olderThanMs") is not None:
        m = l.st_mtime_ns
        if S.S_ISLNK(l.st_mode):
            try: m = os.stat(p).st_mtime_ns
            except OSError: pass
        if ms(m) > q["olderThanMs"]: return "too-young"
    try: os.unlink(p)
    except OSError as e:
        if e.errno == errno.ENOENT: return "missing"
        raise
    return "removed"

def fsync_dir(d):
    fd = os.open(d, os.O_RDONLY)
    try: os.fsync(fd)
    except OSError: pass
    finally: os.close(fd)

def rename(q):
    if q.get("noReplace"):
        # link(2) fails with EEXIST instead of replacing: a file someone made meanwhile is never lost.
        os.link(q["from"], q["to"]); os.unlink(q["from"])
    else:
        os.rename(q["from"], q["to"])
    fsync_dir(os.path.dirname(q["to"]) or "."); return None

def sync_file(q):
    fd = os.open(q["path"], os.O_RDONLY)
    try: os.fsync(fd)
    finally: os.close(fd)

def write_atomic(q):
    p = q["path"]; t = os.path.join(os.path.dirname(p), ".%s.%d.tmp" % (os.path.basename(p), os.getpid()))
    try:
        fd = os.open(t, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, q.get("mode", 0o644))
        try:
            os.write(fd, base64.b64decode(q["data"])); os.fsync(fd)
        finally: os.close(fd)
        os.rename(t, p); fsync_dir(os.path.dirname(p) or ".")
    except OSError:
        try: os.unlink(t)
        except OSError: pass
        raise

def direct_io(q):
    # Nova's probe (nova/privsep/utils.py supports_direct_io): one aligned block written with O_DIRECT.
    p = os.path.join(q["dir"], ".directio.test.imgcache.%d" % os.getpid())
    fd = None
    try:
        fd = os.open(p, os.O_CREAT | os.O_WRONLY | getattr(os, "O_DIRECT", 0))
        m = mmap.mmap(-1, 4096); m.write(b"x" * 4096); os.write(fd, m); return True
    except OSError:
        return False
    finally:
        if fd is not None: os.close(fd)
        try: os.unlink(p)
        except OSError: pass

def digest(q):
    h = hashlib.new(q["algorithm"])
    with open(q["path"], "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b: break
            h.update(b)
    return h.hexdigest()

def stat_one(q):
    try: return entry(os.path.dirname(q["path"]) or "/", os.path.basename(q["path"]))
    except OSError as e:
        if e.errno == errno.ENOENT: return None
        raise

def text(q):
    try: return read_text(q["path"])
    except OSError as e:
        if e.errno == errno.ENOENT: return None
        raise

def conf_file(p):
    try: return {"path": p, "text": read_text(p)}
    except OSError as e: return {"path": p, "errorCode": ecode(e), "error": e.strerror or str(e)}

def read_conf(q):
    # oslo.config's --config-dir: glob("*.conf") in sorted order (a glob skips hidden names).
    dirs = []
    for d in q["dirs"]:
        try: names = sorted(n for n in os.listdir(d) if n.endswith(".conf") and not n.startswith("."))
        except OSError as e:
            dirs.append({"path": d, "files": [], "errorCode": ecode(e), "error": e.strerror or str(e)}); continue
        dirs.append({"path": d, "files": [conf_file(os.path.join(d, n)) for n in names]})
    return {"files": [conf_file(p) for p in q["files"]], "dirs": dirs}

def touch(q):
    for p in q["paths"]: os.utime(p, None)

def mkdirp(q):
    os.makedirs(q["path"], exist_ok=True)

def spawn(q):
    # A program that must not outlive the connection (curl fetching into the cache): its stdin gets
    # q["input"] (secrets travel this way, never in its argv); stdout goes nowhere; stderr is kept.
    p = subprocess.Popen(q["argv"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         env=dict(os.environ, LC_ALL="C", LANG="C"))
    try:
        p.stdin.write(base64.b64decode(q.get("input", ""))); p.stdin.close()
    except OSError:
        pass
    os.set_blocking(p.stderr.fileno(), False)
    children[p.pid] = {"p": p, "err": b""}
    return p.pid

def drain(c):
    try:
        while True:
            b = c["p"].stderr.read(65536)
            if not b: break
            c["err"] = (c["err"] + b)[-8192:]
    except (BlockingIOError, ValueError, OSError):
        pass

def status(q):
    c = children.get(q["pid"])
    if c is None: return {"running": False, "exitCode": None, "stderr": "unknown process"}
    drain(c)
    rc = c["p"].poll()
    out = {"running": rc is None, "exitCode": rc, "stderr": c["err"].decode("utf-8", "replace")}
    if q.get("path"):
        try: out["bytes"] = os.stat(q["path"]).st_size
        except OSError: out["bytes"] = 0
    if rc is not None:
        children.pop(q["pid"], None)
    return out

def kill(q):
    c = children.get(q["pid"])
    if c is not None and c["p"].poll() is None:
        c["p"].terminate()
        try: c["p"].wait(5)
        except subprocess.TimeoutExpired: c["p"].kill(); c["p"].wait()
    children.pop(q["pid"], None)

def reap_all():
    for c in list(children.values()):
        if c["p"].poll() is None:
            c["p"].terminate()
    for c in list(children.values()):
        try: c["p"].wait(5)
        except subprocess.TimeoutExpired: c["p"].kill()

OPS = {"digest": digest, "direct_io": direct_io, "kill": kill, "mkdirp": mkdirp, "read_conf": read_conf, "read_ranges": read_ranges,
       "read_text": text,
       "remove": remove, "rename": rename, "scan": scan, "stat": stat_one, "statfs": lambda q: fsusage(q["path"]),
       "spawn": spawn, "status": status, "sync_file": sync_file, "touch": touch, "write_atomic": write_atomic}

def attempt(path):
    if path in held: return None
    d = os.path.dirname(path)
    if d: os.makedirs(d, exist_ok=True)
    f = open(path, "a")
    try:
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        f.close()
        if e.errno in (errno.EAGAIN, errno.EACCES): return None
        raise
    return f

def on_term(signum, frame):
    reap_all(); os._exit(0)

signal.signal(signal.SIGTERM, on_term)
signal.signal(signal.SIGHUP, on_term)
reply({"ready": True, "pid": os.getpid()})
buf = b""
while True:
    r, _, _ = select.select([0], [], [], 0.05 if pending else None)
    if r:
        chunk = os.read(0, 1 << 16)
        if not chunk:
            # The connection is gone (or imgcache closed it): nothing we started may outlive it.
            reap_all(); break
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if not line.strip(): continue
            q = json.loads(line.decode("utf-8"))
            op = q["op"]
            if op == "lock":
                pending.append((q["id"], q["path"], time.monotonic() + float(q["timeout"])))
            elif op == "unlock":
                f = held.pop(q["path"], None)
                if f is not None:
                    fcntl.lockf(f, fcntl.LOCK_UN); f.close()
                reply({"id": q["id"], "ok": True})
            elif op == "cancel":
                before = len(pending)
                pending = [p for p in pending if p[0] != q["target"]]
                if len(pending) != before: reply({"id": q["target"], "ok": False, "error": "cancelled"})
            else:
                try:
                    reply({"id": q["id"], "ok": True, "result": OPS[op](q)})
                except OSError as e:
                    reply({"id": q["id"], "ok": False, "error": "os", "errno": ecode(e),
                           "message": "%s: %s" % (getattr(e, "filename", None) or "", e.strerror or e)})
                except Exception as e:
                    reply({"id": q["id"], "ok": False, "error": "failed", "message": "%s: %s" % (type(e).__name__, e)})
    waiting = []
    for p in pending:
        try:
            f = attempt(p[1])
        except OSError as e:
            reply({"id": p[0], "ok": False, "error": "os", "message": "%s: %s" % (p[1], e.strerror)}); continue
        if f is not None:
            held[p[1]] = f; reply({"id": p[0], "ok": True}); continue
        if time.monotonic() >= p[2]:
            reply({"id": p[0], "ok": False, "error": "busy"}); continue
        waiting.append(p)
    pending = waiting
`
