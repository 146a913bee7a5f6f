import {createHash} from 'node:crypto'
import {
  close,
  closeSync,
  type Dirent,
  fstat,
  fstatSync,
  lstatSync,
  open,
  opendirSync,
  openSync,
  read,
  readdirSync,
  readFile,
  readFileSync,
  readlinkSync,
  readSync,
  statfsSync,
  type Stats,
  statSync,
} from 'node:fs'
import {lstat, opendir, open as openFile, readdir, readlink, stat, statfs} from 'node:fs/promises'
import {join} from 'node:path'

import type {CacheScan, DiskHead, EntryStat, FsUsage, InstanceDirScan, ScanRequest} from './types.js'

import {BOOT_DIGEST, isBootFileName, OVERLAY_TEMPORARY} from '../cache/naming.js'
import {errnoCode} from '../errors.js'
import {childPath} from '../paths.js'

/** Files of an instance directory that may be disks (Nova's names: reference §1.1), or boot files it copies there. */
export function isDiskName(name: string): boolean {
  if (name === 'disk' || isBootFileName(name)) return true
  return name.startsWith('disk.') && !name.startsWith('disk.info')
}

function typeOf(s: Stats): EntryStat['type'] {
  if (s.isSymbolicLink()) return 'symlink'
  if (s.isFile()) return 'file'
  if (s.isDirectory()) return 'dir'
  return 'other'
}

function message(error: unknown): string {
  return error instanceof Error ? error.message : String(error)
}

type MaybePromise<T> = Promise<T> | T

/** The file operations a scan makes. Errors are thrown (or rejected) as node:fs reports them. */
interface ScanFs {
  /** Names in directory order, as `os.listdir` gives them (not sorted). */
  listInDirectoryOrder(dir: string): MaybePromise<string[]>
  lstat(path: string): MaybePromise<Stats>
  /** Sorted names (libuv's scandir). */
  readdir(dir: string): MaybePromise<string[]>
  /** Sorted entries with their types (libuv's scandir). */
  readdirTyped(dir: string): MaybePromise<Dirent[]>
  /** The first `bytes` bytes of a file and its size. */
  readHead(path: string, bytes: number): MaybePromise<{head: Buffer; size: number}>
  readlink(path: string): MaybePromise<string>
  /** A small text file, or undefined when it cannot be read. */
  readText(path: string): MaybePromise<string | undefined>
  stat(path: string): MaybePromise<Stats>
}

/*
 * Files are read with the callback API, not fs/promises: a FileHandle and a promise per call made
 * reading thousands of disk headers about twice as slow (bench/inspect.bench.ts).
 */

function readHeadAsync(path: string, bytes: number): Promise<{head: Buffer; size: number}> {
  return new Promise((resolve, reject) => {
    open(path, 'r', (openError, fd) => {
      if (openError) {
        reject(openError)
        return
      }

      // As a try/finally would: the descriptor is always closed, and a close error wins.
      const finish = (error: Error | null, result?: {head: Buffer; size: number}) => {
        close(fd, (closeError) => {
          const failure = closeError ?? error
          if (failure) reject(failure)
          else resolve(result!)
        })
      }

      fstat(fd, (statError, stats) => {
        if (statError) {
          finish(statError)
          return
        }

        const buffer = Buffer.alloc(Math.min(bytes, stats.size))
        if (buffer.length === 0) {
          finish(null, {head: buffer, size: stats.size})
          return
        }

        read(fd, buffer, 0, buffer.length, 0, (readError, bytesRead) =>
          finish(readError, {head: buffer.subarray(0, bytesRead), size: stats.size}),
        )
      })
    })
  })
}

async function listInDirectoryOrderAsync(dir: string): Promise<string[]> {
  const names: string[] = []
  for await (const entry of await opendir(dir, {bufferSize: 256})) names.push(entry.name)
  return names
}

/** Through libuv's thread pool: several requests in flight, for file systems where each one waits on a server. */
const asyncFs: ScanFs = {
  listInDirectoryOrder: listInDirectoryOrderAsync,
  lstat: (path) => lstat(path),
  readdir: (dir) => readdir(dir),
  readdirTyped: (dir) => readdir(dir, {withFileTypes: true}),
  readHead: readHeadAsync,
  readlink: (path) => readlink(path),
  readText: (path) =>
    new Promise((resolve) => {
      readFile(path, 'utf8', (error, text) => resolve(error ? undefined : text))
    }),
  stat: (path) => stat(path),
}

/**
 * Heads are cut from shared slabs: one ArrayBuffer per few hundred files rather than one per file
 * (less for the garbage collector to track). Only the bytes read are ever exposed.
 */
