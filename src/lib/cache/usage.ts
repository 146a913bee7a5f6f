import {posix} from 'node:path'

import type {CacheScan, EntryStat, InstanceDirScan} from '../node/types.js'

import {childPath} from '../paths.js'
import {classifyNova, resizedVariantOf} from './classify.js'
import {type DomainInfo, parseDomainXml} from './domain-xml.js'
import {BOOT_FILE_NAMES, cacheName, isBootFileName} from './naming.js'
import {backingPath, DiskHeaderError, parseDiskHeader, type Qcow2Header} from './qcow2-header.js'

/**
 * How an instance reaches a cache entry: a disk's backing chain, a disk of its domain, its flavor
 * (swap, ephemeral), an image id in its metadata, or the kernel or ramdisk it boots (`boot`: from
 * the cache path, or from Nova's copy in the instance directory, told by its bytes).
 */
export type UseVia = 'backing' | 'boot' | 'domain' | 'flavor' | 'image'

export interface EntryUse {
  /** Labels of the instances that use the entry. */
  instances: string[]
  /** Whether Nova would refresh the entry's mtime this pass (in-use originals and templates). */
  touch: boolean
  via: UseVia[]
}

export interface DiskView {
  /** Backing chain as file paths, nearest first (may leave the node's scanned files). */
  backingChain: string[]
  format: 'qcow2' | 'raw'
  name: string
  virtualSize?: number
}

export interface InstanceView {
  /** Directory name under the instances path ('' for a domain known only from libvirt's XML). */
  dir: string
  disks: DiskView[]
  ephemeralGb?: number
  imageIds: string[]
  /** The instance name for people: its domain name, else the directory name. */
  label: string
  /** Where the instance's image ids came from. */
  metadata: 'domain-xml' | 'libvirt.xml' | 'none'
  swapMb?: number
  uuid?: string
}

/** An instance disk (or domain file) that could not be read or parsed: prune deletes nothing. */
export interface DiskProblem {
  instance: string
  path: string
  reason: string
}

export interface UsageReport {
  instances: InstanceView[]
  /** Domain files that could not be parsed (reported, not fatal: Nova does not read them). */
  metadataWarnings: Array<{path: string; reason: string}>
  problems: DiskProblem[]
  uses: Map<string, EntryUse>
}

export interface UsageSettings {
  cacheDir: string
  /** The 7-character extension Nova gives ephemeral templates on this node (§1.2). */
  ephemeralExtension: string
  instancesPath: string
}

/** Names in the instances path that are never instance directories. */
export function isInstanceDirName(name: string, cacheDirName: string): boolean {
  if (name === cacheDirName || name.startsWith('_base') || name.startsWith('.')) return false
  if (name === 'locks' || name === 'snapshots') return false
  // `<dir>_del`: an instance being deleted (Nova renames it before removal and ignores it).
  return !name.endsWith('_del')
}

/** Reads the node asks for once the first-level headers are parsed: a second, batched round trip. */
export interface HeaderNeed {
  length: number
  offset: number
  path: string
}

/** Parsed headers by absolute path, filled from the scan and then from follow-up reads. */
export class HeaderIndex {
  readonly errors = new Map<string, string>()
  readonly headers = new Map<string, Qcow2Header | {format: 'raw'}>()

  /** Record the first bytes of a file. */
  addHead(path: string, head: Buffer, size: number): void {
    try {
      this.headers.set(path, parseDiskHeader(head, size))
    } catch (error) {
      this.errors.set(path, error instanceof DiskHeaderError ? error.message : String(error))
    }
  }

  /** Record a backing file name read separately. */
  setBackingName(path: string, name: Buffer): void {
    const header = this.headers.get(path)
    if (header?.format === 'qcow2') {
      header.backingFile = name.toString('utf8')
      delete header.backingFileRange
    }
  }
}

/** Put every head the scan returned into an index. */
export function indexScan(scan: CacheScan, settings: UsageSettings): HeaderIndex {
  const index = new HeaderIndex()
  for (const entry of scan.cacheDir.entries) {
    if (entry.head) index.addHead(childPath(settings.cacheDir, entry.name), entry.head, entry.size)
  }

  for (const dir of scan.instanceDirs) {
    for (const disk of dir.disks) {
      const path = childPath(childPath(settings.instancesPath, dir.name), disk.name)
      if (disk.head) index.addHead(path, disk.head, disk.size ?? disk.head.length)
      else if (disk.error && disk.errorCode !== 'ENOENT') index.errors.set(path, disk.error)
    }
  }

  return index
}

