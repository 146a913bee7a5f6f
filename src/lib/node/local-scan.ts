import {close, type Dirent, fstat, open, read, readFile, type Stats} from 'node:fs'
import {lstat, opendir, readdir, readlink, stat, statfs} from 'node:fs/promises'
import {join} from 'node:path'

import type {CacheScan, DiskHead, EntryStat, FsUsage, InstanceDirScan, ScanRequest} from './types.js'

import {errnoCode} from '../errors.js'

/** Files of an instance directory that may be disks (Nova's names: reference §1.1). */
export function isDiskName(name: string): boolean {
  if (name === 'disk' || name === 'kernel' || name === 'ramdisk') return true
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

/** lstat an entry; for a symlink, describe its target as Nova sees it (getmtime and isfile follow links). */
export async function statEntry(dir: string, name: string): Promise<EntryStat> {
  const path = join(dir, name)
  const l = await lstat(path)
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
    entry.symlinkTarget = await readlink(path).catch(() => '')
    try {
      const t = await stat(path)
      entry.targetType = t.isFile() ? 'file' : t.isDirectory() ? 'dir' : 'other'
      entry.mtimeMs = t.mtimeMs
      entry.size = t.size
    } catch {
      entry.targetType = 'missing'
    }
  }

  return entry
}

/*
 * Files are read with the callback API, not fs/promises: a FileHandle and a promise per call made
 * reading thousands of disk headers about twice as slow (bench/inspect.bench.ts).
 */

/** The first `bytes` bytes of a file and its size. */
function readHead(path: string, bytes: number): Promise<{head: Buffer; size: number}> {
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

/** A small text file, or undefined when it cannot be read. */
function readText(path: string): Promise<string | undefined> {
  return new Promise((resolve) => {
    readFile(path, 'utf8', (error, text) => resolve(error ? undefined : text))
  })
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

async function scanInstanceDir(instancesPath: string, name: string, headBytes: number): Promise<InstanceDirScan> {
  const dir = join(instancesPath, name)
  let names: Dirent[]
  try {
    names = await readdir(dir, {withFileTypes: true})
  } catch (error) {
    return {disks: [], error: `cannot list ${dir}: ${message(error)}`, name}
  }

  const result: InstanceDirScan = {disks: [], name}
  const files = names.filter((d) => d.isFile() || d.isSymbolicLink())
  await Promise.all(
    files.map(async (d) => {
      const path = join(dir, d.name)
      if (d.name === 'libvirt.xml') {
        result.libvirtXml = await readText(path)
      } else if (d.name === 'disk.info') {
        result.diskInfo = await readText(path)
      } else if (isDiskName(d.name)) {
        const disk: DiskHead = {name: d.name}
        try {
          const {head, size} = await readHead(path, headBytes)
          disk.head = head
          disk.size = size
        } catch (error) {
          disk.error = `cannot read: ${message(error)}`
          disk.errorCode = errnoCode(error)
        }

        result.disks.push(disk)
      }
    }),
  )
  result.disks.sort((a, b) => (a.name < b.name ? -1 : 1))
  return result
}

export async function fsUsage(path: string): Promise<FsUsage> {
  const s = await statfs(path)
  return {available: s.bavail * s.bsize, total: s.blocks * s.bsize}
}

/** The local implementation of Node.scan: one pass of syscalls, concurrency-bounded. */
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

  let top: Dirent[] = []
  try {
    top = await readdir(request.instancesPath, {withFileTypes: true})
  } catch (error) {
    scan.instancesPath = {error: message(error), errorCode: errnoCode(error), exists: false}
    return scan
  }

  const cacheName = request.cacheDir.slice(request.cacheDir.lastIndexOf('/') + 1)
  const dirs = top.filter((d) => d.isDirectory() && join(request.instancesPath, d.name) !== request.cacheDir)
  const [instanceDirs] = await Promise.all([
    mapLimit(dirs, 32, (d) => scanInstanceDir(request.instancesPath, d.name, request.headBytes)),
    scanCacheDir(request, scan, cacheName),
    scanLockDir(request, scan),
    scanDomainXml(request, scan),
  ])
  scan.instanceDirs = instanceDirs.sort((a, b) => (a.name < b.name ? -1 : 1))
  scan.fs = await fsUsage(scan.cacheDir.exists ? request.cacheDir : request.instancesPath).catch(() => undefined)
  return scan
}

/**
 * Names in directory order, as `os.listdir` gives them (readdir(3) order). fs.readdir sorts them
 * (libuv's scandir), and Nova's decisions depend on the order it walks the cache dir in.
 */
async function listInDirectoryOrder(dir: string): Promise<string[]> {
  const names: string[] = []
  for await (const entry of await opendir(dir, {bufferSize: 256})) names.push(entry.name)
  return names
}

async function scanCacheDir(request: ScanRequest, scan: CacheScan, _cacheName: string): Promise<void> {
  let names: string[]
  try {
    names = await listInDirectoryOrder(request.cacheDir)
  } catch (error) {
    const code = errnoCode(error)
    scan.cacheDir = {entries: [], error: code === 'ENOENT' ? undefined : message(error), errorCode: code, exists: false}
    return
  }

  scan.cacheDir.exists = true
  // Listing order is kept: Nova walks the cache dir in os.listdir order.
  scan.cacheDir.entries = await mapLimit(names, 32, async (name) => {
    try {
      const entry = await statEntry(request.cacheDir, name)
      const isFile = entry.type === 'file' || (entry.type === 'symlink' && entry.targetType === 'file')
      if (isFile && request.cacheHeadBytes > 0) {
        entry.head = (await readHead(join(request.cacheDir, name), request.cacheHeadBytes).catch(() => undefined))?.head
      }

      return entry
    } catch {
      // Vanished between readdir and lstat: report it as gone by omitting it.
    }
  }).then((entries) => entries.filter((e): e is EntryStat => e !== undefined))

  const sidecarDir = join(request.cacheDir, '.imgcache')
  const sidecars = await readdir(sidecarDir).catch(() => [] as string[])
  await Promise.all(
    sidecars
      .filter((n) => n.endsWith('.json'))
      .map(async (n) => {
        const text = await readText(join(sidecarDir, n))
        if (text !== undefined) scan.sidecars[n.slice(0, -5)] = text
      }),
  )
}

async function scanLockDir(request: ScanRequest, scan: CacheScan): Promise<void> {
  try {
    scan.lockDir = {entries: (await readdir(request.lockDir)).sort(), exists: true}
  } catch {
    scan.lockDir = {entries: [], exists: false}
  }
}

async function scanDomainXml(request: ScanRequest, scan: CacheScan): Promise<void> {
  for (const dir of request.domainXmlDirs) {
    // eslint-disable-next-line no-await-in-loop
    const names = await readdir(dir).catch(() => [] as string[])
    // eslint-disable-next-line no-await-in-loop
    await Promise.all(
      names
        .filter((n) => n.endsWith('.xml'))
        .sort()
        .map(async (n) => {
          const text = await readText(join(dir, n))
          if (text !== undefined) scan.domainXml.push({path: join(dir, n), text})
        }),
    )
  }

  scan.domainXml.sort((a, b) => (a.path < b.path ? -1 : 1))
}