const SLAB_BYTES = 1024 * 1024
let slab = Buffer.allocUnsafe(0)
let slabUsed = 0

function slabBuffer(length: number): Buffer {
  if (length > SLAB_BYTES / 4) return Buffer.allocUnsafe(length)
  if (slabUsed + length > slab.length) {
    slab = Buffer.allocUnsafe(SLAB_BYTES)
    slabUsed = 0
  }

  const buffer = slab.subarray(slabUsed, slabUsed + length)
  // Keep the next piece 8-byte aligned, as Buffer's own pool does.
  slabUsed += (length + 7) & ~7
  return buffer
}

function readHeadSync(path: string, bytes: number): {head: Buffer; size: number} {
  const fd = openSync(path, 'r')
  // A close error wins over an earlier one, as in readHeadAsync.
  try {
    const {size} = fstatSync(fd)
    const length = Math.min(bytes, size)
    if (length === 0) return {head: Buffer.alloc(0), size}
    const buffer = slabBuffer(length)
    const bytesRead = readSync(fd, buffer, 0, length, 0)
    return {head: buffer.subarray(0, bytesRead), size}
  } finally {
    closeSync(fd)
  }
}

/** Small text files (libvirt.xml) are read into this buffer: open, pread, close and nothing more. */
const TEXT_BUFFER = Buffer.allocUnsafe(64 * 1024)

function readTextSync(path: string): string | undefined {
  let fd: number
  try {
    fd = openSync(path, 'r')
  } catch {
    return undefined
  }

  try {
    const length = readSync(fd, TEXT_BUFFER, 0, TEXT_BUFFER.length, 0)
    return length < TEXT_BUFFER.length ? TEXT_BUFFER.toString('utf8', 0, length) : readFileSync(path, 'utf8')
  } catch {
    return undefined
  } finally {
    try {
      closeSync(fd)
    } catch {
      // Read-only: a failed close loses nothing, and "cannot be read" is undefined, never a throw.
    }
  }
}

/**
 * Synchronous calls, one after another on the main thread. On a local file system with a warm page
 * cache each call takes microseconds, and a hop through libuv's thread pool (4 threads, competing
 * with the main thread for the CPUs) costs more than the call itself: the scan of 2,000 instance
 * directories takes about half the time this way. The event loop is blocked while a scan runs
 * (a fraction of a second; SSH nodes scanned at the same time wait that long, Ctrl-C is seen at the
 * end of it). Chosen only for local disk file systems (isLocalFileSystem): on NFS and other network
 * file systems every call waits on a server, and the thread pool keeps several in flight.
 */
const syncFs: ScanFs = {
  listInDirectoryOrder(dir) {
    const names: string[] = []
    const handle = opendirSync(dir, {bufferSize: 256})
    try {
      for (let entry = handle.readSync(); entry !== null; entry = handle.readSync()) names.push(entry.name)
    } finally {
      handle.closeSync()
    }

    return names
  },
  lstat: (path) => lstatSync(path),
  readdir: (dir) => readdirSync(dir),
  readdirTyped: (dir) => readdirSync(dir, {withFileTypes: true}),
  readHead: readHeadSync,
  readlink: (path) => readlinkSync(path),
  readText: readTextSync,
  stat: (path) => statSync(path),
}

/**
 * statfs f_type of the file systems where a synchronous scan is safe and faster: local block-device
 * and memory file systems. Anything else (nfs, cifs/smb, ceph, fuse, gluster, lustre, ...) or unknown
 * is scanned through the thread pool.
 */
const LOCAL_FS_TYPES = new Set([
  0x00_00_ef_53, // ext2, ext3, ext4
  0x01_02_19_94, // tmpfs
  0x2f_c1_2f_c1, // zfs
  0x58_46_53_42, // xfs
  0x79_4c_76_30, // overlayfs
  0x85_84_58_f6, // ramfs
  0x91_23_68_3e, // btrfs
  0xf2_f5_20_10, // f2fs
])

/** Whether `path` lies on a local disk or memory file system (false when that cannot be told). */
export function isLocalFileSystem(path: string): boolean {
  try {
    return LOCAL_FS_TYPES.has(statfsSync(path).type)
  } catch {
    return false
  }
}

