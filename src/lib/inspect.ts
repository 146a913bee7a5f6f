import {posix} from 'node:path'

import type {NodeAnalysis} from './analysis.js'
import type {Backend} from './backend/rules.js'
import type {EntryKind, PlanItem} from './cache/policy.js'
import type {DiskProblem} from './cache/usage.js'
import type {Verification, VerifyTotals} from './verify.js'

import {cacheName, SIDECAR_DIR} from './cache/naming.js'
import {DiskHeaderError, isQcow2, parseDiskHeader} from './cache/qcow2-header.js'
import {pruneVerdict, type PruneVerdictOutcome} from './prune.js'
import {parseSidecar} from './sidecar.js'

export type InspectKind = 'ephemeral' | 'original' | 'partial' | 'resized' | 'swap' | 'unknown'

export interface InspectEntry {
  /** Seconds since the last use (mtime). */
  ageSeconds: number
  /** Size of the file as written (st_size). */
  apparentBytes: number
  /** Disk format as read from the header (qcow2, raw, ...). */
  format?: string
  imageId?: string
  imageName?: string
  kind: InspectKind
  mtime: string
  name: string
  path: string
  /** Problems that make the file unsound (damaged header, unsafe features, size mismatch, ...). */
  problems: string[]
  /** What `imgcache prune` would do with it now (inspect itself changes nothing), and when it becomes removable. */
  prune: {outcome: PruneVerdictOutcome; reason: string; removableAt?: string}
  /** Bytes the file takes on disk (allocated blocks). */
  sizeBytes: number
  sound: boolean
  symlinkTarget?: string
  /** How they reach it: image id in the domain metadata, backing chain, flavor, domain disk. */
  usedVia: string[]
  /** Instances whose disks or metadata reach the file. */
  users: string[]
  /** With --verify, for originals: whether the file still holds its image's bytes (verify.ts). */
  verify?: Verification
  virtualSize?: number
}

export interface InspectResult {
  /** Nova's storage backend on the node and what the cache means there. */
  backend: Backend
  cacheDir: string
  cacheDirExists: boolean
  entries: InspectEntry[]
  /** File-system space where the cache lives. */
  fs?: {availableBytes: number; totalBytes: number}
  /** Instance disks that could not be read: prune would delete nothing while they exist. */
  guard: DiskProblem[]
  instances: {total: number; withMetadata: number}
  instancesPath: string
  locks: {files: number; withoutEntry: number}
  metadataWarnings: Array<{path: string; reason: string}>
  node: string
  /** Leftovers of `imgcache overlay` killed before its rename, in instance directories: nothing uses them. */
  overlayTemporaries: Array<{ageSeconds: number; bytes: number; path: string}>
  settings: {
    cacheDirFrom: string
    instancesPathFrom: string
    minAgeSeconds: number
    /** The first nova.conf read (kept for older readers of the JSON); all of them in novaConfFiles. */
    novaConf?: string
    /** Every nova.conf file read, in oslo.config's order (later files win). */
    novaConfFiles: string[]
    removeUnused: boolean
    resizedMinAgeSeconds: number
  }
  totals: {
    bytes: number
    /** Cache entries by Nova's rules. */
    entries: number
    inUse: number
    /** Bytes prune would free now. */
    reclaimableBytes: number
    temporaries: number
    unknown: number
    unsound: number
    /** With --verify: the originals by outcome, and how many checks an error stopped. */
    verified?: VerifyTotals
  }
}

function inspectKind(kind: EntryKind): InspectKind {
  return kind === 'temporary' ? 'partial' : kind
}

function soundness(
  item: PlanItem,
  sidecarSize: number | undefined,
): {format?: string; problems: string[]; virtualSize?: number} {
  const problems: string[] = []
  const {entry} = item
  // Neither Nova nor imgcache makes links in the cache dir; imgcache never reads or writes through
  // one (DESIGN §10), so a link is never "ok", whatever it points at.
  if (entry.type === 'symlink') {
    return {
      problems: [
        `a symbolic link to ${entry.symlinkTarget ?? '?'} (not followed: nothing in a cache dir should be a link)`,
      ],
    }
  }

  if (item.kind === 'temporary') return {problems: ['incomplete: a download or conversion that did not finish']}
  if (item.kind === 'unknown') return {problems: []}
  if (entry.size === 0) problems.push('empty file')
  let format: string | undefined
  let virtualSize: number | undefined
  if (entry.head) {
    if (isQcow2(entry.head)) {
      format = 'qcow2'
      try {
        const header = parseDiskHeader(entry.head, entry.size)
        if (header.format === 'qcow2') {
          virtualSize = header.virtualSize
          if (header.backingFile !== undefined || header.backingFileRange)
            problems.push('qcow2 with a backing file: unsafe as a base')
          if (header.incompatibleFeatures & 0b100n) problems.push('qcow2 with an external data file: unsafe as a base')
        }
      } catch (error) {
        problems.push(`damaged qcow2 header: ${error instanceof DiskHeaderError ? error.message : String(error)}`)
      }
    } else {
      format = 'raw'
      virtualSize = entry.size
    }
  }

  if (sidecarSize !== undefined && item.kind === 'original' && sidecarSize !== entry.size) {
    problems.push(`size ${entry.size} differs from the ${sidecarSize} bytes imgcache wrote`)
  }

  return {format, problems, virtualSize}
}