/**
 * What still has to be read to follow every backing chain: names stored beyond the bytes read,
 * and heads of chain members the scan did not cover. Empty when everything is known.
 */
export function pendingReads(index: HeaderIndex, headBytes: number): HeaderNeed[] {
  const needs: HeaderNeed[] = []
  const seen = new Set<string>()
  for (const [path, header] of index.headers) {
    if (header.format !== 'qcow2') continue
    if (header.backingFileRange) {
      needs.push({path, ...header.backingFileRange})
      continue
    }

    if (header.backingFile === undefined) continue
    const next = backingPath(posix.dirname(path), header.backingFile)
    if (next && !index.headers.has(next) && !index.errors.has(next) && !seen.has(next)) {
      seen.add(next)
      needs.push({length: headBytes, offset: 0, path: next})
    }
  }

  return needs
}

/** Apply the bytes read for `pendingReads`. Missing chain members stay unknown (the chain ends there). */
export function applyReads(index: HeaderIndex, needs: HeaderNeed[], results: Array<Buffer | undefined>): void {
  for (const [i, need] of needs.entries()) {
    const data = results[i]
    if (data === undefined) continue
    if (need.offset === 0 && !index.headers.has(need.path)) {
      if (data.length > 0) index.addHead(need.path, data, data.length)
    } else {
      index.setBackingName(need.path, data)
    }
  }
}

function chainOf(index: HeaderIndex, start: string): {chain: string[]; error?: string} {
  const chain: string[] = []
  let current = start
  for (let depth = 0; depth < 16; depth++) {
    const header = index.headers.get(current)
    if (!header || header.format !== 'qcow2' || header.backingFile === undefined) break
    const next = backingPath(posix.dirname(current), header.backingFile)
    if (!next) break
    if (chain.includes(next) || next === start) return {chain, error: 'backing chain loops'}
    chain.push(next)
    if (index.errors.has(next)) return {chain, error: `backing file ${next}: ${index.errors.get(next)}`}
    current = next
  }

  return {chain}
}

function diskPathsOf(dir: InstanceDirScan): string[] {
  return dir.disks.map((d) => d.name)
}

interface DomainFile {
  info: DomainInfo
  path: string
}

/** What an instance's kernel and ramdisk keep in use. */
interface BootUse {
  /** Originals: marked as Nova marks the bases of kernel_id and ramdisk_id (touched, variants too). */
  fingerprints: string[]
  /** Other cache entries booted, and candidates that could not be read to compare: kept, untouched. */
  others: string[]
}

/**
 * Cache files by size and digest (the scan hashed those a boot file could copy), and by size those
 * it could not hash: a boot file of that size may copy any of them.
 */
function bootCandidates(entries: EntryStat[], isCacheFile: (name: string) => boolean) {
  const byDigest = new Map<string, string[]>()
  const unhashed = new Map<number, string[]>()
  const add = <K>(map: Map<K, string[]>, key: K, name: string) => {
    const names = map.get(key)
    if (names) names.push(name)
    else map.set(key, [name])
  }

  for (const e of entries) {
    if (!isCacheFile(e.name)) continue
    if (e.digest !== undefined) add(byDigest, `${e.size}:${e.digest}`, e.name)
    else if (e.digestError !== undefined) add(unhashed, e.size, e.name)
  }

  return {
    /** The cache files a boot file (size and digest) is a copy of, and those it may be a copy of. */
    of(size: number, digest: string): {copies: string[]; maybe: string[]} {
      return {copies: byDigest.get(`${size}:${digest}`) ?? [], maybe: unhashed.get(size) ?? []}
    },
  }
}

/**
 * The domain files by uuid and by name: `match` answers what `domains.find((d) => d.info.uuid === key
 * || d.info.name === key)` would, without walking every file for every instance directory.
 */
function domainIndex(domains: DomainFile[]): {match(dirName: string): DomainFile | undefined} {
  const first = new Map<string, number>()
  for (const [i, d] of domains.entries()) {
    for (const key of [d.info.uuid, d.info.name]) if (key !== undefined && !first.has(key)) first.set(key, i)
  }

  return {
    match(dirName) {
      const base = dirName.endsWith('_resize') ? dirName.slice(0, -'_resize'.length) : dirName
      const i = first.get(base)
      return i === undefined ? undefined : domains[i]
    },
  }
}