async function statEntryWith(fs: ScanFs, dir: string, name: string): Promise<EntryStat> {
  const path = join(dir, name)
  const l = await fs.lstat(path)
  const entry: EntryStat = {
    allocated: l.blocks * 512,
    ctimeMs: l.ctimeMs,
    dev: l.dev,
    mtimeMs: l.mtimeMs,
    name,
    size: l.size,
    type: typeOf(l),
  }
  if (entry.type === 'symlink') {
    try {
      entry.symlinkTarget = await fs.readlink(path)
    } catch {
      entry.symlinkTarget = ''
    }

    try {
      const t = await fs.stat(path)
      entry.targetType = t.isFile() ? 'file' : t.isDirectory() ? 'dir' : 'other'
      entry.mtimeMs = t.mtimeMs
      entry.size = t.size
    } catch {
      entry.targetType = 'missing'
    }
  }

  return entry
}

/** lstat an entry; for a symlink, describe its target as Nova sees it (getmtime and isfile follow links). */
export async function statEntry(dir: string, name: string): Promise<EntryStat> {
  return statEntryWith(asyncFs, dir, name)
}

async function mapLimit<T, R>(items: T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const results: R[] = Array.from({length: items.length})
  let next = 0
  const worker = async () => {
    while (next < items.length) {
      const i = next++
      // eslint-disable-next-line no-await-in-loop
      results[i] = await fn(items[i] as T)
    }
  }

  await Promise.all(Array.from({length: Math.min(limit, items.length)}, worker))
  return results
}

/** Requests in flight at once through the thread pool; synchronous calls gain nothing from overlapping. */
function concurrencyOf(fs: ScanFs): number {
  return fs === syncFs ? 1 : 32
}

async function scanInstanceDir(
  fs: ScanFs,
  instancesPath: string,
  name: string,
  headBytes: number,
): Promise<InstanceDirScan> {
  const dir = childPath(instancesPath, name)
  let names: Dirent[]
  try {
    names = await fs.readdirTyped(dir)
  } catch (error) {
    return {disks: [], error: `cannot list ${dir}: ${message(error)}`, name}
  }

  const result: InstanceDirScan = {disks: [], name}
  const files = names.filter((d) => d.isFile() || d.isSymbolicLink())
  await Promise.all(
    files.map(async (d) => {
      const path = childPath(dir, d.name)
      if (OVERLAY_TEMPORARY.test(d.name)) {
        addTemporary(result, d.name, await attemptAsync(async () => fs.lstat(path)))
      } else if (d.name === 'libvirt.xml') {
        result.libvirtXml = await fs.readText(path)
      } else if (isDiskName(d.name)) {
        result.disks.push(diskOf(d.name, await attemptAsync(async () => fs.readHead(path, headBytes))))
      }
    }),
  )
  result.disks.sort((a, b) => (a.name < b.name ? -1 : 1))
  result.temporaries?.sort((a, b) => (a.name < b.name ? -1 : 1))
  return result
}

type Attempt<T> = T | {failure: unknown}

/** What a call returns, or what it threw. */
function attempt<T extends object>(call: () => T): Attempt<T> {
  try {
    return call()
  } catch (error) {
    return {failure: error}
  }
}

async function attemptAsync<T extends object>(call: () => Promise<T>): Promise<Attempt<T>> {
  return call().catch((error: unknown) => ({failure: error}))
}

/** A disk as the scan reports it: its first bytes and size, or why they could not be read. */
function diskOf(name: string, read: Attempt<{head: Buffer; size: number}>): DiskHead {
  if ('failure' in read)
    return {error: `cannot read: ${message(read.failure)}`, errorCode: errnoCode(read.failure), name}
  return {head: read.head, name, size: read.size}
}

/** Record an overlay's leftover temporary (gone by the time it was stat'ed: not recorded). */
function addTemporary(result: InstanceDirScan, name: string, stats: Attempt<Stats>): void {
  if ('failure' in stats) return
  result.temporaries ??= []
  result.temporaries.push({mtimeMs: stats.mtimeMs, name, size: stats.size})
}

/**
 * scanInstanceDir for syncFs, without promises: the same answer from a plain loop. Run cold (a fresh
 * process) over thousands of directories, the promises and closures of the shared version cost
 * about as much as the syscalls (bench/inspect.bench.ts).
 */
