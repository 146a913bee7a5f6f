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
 *
 * Living beside nova-compute (DESIGN §10). The agent starts as whoever ran imgcache (root, as a
 * rule). `own` names the instances path; from then on every change under it (directories, lock
 * files, temporaries, renames, removals, metadata, and the programs it spawns) is made with the
 * effective uid/gid of the instances path's owner (nova), under umask 022, so what imgcache leaves is
 * nova's by construction and a link planted by nova can never make root write anything. Only reads,
 * and the touch Nova itself makes through its privileged helper (a base libvirt gave to its qemu
 * user), keep root's identity; the touch never follows a link. Temporaries and lock files are
 * opened O_NOFOLLOW (O_EXCL where they must be new) and must be regular files: anything else is
 * refused (`unsafe`) before a byte is written.
 */
export const AGENT_PY = String.raw`
import base64, errno, fcntl, hashlib, json, mmap, os, select, signal, stat as S, subprocess, sys, time

held = {}
pending = []
children = {}
# (uid, gid, groups) of the instances path's owner while this agent runs as root and the owner is
# someone else; None means "act as we are".
OWNER = None
ROOT_GROUPS = os.getgroups()
os.umask(0o022)

class Unsafe(Exception):
    # A link or a non-regular file where imgcache must write: refused, nothing written.
    def __init__(self, path, what):
        Exception.__init__(self, "%s %s" % (path, what)); self.path = path; self.what = what

class AsOwner(object):
    # Effective ids of the owner for the length of one operation (the agent is single-threaded).
    def __enter__(self):
        if OWNER:
            os.setgroups(OWNER[2]); os.setegid(OWNER[1]); os.seteuid(OWNER[0])
    def __exit__(self, *exc):
        if OWNER:
            os.seteuid(0); os.setegid(0); os.setgroups(ROOT_GROUPS)
        return False

def drop_for_good():
    # In a child about to exec a program (curl, aria2c): the owner's ids, all three of them.
    if OWNER:
        os.setgroups(OWNER[2]); os.setresgid(OWNER[1], OWNER[1], OWNER[1]); os.setresuid(OWNER[0], OWNER[0], OWNER[0])
    os.umask(0o022)

def owner_groups(uid, gid):
    try:
        import pwd
        return sorted(set(os.getgrouplist(pwd.getpwuid(uid).pw_name, gid)))
    except (KeyError, OSError, AttributeError):
        return [gid]  # a uid with no name on the host (Kolla's 42436): its own group only

def link_owner_ok(p, owner_uid):
    # A symlinked instances path or cache dir is followed only when the link and its target belong to
    # root or to the instances path's owner: anyone else could point it anywhere.
    l = os.lstat(p)
    if not S.S_ISLNK(l.st_mode): return
    t = os.stat(p)
    if l.st_uid not in (0, owner_uid):
        raise Unsafe(p, "is a symbolic link owned by uid %d, neither root nor the instances path's owner (uid %d): not followed" % (l.st_uid, owner_uid))
    if t.st_uid not in (0, owner_uid):
        raise Unsafe(p, "is a symbolic link to %s, owned by uid %d, neither root nor the instances path's owner (uid %d): not followed" % (os.path.realpath(p), t.st_uid, owner_uid))

def own(q):
    global OWNER
    ip = q["instancesPath"]
    try:
        l = os.lstat(ip)
    except FileNotFoundError:
        OWNER = None
        return {"uid": os.geteuid(), "gid": os.getegid(), "euid": os.geteuid(), "exists": False}
    t = os.stat(ip)
    if S.S_ISLNK(l.st_mode) and l.st_uid not in (0, t.st_uid):
        raise Unsafe(ip, "is a symbolic link owned by uid %d, neither root nor the owner of its target (uid %d): not followed" % (l.st_uid, t.st_uid))
    uid, gid = t.st_uid, t.st_gid
    for p in q.get("dirs", []):
        try: link_owner_ok(p, uid)
        except FileNotFoundError: pass
    euid = os.geteuid()
    OWNER = (uid, gid, owner_groups(uid, gid)) if euid == 0 and uid != 0 else None
    if OWNER:
        # Directories an earlier imgcache made as root (real directories, not links, owned by root):
        # handed to the owner, or nova-compute could never write its own downloads and locks there.
        for p in q.get("dirs", []):
            try: fd = os.open(p, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            except OSError: continue
            try:
                st = os.fstat(fd)
                if st.st_uid == 0: os.fchown(fd, uid, gid); os.fchmod(fd, 0o755)
            finally: os.close(fd)
    return {"uid": uid, "gid": gid, "euid": euid, "exists": True}

def unsafe_errno(e, p):
    if e.errno == errno.ELOOP: return Unsafe(p, "is a symbolic link")
    if e.errno in (errno.ENXIO, errno.EISDIR, errno.EWOULDBLOCK): return Unsafe(p, "is not a regular file")
    return None

def open_regular(p, flags, mode=0o644):
    # O_NOFOLLOW: a link at the name is refused (ELOOP), never followed; O_NONBLOCK: a FIFO planted at
    # the name cannot make us wait. Then it must be a regular file.
    try:
        fd = os.open(p, flags | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0), mode)
    except OSError as e:
        u = unsafe_errno(e, p)
        if u: raise u
        raise
    st = os.fstat(fd)
    if not S.S_ISREG(st.st_mode):
        os.close(fd); raise Unsafe(p, "is not a regular file")
    return fd, st

def create(q):
    # A temporary the caller writes next (a download's .part): as the owner, never through a link.
    p = q["path"]
    with AsOwner():
        try: l = os.lstat(p)
        except FileNotFoundError: l = None
        if l is not None and S.S_ISLNK(l.st_mode): raise Unsafe(p, "is a symbolic link")
        if l is not None and not S.S_ISREG(l.st_mode): raise Unsafe(p, "is not a regular file")
        if q.get("append") and l is not None:
            fd, st = open_regular(p, os.O_WRONLY | os.O_APPEND)
        else:
            if l is not None: os.unlink(p)
            try:
                fd, st = open_regular(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                raise Unsafe(p, "appeared while it was being made (something else writes there)")
        os.close(fd)
    return {"dev": st.st_dev, "ino": st.st_ino, "size": st.st_size}

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

# naming.ts BOOT_FILE_NAMES: the kernel and ramdisk copies Nova makes in an instance directory.
BOOT = ("kernel", "kernel.rescue", "ramdisk", "ramdisk.rescue")

def is_disk(n):
    return n == "disk" or n in BOOT or (n.startswith("disk.") and not n.startswith("disk.info"))

def sha256_file(p):
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b: break
            h.update(b)
    return h.hexdigest()

def compare_boot(q, out, boots, heads):
    # local-scan.ts compareBootFiles: hash a boot file only when a cache file has its size and first
    # bytes (as far as both heads go), and each such cache file once.
    by_size = {}
    for e in out["cacheDir"]["entries"]:
        # Regular files only: nothing in a cache dir is read through a link (DESIGN §10).
        if e["type"] == "file" and e["size"] > 0:
            by_size.setdefault(e["size"], []).append(e)
    hashed = set()
    for fp, disk, h in boots:
        cands = []
        for e in by_size.get(disk["size"], []):
            c = heads.get(e["name"])
            n = min(len(h), len(c)) if c is not None else 0
            if c is None or h[:n] == c[:n]: cands.append(e)
        if not cands: continue
        try:
            disk["digest"] = sha256_file(fp)
        except OSError as e:
            disk.pop("head", None); disk.pop("size", None)
            disk["error"] = "cannot read: %s" % (e.strerror or e); disk["errorCode"] = ecode(e)
            continue
        for e in cands:
            if e["name"] in hashed: continue
            hashed.add(e["name"])
            try: e["digest"] = sha256_file(os.path.join(q["cacheDir"], e["name"]))
            except OSError as x: e["digestError"] = x.strerror or str(x)

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
    boots = []
    heads = {}
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
                    if f.name in BOOT: boots.append((fp, disk, h))
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
        if q["cacheHeadBytes"] > 0 and e["type"] == "file":
            try:
                h = head(os.path.join(cd, n), q["cacheHeadBytes"])[0]; e["head"] = b64(h); heads[n] = h
            except OSError: pass
        out["cacheDir"]["entries"].append(e)
    if q.get("compareBootFiles"): compare_boot(q, out, boots, heads)
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
    with AsOwner(): return remove_(q)

def remove_(q):
    p = q["path"]
    try: l = os.lstat(p)
    except OSError as e:
        if e.errno == errno.ENOENT: return "missing"
        raise
    if S.S_ISDIR(l.st_mode): raise OSError(errno.EISDIR, "is a directory", p)
    # q["onlyRegular"]: a name only imgcache or its programs write (aria2c's control file): a link or
    # anything else found there was planted, and is refused and left for the operator to see.
    if q.get("onlyRegular"): refuse_planted(p, l)
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
    with AsOwner(): return rename_(q)

def rename_(q):
    if q.get("noReplace"):
        # link(2) fails with EEXIST instead of replacing: a file someone made meanwhile is never lost.
        os.link(q["from"], q["to"]); os.unlink(q["from"])
    else:
        os.rename(q["from"], q["to"])
    fsync_dir(os.path.dirname(q["to"]) or "."); return None

def sync_file(q):
    fd = os.open(q["path"], os.O_RDONLY | os.O_NOFOLLOW)
    try: os.fsync(fd)
    finally: os.close(fd)

def write_atomic(q):
    with AsOwner(): return write_atomic_(q)

def refuse_planted(p, l):
    if S.S_ISLNK(l.st_mode): raise Unsafe(p, "is a symbolic link (to %s)" % os.readlink(p))
    if not S.S_ISREG(l.st_mode): raise Unsafe(p, "is not a regular file")

def write_atomic_(q):
    p = q["path"]
    if q.get("onlyRegular"):
        # The rename below would replace a link, never follow it; but a link at a name that is imgcache's
        # alone was planted, and the run refuses it rather than clear it away unseen.
        try: refuse_planted(p, os.lstat(p))
        except FileNotFoundError: pass
    t = os.path.join(os.path.dirname(p), ".%s.%s.tmp" % (os.path.basename(p), os.urandom(6).hex()))
    try:
        fd, _ = open_regular(t, os.O_WRONLY | os.O_CREAT | os.O_EXCL, q.get("mode", 0o644))
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
    with AsOwner(): return direct_io_(q)

def direct_io_(q):
    p = os.path.join(q["dir"], ".directio.test.imgcache.%s" % os.urandom(6).hex())
    fd = None
    try:
        fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_WRONLY | getattr(os, "O_DIRECT", 0), 0o644)
        m = mmap.mmap(-1, 4096); m.write(b"x" * 4096); os.write(fd, m); return True
    except OSError:
        return False
    finally:
        if fd is not None:
            os.close(fd)
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
    # Nova touches through its privileged helper (nova.privsep.path.utime): a base that libvirt's
    # dynamic ownership gave to its qemu user is not the owner's to touch. Root's, then, but never
    # through a link: a link in the cache dir has its own times set, its target is left alone.
    for p in q["paths"]: os.utime(p, None, follow_symlinks=False)

def mkdirp(q):
    with AsOwner(): os.makedirs(q["path"], exist_ok=True)

def spawn(q):
    # A program that must not outlive the connection (curl fetching into the cache): its stdin gets
    # q["input"] (secrets travel this way, never in its argv); stdout goes nowhere; stderr is kept.
    # q["mergeOutput"]: its stdout joins the kept stderr (aria2c's progress summaries go to stdout).
    # q["stopWithAgent"]: aria2c's own watch on this agent (--stop-with-process), so that it ends even
    # when the agent is killed outright and cannot reap it.
    argv = q["argv"] + (["--stop-with-process=%d" % os.getpid()] if q.get("stopWithAgent") else [])
    merge = bool(q.get("mergeOutput"))
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE if merge else subprocess.DEVNULL,
                         stderr=subprocess.STDOUT if merge else subprocess.PIPE,
                         env=dict(os.environ, LC_ALL="C", LANG="C"), preexec_fn=drop_for_good)
    out = p.stdout if merge else p.stderr
    try:
        p.stdin.write(base64.b64decode(q.get("input", ""))); p.stdin.close()
    except OSError:
        pass
    os.set_blocking(out.fileno(), False)
    children[p.pid] = {"p": p, "err": b"", "out": out}
    return p.pid

def drain(c):
    try:
        while True:
            b = c["out"].read(65536)
            if b == b"": c["eof"] = True
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

OPS = {"create": create, "own": own, "digest": digest, "direct_io": direct_io, "kill": kill, "mkdirp": mkdirp, "read_conf": read_conf,
       "read_ranges": read_ranges, "read_text": text,
       "remove": remove, "rename": rename, "scan": scan, "stat": stat_one, "statfs": lambda q: fsusage(q["path"]),
       "spawn": spawn, "status": status, "sync_file": sync_file, "touch": touch, "write_atomic": write_atomic}

def open_lock(path):
    # As oslo.concurrency (fasteners) opens it: for append, created if missing, never truncated; but
    # as the owner, never through a link, and only a regular file. A lock file that exists is used as
    # it is: one root made before (an older imgcache) is opened as root, still O_NOFOLLOW.
    d = os.path.dirname(path)
    with AsOwner():
        if d: os.makedirs(d, exist_ok=True)
        try:
            return open_regular(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)[0]
        except PermissionError:
            if not OWNER: raise
    return open_regular(path, os.O_WRONLY | os.O_APPEND)[0]

def attempt(path):
    if path in held: return None
    fd = open_lock(path)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EAGAIN, errno.EACCES): return None
        raise
    return fd

def on_term(signum, frame):
    reap_all(); os._exit(0)

signal.signal(signal.SIGTERM, on_term)
signal.signal(signal.SIGHUP, on_term)
# A terminal's Ctrl-C is imgcache's to handle: it then removes its temporaries and releases its
# locks through this very agent, which ends when its stdin closes.
signal.signal(signal.SIGINT, signal.SIG_IGN)
reply({"ready": True, "pid": os.getpid()})
buf = b""
while True:
    # A child's output is drained as it comes, polled or not: a seeding aria2c whose pipe filled up
    # would stop serving the others.
    outs = [c["out"] for c in children.values() if not c.get("eof")]
    r, _, _ = select.select([0] + outs, [], [], 0.05 if pending else None)
    for c in list(children.values()):
        if c["out"] in r: drain(c)
    if 0 in r:
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
                    fcntl.lockf(f, fcntl.LOCK_UN); os.close(f)
                reply({"id": q["id"], "ok": True})
            elif op == "cancel":
                before = len(pending)
                pending = [p for p in pending if p[0] != q["target"]]
                if len(pending) != before: reply({"id": q["target"], "ok": False, "error": "cancelled"})
            else:
                try:
                    reply({"id": q["id"], "ok": True, "result": OPS[op](q)})
                except Unsafe as e:
                    reply({"id": q["id"], "ok": False, "error": "unsafe", "path": e.path, "message": e.what})
                except OSError as e:
                    reply({"id": q["id"], "ok": False, "error": "os", "errno": ecode(e),
                           "message": "%s: %s" % (getattr(e, "filename", None) or "", e.strerror or e)})
                except Exception as e:
                    reply({"id": q["id"], "ok": False, "error": "failed", "message": "%s: %s" % (type(e).__name__, e)})
    waiting = []
    for p in pending:
        try:
            f = attempt(p[1])
        except Unsafe as e:
            reply({"id": p[0], "ok": False, "error": "unsafe", "path": e.path, "message": e.what}); continue
        except OSError as e:
            reply({"id": p[0], "ok": False, "error": "os", "errno": ecode(e), "message": "%s: %s" % (p[1], e.strerror)}); continue
        if f is not None:
            held[p[1]] = f; reply({"id": p[0], "ok": True}); continue
        if time.monotonic() >= p[2]:
            reply({"id": p[0], "ok": False, "error": "busy"}); continue
        waiting.append(p)
    pending = waiting
`

/**
 * How an SSH node starts the agent: this small loader reads AGENT_PY (its byte length is argv[1])
 * from stdin, then runs it; the requests follow on the same stdin. The program itself is ~20 KiB:
 * given as `python3 -c PROGRAM`, it would be quoted into every agent's ssh command line, and the
 * process runner escapes that line again for its messages, a few hundred KiB of short-lived strings
 * per node, which is most of what a driver of hundreds of nodes allocates (DESIGN §11). os.read on
 * fd 0, never sys.stdin: a buffered reader would swallow the first requests the agent reads from fd 0.
 */
export const AGENT_BOOT_PY = `import os, sys
n = int(sys.argv[1]); b = b""
while len(b) < n:
    c = os.read(0, n - len(b))
    if not c: sys.exit(0)
    b += c
exec(compile(b, "imgcache-agent", "exec"))
`