/** The inspect view of an analysed node: one row per entry, with prune's verdict and soundness. */
export function buildInspectResult(analysis: NodeAnalysis): InspectResult {
  const {node, plan, scan, settings, usage} = analysis
  const guarded = usage.problems.length > 0
  // Image ids by cache name (each id hashed once: thousands of instances share a few hundred images).
  const knownIds = new Map<string, string>()
  const hashed = new Set<string>()
  for (const instance of usage.instances) {
    for (const id of instance.imageIds) {
      if (hashed.has(id)) continue
      hashed.add(id)
      knownIds.set(cacheName(id), id)
    }
  }

  const entries: InspectEntry[] = []
  for (const item of plan) {
    if (item.name === SIDECAR_DIR) continue
    const sidecar = parseSidecar(scan.sidecars[item.temporaryFor ?? item.name])
    const use = usage.uses.get(item.name)
    const {format, problems, virtualSize} = soundness(item, sidecar?.size)
    const verdict = pruneVerdict(item, guarded)
    const entry: InspectEntry = {
      ageSeconds: Math.round(item.ageSeconds),
      apparentBytes: item.entry.size,
      format: sidecar?.format && format === 'raw' && sidecar.format !== 'raw' ? format : (format ?? sidecar?.format),
      imageId: sidecar?.imageId ?? knownIds.get(item.name.slice(0, 40)),
      imageName: sidecar?.imageName,
      kind: inspectKind(item.kind),
      mtime: new Date(item.entry.mtimeMs).toISOString(),
      name: item.name,
      path: posix.join(settings.cacheDir, item.name),
      problems,
      prune: verdict,
      sizeBytes: item.entry.type === 'symlink' ? 0 : item.entry.allocated,
      sound: problems.length === 0 && item.kind !== 'unknown' ? true : problems.length === 0,
      usedVia: use?.via ?? [],
      users: use?.instances ?? [],
      virtualSize,
    }
    if (item.entry.type === 'symlink') entry.symlinkTarget = item.entry.symlinkTarget
    if (item.kind === 'unknown' && item.entry.type === 'dir') entry.format = 'directory'
    entries.push(entry)
  }

  const cacheEntries = entries.filter((e) => e.kind !== 'partial' && e.kind !== 'unknown')
  const lockNames = new Set(scan.cacheDir.entries.map((e) => `nova-${e.name}`))
  const lockFiles = scan.lockDir.entries.filter((n) => n.startsWith('nova-') && n !== 'nova-storage-registry-lock')
  return {
    backend: settings.backend,
    cacheDir: settings.cacheDir,
    cacheDirExists: scan.cacheDir.exists,
    entries,
    fs: scan.fs ? {availableBytes: scan.fs.available, totalBytes: scan.fs.total} : undefined,
    guard: usage.problems,
    instances: {
      total: usage.instances.length,
      withMetadata: usage.instances.filter((i) => i.metadata !== 'none').length,
    },
    instancesPath: settings.instancesPath,
    locks: {files: lockFiles.length, withoutEntry: lockFiles.filter((n) => !lockNames.has(n)).length},
    metadataWarnings: usage.metadataWarnings,
    node: node.name,
    overlayTemporaries: scan.instanceDirs.flatMap((d) =>
      (d.temporaries ?? []).map((t) => ({
        ageSeconds: Math.max(0, Math.round((scan.now - t.mtimeMs) / 1000)),
        bytes: t.size,
        path: posix.join(settings.instancesPath, d.name, t.name),
      })),
    ),
    settings: {
      cacheDirFrom: settings.origins.cacheDir,
      instancesPathFrom: settings.origins.instancesPath,
      minAgeSeconds: settings.policy.originalMinAge,
      novaConf: settings.novaConf.files[0],
      novaConfFiles: settings.novaConf.files,
      removeUnused: settings.policy.removeUnused,
      resizedMinAgeSeconds: settings.policy.resizedMinAge,
    },
    totals: {
      bytes: entries.reduce((sum, e) => sum + e.sizeBytes, 0),
      entries: cacheEntries.length,
      inUse: cacheEntries.filter((e) => e.users.length > 0).length,
      reclaimableBytes: entries
        .filter((e) => e.prune.outcome === 'would-remove')
        .reduce((sum, e) => sum + e.sizeBytes, 0),
      temporaries: entries.filter((e) => e.kind === 'partial').length,
      unknown: entries.filter((e) => e.kind === 'unknown').length,
      unsound: entries.filter((e) => !e.sound).length,
    },
  }
}