function scanInstanceDirSync(instancesPath: string, name: string, headBytes: number): InstanceDirScan {
  const dir = childPath(instancesPath, name)
  let names: Dirent[]
  try {
    names = readdirSync(dir, {withFileTypes: true})
  } catch (error) {
    return {disks: [], error: `cannot list ${dir}: ${message(error)}`, name}
  }

  const result: InstanceDirScan = {disks: [], name}
  // readdirSync sorts (libuv's scandir): the disks come out in name order, as scanInstanceDir sorts them.
  for (const d of names) {
    if (!d.isFile() && !d.isSymbolicLink()) continue
    const path = childPath(dir, d.name)
    if (OVERLAY_TEMPORARY.test(d.name)) {
      addTemporary(
        result,
        d.name,
        attempt(() => lstatSync(path)),
      )
    } else if (d.name === 'libvirt.xml') {
      result.libvirtXml = readTextSync(path)
    } else if (isDiskName(d.name)) {
      result.disks.push(
        diskOf(
          d.name,
          attempt(() => readHeadSync(path, headBytes)),
        ),
      )
    }
  }

  return result
}

export async function fsUsage(path: string): Promise<FsUsage> {
  const s = await statfs(path)
  return {available: s.bavail * s.bsize, total: s.blocks * s.bsize}
}

/**
 * The local implementation of Node.scan: one pass of syscalls, synchronous on local file systems
 * and concurrency-bounded through the thread pool on the others (see syncFs).
 */
export async function scanLocal(request: ScanRequest): Promise<CacheScan> {
  const now = Date.now()
  const scan: CacheScan = {
    cacheDir: {entries: [], exists: false},
    domainXml: [],
    instanceDirs: [],
    instancesPath: {exists: false},
    lockDir: {entries: [], exists: false},
    now,
    sidecars: {},
  }
  try {
    const s = await stat(request.instancesPath)
    scan.instancesPath = {dev: s.dev, exists: s.isDirectory()}
    if (!s.isDirectory()) {
      scan.instancesPath.error = 'not a directory'
      scan.instancesPath.errorCode = 'ENOTDIR'
    }
  } catch (error) {
    scan.instancesPath = {error: message(error), errorCode: errnoCode(error), exists: false}
  }

  if (!scan.instancesPath.exists) return scan

  // The cache dir may be a mount of its own (a shared NFS _base): each tree is judged by itself.
  const instancesFs = isLocalFileSystem(request.instancesPath) ? syncFs : asyncFs
  const cacheFs = isLocalFileSystem(request.cacheDir) ? syncFs : asyncFs
  let top: Dirent[] = []
  try {
    top = await instancesFs.readdirTyped(request.instancesPath)
  } catch (error) {
    scan.instancesPath = {error: message(error), errorCode: errnoCode(error), exists: false}
    return scan
  }

  const dirs = top.filter((d) => d.isDirectory() && join(request.instancesPath, d.name) !== request.cacheDir)
  const [instanceDirs] = await Promise.all([
    instancesFs === syncFs
      ? dirs.map((d) => scanInstanceDirSync(request.instancesPath, d.name, request.headBytes))
      : mapLimit(dirs, concurrencyOf(instancesFs), (d) =>
          scanInstanceDir(instancesFs, request.instancesPath, d.name, request.headBytes),
        ),
    scanCacheDir(cacheFs, request, scan),
    scanLockDir(isLocalFileSystem(request.lockDir) ? syncFs : asyncFs, request, scan),
    scanDomainXml(request, scan),
  ])
  scan.instanceDirs = instanceDirs.sort((a, b) => (a.name < b.name ? -1 : 1))
  if (request.compareBootFiles) await compareBootFiles(request, scan)
  scan.fs = await fsUsage(scan.cacheDir.exists ? request.cacheDir : request.instancesPath).catch(() => undefined)
  return scan
}

/** Whether two files of one size may be equal, judged by their first bytes as far as both were read. */
function sameStart(a: Buffer, b: Buffer | undefined): boolean {
  if (b === undefined) return true
  const n = Math.min(a.length, b.length)
  return a.subarray(0, n).equals(b.subarray(0, n))
}

/** A file's digest, read in 1 MiB pieces through the thread pool (kernels and ramdisks: megabytes). */
async function hashFile(path: string): Promise<string> {
  const hash = createHash(BOOT_DIGEST)
  const handle = await openFile(path, 'r')
  try {
    const buffer = Buffer.allocUnsafe(1024 * 1024)
    for (;;) {
      // eslint-disable-next-line no-await-in-loop
      const {bytesRead} = await handle.read(buffer, 0, buffer.length, null)
      if (bytesRead === 0) break
      hash.update(buffer.subarray(0, bytesRead))
    }
  } finally {
    await handle.close()
  }

  return hash.digest('hex')
}

/**
 * Tell which cache files an instance's boot files (the kernel and ramdisk Nova copies into its
 * directory) are copies of: a boot file is hashed only when a cache file has its size and first
 * bytes, and each such cache file once. The agent (agent-py.ts) does exactly the same.
 */
