/**
 * The lock holder every node runs (locally with python3, remotely over SSH): one small process per
 * node that takes POSIX fcntl whole-file write locks — what oslo.concurrency and so nova-compute
 * take (reference sshd-qemu-locks §3; flock(2) would not exclude them) — and holds them until told
 * to let go or until its stdin closes. A dropped connection or a killed imgcache closes stdin, so
 * every lock is released without help.
 *
 * Protocol: one JSON object per line each way.
 *   → {"op":"lock","id":1,"path":"/…/locks/nova-<name>","timeout":10}
 *   ← {"id":1,"ok":true}  |  {"id":1,"ok":false,"error":"busy"}  |  {"id":1,"ok":false,"error":"os","message":"…"}
 *   → {"op":"unlock","id":2,"path":"…"}            ← {"id":2,"ok":true}
 *   → {"op":"cancel","id":3,"target":1}            (stop waiting for request 1; it answers "cancelled")
 * Waiting is a poll with LOCK_NB every 50 ms, as fasteners does (no queue, no fairness).
 */
export const LOCK_HELPER_PY = String.raw`
import errno, fcntl, json, os, select, sys, time
held = {}
pending = []
def reply(o):
    sys.stdout.write(json.dumps(o) + "\n"); sys.stdout.flush()
def attempt(path):
    if path in held:
        return None
    d = os.path.dirname(path)
    if d:
        os.makedirs(d, exist_ok=True)
    f = open(path, "a")
    try:
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        f.close()
        if e.errno in (errno.EAGAIN, errno.EACCES):
            return None
        raise
    return f
reply({"ready": True, "pid": os.getpid()})
buf = b""
while True:
    r, _, _ = select.select([0], [], [], 0.05 if pending else None)
    if r:
        chunk = os.read(0, 65536)
        if not chunk:
            break
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if not line.strip():
                continue
            q = json.loads(line)
            if q["op"] == "lock":
                pending.append((q["id"], q["path"], time.monotonic() + float(q["timeout"])))
            elif q["op"] == "unlock":
                f = held.pop(q["path"], None)
                if f is not None:
                    fcntl.lockf(f, fcntl.LOCK_UN); f.close()
                reply({"id": q["id"], "ok": True})
            elif q["op"] == "cancel":
                before = len(pending)
                pending = [p for p in pending if p[0] != q["target"]]
                if len(pending) != before:
                    reply({"id": q["target"], "ok": False, "error": "cancelled"})
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
