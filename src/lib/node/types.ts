import type {Readable, Writable} from 'node:stream'

import type {Aria2Progress, TorrentFetch} from './aria2.js'

/** One directory entry as the node sees it (lstat; for symlinks, what the target is). */
export interface EntryStat {
  /** Allocated bytes (st_blocks × 512): what the file really costs on disk. */
  allocated: number
  /** Inode change time, ms since the epoch (node clock). */
  ctimeMs?: number
  /** st_dev of the entry (or of its target), to tell which file system it is on. */
  dev?: number
  /**
   * SHA-256 of the file, when the scan compared it with an instance's boot file (kernel, ramdisk) of
   * the same size and first bytes (ScanRequest.compareBootFiles).
   */
  digest?: string
  /** Why the file could not be hashed for that comparison. */
  digestError?: string
  /** The first bytes of the file, when the scan asked for them (cache entries). */
  head?: Buffer
  mtimeMs: number
  name: string
  /** Apparent size in bytes (st_size; of the target for a symlink). */
  size: number
  /** For a symlink: the raw link text. */
  symlinkTarget?: string
  /** For a symlink: what it points at (`missing` when dangling). */
  targetType?: 'dir' | 'file' | 'missing' | 'other'
  type: 'dir' | 'file' | 'other' | 'symlink'
}

/** The first bytes of an instance disk, or why they could not be read. */
export interface DiskHead {
  /**
   * SHA-256 of a boot file (naming.ts BOOT_FILE_NAMES), when a cache file has its size and first
   * bytes (ScanRequest.compareBootFiles): the cache files with the same digest are what it copies.
   */
  digest?: string
  error?: string
  errorCode?: string
  /** The first `headBytes` bytes (fewer when the file is shorter). */
  head?: Buffer
  name: string
  size?: number
}

export interface InstanceDirScan {
  /**
   * Disk-like files of the directory (`disk`, `disk.*` but not `disk.info*`) and the boot files
   * Nova copies there (`kernel`, `ramdisk`, `kernel.rescue`, `ramdisk.rescue`), with their heads.
   */
  disks: DiskHead[]
  /** Why the directory itself could not be listed. */
  error?: string
  /** `libvirt.xml` content when present. */
  libvirtXml?: string
  name: string
  /** Leftovers of `imgcache overlay` killed before its rename (naming.ts OVERLAY_TEMPORARY); absent when none. */
  temporaries?: Array<{mtimeMs: number; name: string; size: number}>
}

export interface ScanRequest {
  /** Absolute path of the cache dir (`<instances_path>/<subdirectory_name>`). */
  cacheDir: string
  /** Bytes of each regular file in the cache dir to return (0: none). */
  cacheHeadBytes: number
  /**
   * Hash each boot file of an instance directory that a cache file could be a copy of (same size,
   * same first bytes as far as both heads go), and those cache files, in the same pass: the copies
   * Nova makes of kernels and ramdisks are then told by their bytes, in the one round trip.
   */
  compareBootFiles?: boolean
  /** Extra directories whose `*.xml` files are libvirt domain definitions (e.g. /etc/libvirt/qemu). */
  domainXmlDirs: string[]
  /** Bytes of each instance disk to return. */
  headBytes: number
  instancesPath: string
  /** Lock dir (`<instances_path>/locks`), listed so stale lock files can be reported. */
  lockDir: string
}

export interface FsUsage {
  /** Bytes available to an unprivileged writer (f_bavail × f_frsize). */
  available: number
  /** Total size of the file system. */
  total: number
}

/**
 * Everything one scan of a node returns: one round trip over SSH, one pass of syscalls locally.
 * Times are the node's clock, so ages are right even when the operator's clock is not.
 */
export interface CacheScan {
  cacheDir: {entries: EntryStat[]; error?: string; errorCode?: string; exists: boolean}
  domainXml: Array<{path: string; text: string}>
  /** File-system usage of the cache dir (or the instances path when the cache dir is missing). */
  fs?: FsUsage
  instanceDirs: InstanceDirScan[]
  instancesPath: {dev?: number; error?: string; errorCode?: string; exists: boolean}
  lockDir: {entries: string[]; exists: boolean}
  /** The node's clock when the scan ran (ms since the epoch). */
  now: number
  /** `.imgcache/<name>.json` sidecar files: name → text. */
  sidecars: Record<string, string>
}