/**
 * Nova's `unexplained_images`, a list it walks while removing from it. Removed names are marked
 * rather than spliced out, so that removing stays O(1) whatever the size of the cache dir.
 */
class UnexplainedList {
  private readonly at = new Map<string, number>()
  /** Fingerprints that have `<fp>_<digits>` names in the list: the only ones a walk can match. */
  private readonly digitVariants = new Set<string>()
  private readonly removed: boolean[]

  constructor(private readonly names: string[]) {
    this.removed = names.map(() => false)
    for (const [i, name] of names.entries()) {
      this.at.set(name, i)
      const variant = resizedVariantOf(name)
      if (variant && /^\d+$/.test(variant.suffix)) this.digitVariants.add(variant.fingerprint)
    }
  }

  remove(name: string): void {
    const i = this.at.get(name)
    if (i !== undefined) this.removed[i] = true
  }

  /**
   * Nova's walk for one image: `for img in unexplained: if <fp>_<digits>: unexplained.remove(img)`.
   * A Python for-loop over a list the loop body shrinks skips the item after each one it removes.
   * Returns the names removed, in order.
   */
  takeDigitVariants(fp: string): string[] {
    const taken: string[] = []
    if (!this.digitVariants.has(fp)) return taken
    let skipNext = false
    for (const [i, name] of this.names.entries()) {
      if (this.removed[i]) continue
      if (skipNext) {
        skipNext = false
        continue
      }

      const variant = resizedVariantOf(name)
      if (variant?.fingerprint === fp && /^\d+$/.test(variant.suffix)) {
        taken.push(name)
        this.removed[i] = true
        skipNext = true
      }
    }

    return taken
  }
}

/**
 * Work out which cache entries the node's instances use, from files alone: every disk of every
 * instance directory and its backing chain, and the image ids, swap and ephemeral sizes the domain
 * metadata names (Nova's reference §2.2 and §2.4, widened to every disk and the whole chain).
 *
 * Image ids are matched as Nova's `_find_base_file` does, including how it walks its list of
 * unexplained files while removing from it: of two `<fp>_<digits>` files next to each other in
 * directory order, the second is skipped and stays removable unless a disk is backed by it.
 * The order is the cache dir's listing order, as `os.listdir` gives it.
 */