async function compareBootFiles(request: ScanRequest, scan: CacheScan): Promise<void> {
  const bySize = new Map<number, EntryStat[]>()
  for (const entry of scan.cacheDir.entries) {
    // Regular files only: nothing in a cache dir is read through a link (DESIGN §10).
    if (entry.type !== 'file' || entry.size === 0) continue
    const same = bySize.get(entry.size)
    if (same) same.push(entry)
    else bySize.set(entry.size, [entry])
  }

  const hashed = new Set<EntryStat>()
  for (const dir of scan.instanceDirs) {
    for (const disk of dir.disks) {
      if (!isBootFileName(disk.name) || !disk.head || disk.size === undefined) continue
      const {head} = disk
      const candidates = (bySize.get(disk.size) ?? []).filter((e) => sameStart(head, e.head))
      if (candidates.length === 0) continue
      try {
        // eslint-disable-next-line no-await-in-loop
        disk.digest = await hashFile(join(request.instancesPath, dir.name, disk.name))
      } catch (error) {
        // Unreadable now: reported as an unreadable disk is (prune then deletes nothing).
        Object.assign(disk, diskOf(disk.name, {failure: error}))
        delete disk.head
        delete disk.size
        continue
      }

      for (const entry of candidates) {
        if (hashed.has(entry)) continue
        hashed.add(entry)
        try {
          // eslint-disable-next-line no-await-in-loop
          entry.digest = await hashFile(join(request.cacheDir, entry.name))
        } catch (error) {
          entry.digestError = message(error)
        }
      }
    }
  }
}

async function scanCacheDir(fs: ScanFs, request: ScanRequest, scan: CacheScan): Promise<void> {
  let names: string[]
  try {
    // fs.readdir sorts names (libuv's scandir), and Nova's decisions depend on the order it walks
    // the cache dir in: os.listdir order, readdir(3)'s.
    names = await fs.listInDirectoryOrder(request.cacheDir)
  } catch (error) {
    const code = errnoCode(error)
    scan.cacheDir = {entries: [], error: code === 'ENOENT' ? undefined : message(error), errorCode: code, exists: false}
    return
  }

  scan.cacheDir.exists = true
  // Listing order is kept: Nova walks the cache dir in os.listdir order.
  scan.cacheDir.entries = await mapLimit(names, concurrencyOf(fs), async (name) => {
    try {
      const entry = await statEntryWith(fs, request.cacheDir, name)
      // Never read through a link in the cache dir (DESIGN §10): a linked entry is shown as a link.
      if (entry.type === 'file' && request.cacheHeadBytes > 0) {
        try {
          entry.head = (await fs.readHead(join(request.cacheDir, name), request.cacheHeadBytes)).head
        } catch {
          entry.head = undefined
        }
      }

      return entry
    } catch {
      // Vanished between readdir and lstat: report it as gone by omitting it.
    }
  }).then((entries) => entries.filter((e): e is EntryStat => e !== undefined))

  const sidecarDir = join(request.cacheDir, '.imgcache')
  let sidecars: string[] = []
  try {
    sidecars = await fs.readdir(sidecarDir)
  } catch {
    // No sidecars.
  }

  await Promise.all(
    sidecars
      .filter((n) => n.endsWith('.json'))
      .map(async (n) => {
        const text = await fs.readText(join(sidecarDir, n))
        if (text !== undefined) scan.sidecars[n.slice(0, -5)] = text
      }),
  )
}

async function scanLockDir(fs: ScanFs, request: ScanRequest, scan: CacheScan): Promise<void> {
  try {
    scan.lockDir = {entries: (await fs.readdir(request.lockDir)).sort(), exists: true}
  } catch {
    scan.lockDir = {entries: [], exists: false}
  }
}

/** libvirt's domain files (/etc/libvirt/qemu): a few dozen small files, wherever they are. */
async function scanDomainXml(request: ScanRequest, scan: CacheScan): Promise<void> {
  for (const dir of request.domainXmlDirs) {
    const fs = isLocalFileSystem(dir) ? syncFs : asyncFs
    let names: string[] = []
    try {
      // eslint-disable-next-line no-await-in-loop
      names = await fs.readdir(dir)
    } catch {
      continue
    }

    // eslint-disable-next-line no-await-in-loop
    await Promise.all(
      names
        .filter((n) => n.endsWith('.xml'))
        .sort()
        .map(async (n) => {
          const text = await fs.readText(join(dir, n))
          if (text !== undefined) scan.domainXml.push({path: join(dir, n), text})
        }),
    )
  }

  scan.domainXml.sort((a, b) => (a.path < b.path ? -1 : 1))
}