export interface RunOptions {
  /**
   * Run as the owner of the instances path named with `useInstancesPath` (DESIGN §10), under umask
   * 022: for programs that write under it (qemu-img convert, create), so what they make is nova's.
   */
  asOwner?: boolean
  /** Environment additions for the command (never secrets: they would reach the process table). */
  env?: Record<string, string>
  /** Reject with an error when the exit status is not 0 (default true). */
  reject?: boolean
  signal?: AbortSignal
  /** Bytes to write to the command's stdin (secrets travel this way). */
  stdin?: Buffer | string
  timeoutMs?: number
}

export interface RunResult {
  exitCode: number
  stderr: string
  stdout: string
}

export interface LockOptions {
  signal?: AbortSignal
  /** How long to wait for a lock held by someone else before giving up with LOCK_BUSY. */
  timeoutMs: number
}

export interface LockHandle {
  readonly path: string
  release(): Promise<void>
}

export interface ReadRange {
  length: number
  offset: number
  path: string
}

export interface RemoveOptions {
  /** Remove only if the entry's mtime is at or before this instant (ms, node clock): Nova's re-check. */
  olderThanMs?: number
}

export type RemoveOutcome = 'missing' | 'removed' | 'too-young'

export interface WriteFileOptions {
  /** Append to an existing file (a resumed download) instead of truncating. */
  append?: boolean
  mode?: number
  signal?: AbortSignal
}

/** A configuration file read on a node: its text, or why not (`ENOENT` when it does not exist). */
export interface TextFileRead {
  error?: string
  errorCode?: string
  path: string
  text?: string
}

/** Configuration files and directories to read in one round trip (nova.conf in oslo.config's order). */
export interface ConfigReadRequest {
  /** Directories whose `*.conf` files (not hidden ones) are read, in name order, as oslo.config's --config-dir. */
  dirs: string[]
  files: string[]
}

export interface ConfigRead {
  dirs: Array<{error?: string; errorCode?: string; files: TextFileRead[]; path: string}>
  files: TextFileRead[]
}

/**
 * The operations imgcache needs from a compute node: few and coarse, so that each is one round
 * trip over SSH. Implemented by LocalNode and SshNode; every command uses only this interface.
 */