export function computeUsage(scan: CacheScan, index: HeaderIndex, settings: UsageSettings): UsageReport {
  const report: UsageReport = {instances: [], metadataWarnings: [], problems: [], uses: new Map()}
  const cacheDirName = posix.basename(settings.cacheDir)
  const entries = new Map<string, EntryStat>(scan.cacheDir.entries.map((e) => [e.name, e]))
  const isCacheFile = (name: string) => {
    const e = entries.get(name)
    return e !== undefined && (e.type === 'file' || (e.type === 'symlink' && e.targetType === 'file'))
  }

  // Nova's `unexplained_images`: originals and resized candidates, in listing order.
  const unexplained = new UnexplainedList(
    scan.cacheDir.entries
      .filter((e) => {
        const kind = classifyNova(e.name, isCacheFile(e.name))
        return kind === 'original' || kind === 'resized'
      })
      .map((e) => e.name),
  )

  // The instances of each entry, as a set too: popular bases have hundreds of users.
  const usersOf = new Map<string, Set<string>>()
  const use = (name: string, instance: string, via: UseVia, touch: boolean) => {
    let u = report.uses.get(name)
    let users = usersOf.get(name)
    if (!u || !users) {
      u = {instances: [], touch: false, via: []}
      users = new Set()
      report.uses.set(name, u)
      usersOf.set(name, users)
    }

    if (!users.has(instance)) {
      users.add(instance)
      u.instances.push(instance)
    }

    if (!u.via.includes(via)) u.via.push(via)
    u.touch ||= touch
  }

  /**
   * Nova's `_find_base_file` + `_mark_in_use` for one fingerprint. Nova does it once per image id
   * (its used images are a dict); later users of the same image share the result.
   */
  const marked = new Map<string, string[]>()
  const useFingerprint = (fp: string, instance: string, via: UseVia) => {
    const earlier = marked.get(fp)
    if (earlier) {
      for (const name of earlier) use(name, instance, via, isCacheFile(name))
      return
    }

    const names: string[] = []
    marked.set(fp, names)
    if (entries.has(fp)) {
      names.push(fp)
      use(fp, instance, via, isCacheFile(fp))
      unexplained.remove(fp)
    }

    if (entries.has(`${fp}_sm`)) {
      names.push(`${fp}_sm`)
      use(`${fp}_sm`, instance, via, isCacheFile(`${fp}_sm`))
      unexplained.remove(`${fp}_sm`)
    }

    for (const name of unexplained.takeDigitVariants(fp)) {
      names.push(name)
      use(name, instance, via, true)
    }
  }

  const inCache = (path: string) => posix.dirname(path) === settings.cacheDir
  const candidates = bootCandidates(scan.cacheDir.entries, isCacheFile)

  /**
   * The cache entries an instance's kernel and ramdisk keep in use. Nova keeps the bases of its
   * kernel_id and ramdisk_id (virt/imagecache.py `_list_running_instances`), ids only its database
   * holds: libvirt.xml boots copies of those bases in the instance directory (virt/libvirt/driver.py
   * `_create_image`, `_set_guest_for_inst_kernel`). A copy is matched to its base by its bytes (same
   * size, same SHA-256, both hashed by the scan on the node); a boot path into the cache names its
   * entry directly.
   */
  const bootUseOf = (dir: InstanceDirScan | undefined, domain: DomainInfo | undefined): BootUse => {
    const boot: BootUse = {fingerprints: [], others: []}
    const add = (name: string) => {
      if (classifyNova(name, true) === 'original') boot.fingerprints.push(name)
      else if (entries.has(name)) boot.others.push(name)
    }

    for (const path of domain?.bootSources ?? []) {
      if (inCache(path)) {
        add(posix.basename(path))
      } else if (
        dir &&
        !isBootFileName(posix.basename(path)) &&
        posix.dirname(path) === posix.join(settings.instancesPath, dir.name)
      ) {
        report.metadataWarnings.push({
          path: posix.join(settings.instancesPath, dir.name, 'libvirt.xml'),
          reason: `it boots ${path}, which is neither in the cache dir nor one of Nova's copies (${BOOT_FILE_NAMES.join(', ')}): not compared with the cache`,
        })
      }
    }

    for (const disk of dir?.disks ?? []) {
      if (!isBootFileName(disk.name) || disk.digest === undefined || disk.size === undefined) continue
      const {copies, maybe} = candidates.of(disk.size, disk.digest)
      for (const name of copies) add(name)
      for (const name of maybe) if (!boot.others.includes(name)) boot.others.push(name)
    }

    return boot
  }

  const domains: DomainFile[] = []
  for (const file of scan.domainXml) {
    try {
      domains.push({info: parseDomainXml(file.text), path: file.path})
    } catch (error) {
      report.metadataWarnings.push({path: file.path, reason: error instanceof Error ? error.message : String(error)})
    }
  }

  // Phase 1: every instance, its metadata and its disks' backing chains.
  const domainsByKey = domainIndex(domains)
  const matched = new Set<string>()
  const views: Array<{boot: BootUse; domain?: DomainInfo; firstBacking: string[]; view: InstanceView}> = []
  for (const dir of scan.instanceDirs) {
    if (!isInstanceDirName(dir.name, cacheDirName)) continue
    const dirPath = childPath(settings.instancesPath, dir.name)
    if (dir.error) {
      report.problems.push({instance: dir.name, path: dirPath, reason: dir.error})
      continue
    }

    let domain: DomainInfo | undefined
    let metadata: InstanceView['metadata'] = 'none'
    if (dir.libvirtXml !== undefined) {
      try {
        domain = parseDomainXml(dir.libvirtXml)
        metadata = 'libvirt.xml'
      } catch (error) {
        report.metadataWarnings.push({
          path: posix.join(dirPath, 'libvirt.xml'),
          reason: error instanceof Error ? error.message : String(error),
        })
      }
    }

    const found = domainsByKey.match(dir.name)
    if (found) matched.add(found.path)
    if (!domain && found) {
      domain = found.info
      metadata = 'domain-xml'
    }

    const label = domain?.name && domain.name !== dir.name ? `${dir.name} (${domain.name})` : dir.name
    const view: InstanceView = {
      dir: dir.name,
      disks: [],
      ephemeralGb: domain?.ephemeralGb,
      imageIds: domain?.imageIds ?? [],
      label,
      metadata,
      swapMb: domain?.swapMb,
      uuid: domain?.uuid,
    }
    const firstBacking: string[] = []
    for (const diskName of diskPathsOf(dir)) {
      const path = childPath(dirPath, diskName)
      const error = index.errors.get(path)
      if (error) {
        report.problems.push({instance: label, path, reason: error})
        continue
      }

      const header = index.headers.get(path)
      if (!header) continue
      const {chain, error: chainError} = chainOf(index, path)
      if (chainError) report.problems.push({instance: label, path, reason: chainError})
      view.disks.push({
        backingChain: chain,
        format: header.format,
        name: diskName,
        virtualSize: header.format === 'qcow2' ? header.virtualSize : undefined,
      })
      if (header.format === 'qcow2' && header.backingFile !== undefined)
        firstBacking.push(posix.basename(header.backingFile))
    }

    report.instances.push(view)
    views.push({boot: bootUseOf(dir, domain), domain, firstBacking, view})
  }

  for (const d of domains) {
    if (matched.has(d.path)) continue
    const view: InstanceView = {
      dir: '',
      disks: [],
      ephemeralGb: d.info.ephemeralGb,
      imageIds: d.info.imageIds,
      label: d.info.name ?? d.info.uuid ?? d.path,
      metadata: 'domain-xml',
      swapMb: d.info.swapMb,
      uuid: d.info.uuid,
    }
    report.instances.push(view)
    views.push({boot: bootUseOf(undefined, d.info), domain: d.info, firstBacking: [], view})
  }

  // Phase 2: image ids, in instance order, as Nova marks its used images (touching them).
  // Without metadata, the image an instance was built from is what its disks are backed by.
  const fingerprintOf = new Map<string, string>()
  const fingerprint = (id: string) => {
    let fp = fingerprintOf.get(id)
    if (fp === undefined) {
      fp = cacheName(id)
      fingerprintOf.set(id, fp)
    }

    return fp
  }

  // Each instance's image, then its kernel and ramdisk: the order of Nova's image_ref, kernel_id,
  // ramdisk_id (its walk of resized names depends on the order images are marked in).
  for (const {boot, view} of views) {
    const fingerprints = new Map<string, UseVia>()
    const via = view.metadata === 'none' ? 'backing' : 'image'
    for (const id of view.imageIds) fingerprints.set(fingerprint(id), via)
    if (view.metadata === 'none') {
      for (const disk of view.disks) {
        for (const member of disk.backingChain) {
          if (!inCache(member)) continue
          const name = posix.basename(member)
          const kind = classifyNova(name, isCacheFile(name))
          if (kind === 'original' && !fingerprints.has(name)) fingerprints.set(name, via)
          else if (kind === 'resized' && !fingerprints.has(name.slice(0, 40))) fingerprints.set(name.slice(0, 40), via)
          else if (kind === 'swap' || kind === 'ephemeral') use(name, view.label, 'backing', true)
        }
      }
    }

    for (const fp of boot.fingerprints) if (!fingerprints.has(fp)) fingerprints.set(fp, 'boot')
    for (const [fp, how] of fingerprints) useFingerprint(fp, view.label, how)
  }

  // Phase 3: backing files (not touched, as Nova's backing pass), flavor templates, domain disks.
  for (const {boot, domain, firstBacking, view} of views) {
    for (const name of boot.others) use(name, view.label, 'boot', false)
    // Nova's own rule: the basename of each disk's first backing file, in the local cache dir.
    for (const base of firstBacking) if (entries.has(base)) use(base, view.label, 'backing', false)
    for (const disk of view.disks) {
      for (const member of disk.backingChain)
        if (inCache(member)) use(posix.basename(member), view.label, 'backing', false)
    }

    if (view.swapMb) use(`swap_${view.swapMb}`, view.label, 'flavor', entries.has(`swap_${view.swapMb}`))
    if (view.ephemeralGb) {
      const name = `ephemeral_${view.ephemeralGb}_${settings.ephemeralExtension}`
      use(name, view.label, 'flavor', entries.has(name))
    }

    for (const source of domain?.diskSources ?? []) {
      if (inCache(source)) use(posix.basename(source), view.label, 'domain', false)
    }
  }

  return report
}
