/**
 * Two small python3 programs an SSH node runs for work that does not go through its agent, both as
 * the instances path's owner (DESIGN §10): the receiving end of a byte stream (a relayed download's
 * `.part`), and the wrapper that runs a program writing under the instances path (qemu-img convert
 * and create). Arguments: the owner's uid and gid (-1: stay as we are), then their own.
 *
 * Both drop root's identity for good before they touch anything, and run under umask 022, so what
 * they make is the owner's with nova-compute's modes whatever ssh's session umask is.
 */
const DROP = String.raw`
import os, sys
def drop(uid, gid):
    if uid >= 0 and os.geteuid() == 0 and uid != 0:
        try:
            import pwd
            groups = os.getgrouplist(pwd.getpwuid(uid).pw_name, gid)
        except (KeyError, OSError, AttributeError):
            groups = [gid]
        os.setgroups(groups); os.setresgid(gid, gid, gid); os.setresuid(uid, uid, uid)
    os.umask(0o022)
`

/**
 * argv: uid gid path append(0|1). Copies stdin into `path`, never through a link: a link or a
 * non-regular file at the name ends it with status 4 and `imgcache-unsafe: <what>` on stderr, before
 * a byte is written. A new file is made with O_EXCL (a stale one is removed first); an append opens
 * the existing regular file.
 */
export const WRITER_PY = String.raw`${DROP}
import errno, stat as S
uid, gid, path, append = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
drop(uid, gid)
def unsafe(what):
    sys.stderr.write("imgcache-unsafe: %s\n" % what); sys.exit(4)
try: l = os.lstat(path)
except FileNotFoundError: l = None
if l is not None and S.S_ISLNK(l.st_mode): unsafe("is a symbolic link")
if l is not None and not S.S_ISREG(l.st_mode): unsafe("is not a regular file")
flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK
if append and l is not None:
    flags |= os.O_APPEND
else:
    if l is not None: os.unlink(path)
    flags |= os.O_CREAT | os.O_EXCL
try:
    fd = os.open(path, flags, 0o644)
except OSError as e:
    if e.errno == errno.ELOOP: unsafe("is a symbolic link")
    if e.errno == errno.EEXIST: unsafe("appeared while it was being made (something else writes there)")
    if e.errno in (errno.ENXIO, errno.EISDIR): unsafe("is not a regular file")
    raise
if not S.S_ISREG(os.fstat(fd).st_mode): unsafe("is not a regular file")
os.set_blocking(fd, True)
try:
    while True:
        b = os.read(0, 1 << 20)
        if not b: break
        v = memoryview(b)
        while v: v = v[os.write(fd, v):]
except OSError as e:
    sys.stderr.write("%s: %s\n" % (path, os.strerror(e.errno))); sys.exit(1)
os.close(fd)
`

/** argv: uid gid program args...: runs the program as the owner (status 127 and env's words when it is missing). */
export const RUN_AS_PY = String.raw`${DROP}
drop(int(sys.argv[1]), int(sys.argv[2]))
try:
    os.execvp(sys.argv[3], sys.argv[3:])
except OSError:
    sys.stderr.write("env: '%s': No such file or directory\n" % sys.argv[3]); sys.exit(127)
`

/** Exit status WRITER_PY ends with when the name is a link or not a regular file. */
export const WRITER_UNSAFE_STATUS = 4