export interface Node {
  /** Ends every helper process and connection. Releases every lock still held. */
  close(): Promise<void>
  /** Human description for messages: `local` or `user@host:port`. No secrets. */
  readonly description: string
  /** Digest of a file, computed where the file is. */
  digest(path: string, algorithm: string, options?: {signal?: AbortSignal}): Promise<string>
  /**
   * Start curl fetching a URL into a new `.part` on this machine (LocalNode): the file is made by the
   * agent as the instances path's owner and opened here without following a link; curl writes
   * through that descriptor, which the caller reads as the file grows (fetch/follow.ts).
   */
  downloadInto?(request: UrlFetch): Promise<FileDownload>
  /**
   * Download a torrent with aria2c on the node (SSH nodes; precache --via p2p): resolves once every
   * piece is in `dest` and checked; aria2c then seeds to the others until the node is closed.
   */
  fetchTorrent?(
    request: TorrentFetch,
    options: {onProgress?: (progress: Aria2Progress) => void; signal?: AbortSignal; total: number},
  ): Promise<void>
  /**
   * Fetch a URL on the node itself (SSH nodes; the local host has downloadInto, which imgcache follows).
   * Reports the bytes in `dest` as they grow. The download dies with the connection.
   */
  fetchUrl?(request: UrlFetch, options: {onBytes?: (bytes: number) => void; signal?: AbortSignal}): Promise<void>
  /** Whether the node's `ensureDir` / file operations run on this machine. */
  readonly isLocal: boolean
  /**
   * Take a nova-compatible lock: a POSIX fcntl write lock on `path`, held by a helper process. The
   * lock file is opened as the instances path's owner, never through a link, and must be a regular
   * file (else SafetyError UNSAFE_PATH); one that exists is used as it is.
   */
  lock(path: string, options: LockOptions): Promise<LockHandle>
  mkdirp(path: string): Promise<void>
  readonly name: string
  /** A readable stream of a file on the node from `offset`. */
  openRead(path: string, offset?: number): Promise<Readable>
  /**
   * A writable stream into a file on the node; resolves when the file is flushed and fsynced. The
   * file is made (or, with `append`, reopened) as the instances path's owner, never through a link:
   * a link or a non-regular file at `path` is refused (SafetyError UNSAFE_PATH) before a byte is written.
   */
  openWrite(path: string, options?: WriteFileOptions): Promise<NodeFileSink>
  /** Read configuration files and directories; problems are reported per file, not thrown. */
  readConfigFiles(request: ConfigReadRequest): Promise<ConfigRead>
  /** Read byte ranges of files in one round trip. A range past the end returns fewer bytes. */
  readRanges(ranges: ReadRange[]): Promise<Buffer[]>
  /** Read a text file; undefined when it does not exist. */
  readTextFile(path: string): Promise<string | undefined>
  /** Remove one file or symlink (never a directory, never recursively, never following a symlink). */
  remove(path: string, options?: RemoveOptions): Promise<RemoveOutcome>
  /**
   * Rename atomically and make the rename durable (fsync of the directory). With `noReplace`, an
   * existing `to` is never replaced: the call fails with EEXIST (a hard link, then the old name removed).
   */
  rename(from: string, to: string, options?: RenameOptions): Promise<void>
  /** After a failed attempt: drop a broken connection so the next operation reconnects (SSH nodes). */
  reset?(): Promise<void>
  /** Run an argv (no shell) on the node. */
  run(argv: string[], options?: RunOptions): Promise<RunResult>
  scan(request: ScanRequest): Promise<CacheScan>
  /** lstat one path; undefined when it does not exist. */
  stat(path: string): Promise<EntryStat | undefined>
  statfs(path: string): Promise<FsUsage>
  /** Whether files in `dir` can be opened with O_DIRECT (qemu-img convert -t none), as Nova probes. */
  supportsDirectIo(dir: string): Promise<boolean>
  /** fsync one file. */
  syncFile(path: string): Promise<void>
  /**
   * Set atime and mtime to now (the node's clock) on each path, as Nova's privileged touch does (as
   * root when imgcache is root: libvirt may have given the base to its qemu user), but on a link
   * itself, never its target.
   */
  touch(paths: string[]): Promise<void>
  /**
   * Name the instances path this run works under (DESIGN §10), and the directories under it that may
   * be links (the cache dir, the lock dir, the metadata dir). Checked at the first change: its owner
   * (numeric uid and gid) becomes the identity every later change under it is made with; a linked
   * directory is followed only when the link and its target belong to root or to that owner.
   */
  useInstancesPath(path: string, dirs: string[]): void
  /** Write a small file atomically (temp + fsync + rename). */
  writeFileAtomic(path: string, data: Buffer | string, mode?: number): Promise<void>
}

/** A download the node makes itself (curl), as nova-compute does. */
export interface UrlFetch {
  /** The file to write (a `.part`); appended to from `resumeFrom` when set. */
  dest: string
  /** Request headers: they reach curl on its stdin, never in an argv. */
  headers: Record<string, string>
  /** Continue an existing file from this offset (HTTP Range). */
  resumeFrom?: number
  /** Abort when fewer than 1 byte/s arrive for this many seconds. */
  stallSeconds: number
  url: string
}

/** curl writing a `.part` on this machine (Node.downloadInto). */
export interface FileDownload {
  /** Close the descriptor; after `exited`, once the file has been read. */
  close(): void
  /** curl's end: its exit status (null when a signal ended it) and the tail of its stderr. */
  readonly exited: Promise<DownloadExit>
  /** The `.part`, read-write, the very inode the agent made: curl's stdout, and what the caller reads. */
  readonly fd: number
  /** Stop curl (an interrupted or failed run); resolves once it has exited. */
  stop(): Promise<void>
}

export interface DownloadExit {
  exitCode: null | number
  signal: null | string
  /** The end of curl's stderr (its error message). */
  stderr: string
}

export interface NodeFileSink {
  /** Abandon the write (the partial file is left for the caller to remove). */
  abort(): void
  /** Call after the last write: ends the stream, fsyncs and reports the bytes in the file. */
  finish(): Promise<number>
  readonly stream: Writable
}

/** Whose files imgcache makes on a node: the instances path's owner (uid, gid), and who imgcache runs as. */
export interface CacheOwner {
  /** imgcache's own effective uid on the node. */
  euid: number
  gid: number
  uid: number
}

/** What `useInstancesPath` names. */
export interface InstancesRoot {
  dirs: string[]
  path: string
}

export interface RenameOptions {
  /** Fail with EEXIST rather than replace an existing destination. */
  noReplace?: boolean
}
