import {parseSize} from '../duration.js'

/**
 * Prune by space, beyond Nova (whose pass knows ages only): after the age rules, remove further
 * unused entries, least recently used first, until the cache's file system has the free space asked
 * for and the cache is no larger than allowed, as Glance's and Ironic's image caches can. Pure rules
 * here; prune.ts acts on them under the same locks and re-check as every removal.
 */

/** Free space to keep on the cache dir's file system: bytes, or a percent of the file system's size. */
export type KeepFree = {bytes: number; percent?: undefined} | {bytes?: undefined; percent: number}

/** A value of a space target and where it came from (`--keep-free`, `aggregates.web.prune.keepFree`, ...). */
export interface Sourced<T> {
  source: string
  value: T
}

/**
 * The space targets that apply to one node. Several values come only from several aggregates the
 * node belongs to; the strictest wins (the most free space, the smallest cache).
 */
export interface SpaceTarget {
  keepFree: Array<Sourced<KeepFree>>
  maxSize: Array<Sourced<number>>
}

export const NO_SPACE_TARGET: SpaceTarget = {keepFree: [], maxSize: []}

export function hasSpaceTarget(target: SpaceTarget): boolean {
  return target.keepFree.length > 0 || target.maxSize.length > 0
}

/** Parse `--keep-free`: a size (`20G`, bytes) or a percent of the file system (`10%`, below 100). */
export function parseKeepFree(text: number | string): KeepFree | undefined {
  if (typeof text === 'number') return Number.isSafeInteger(text) && text >= 0 ? {bytes: text} : undefined
  const percent = /^(\d+(?:\.\d+)?)\s*%$/.exec(text.trim())
  if (percent) {
    const value = Number(percent[1])
    // 100 % free is a file system holding nothing, not even the cache dir: never reachable.
    return value > 0 && value < 100 ? {percent: value} : undefined
  }

  const bytes = parseSize(text)
  return bytes === undefined ? undefined : {bytes}
}

/** Parse `--max-size`: a size (`50G`, bytes). */
export function parseMaxSize(text: number | string): number | undefined {
  if (typeof text === 'number') return Number.isSafeInteger(text) && text >= 0 ? text : undefined
  return parseSize(text)
}

export const KEEP_FREE_EXPECTED = 'expected a size such as 20G or a percent of the file system below 100 such as 10%'
export const MAX_SIZE_EXPECTED = 'expected a size such as 50G, 512M or a number of bytes'

/** The target in bytes for a file system of `totalBytes`: the strictest of each kind, and where it came from. */
export function effectiveTarget(
  target: SpaceTarget,
  totalBytes: number | undefined,
): {keepFree?: Sourced<number> & {percent?: number}; maxSize?: Sourced<number>} {
  const out: ReturnType<typeof effectiveTarget> = {}
  for (const {source, value} of target.keepFree) {
    // A percent needs the file system's size; without it (statfs failed) it cannot be applied.
    if (value.percent !== undefined && totalBytes === undefined) continue
    const bytes = value.percent === undefined ? value.bytes : Math.ceil((totalBytes! * value.percent) / 100)
    if (!out.keepFree || bytes > out.keepFree.value) out.keepFree = {percent: value.percent, source, value: bytes}
  }

  for (const item of target.maxSize) if (!out.maxSize || item.value < out.maxSize.value) out.maxSize = item

  return out
}

/** An entry prune may remove for space: unused, a cache entry by Nova's rules, a regular file. */
export interface SpaceCandidate {
  /** Allocated bytes (st_blocks × 512): what removing it frees. */
  bytes: number
  mtimeMs: number
  name: string
}

export interface SpaceStep {
  /** The cache's allocated bytes once this entry (and every one before it) is gone. */
  cacheBytesAfter: number
  /** Free bytes of the file system once this entry (and every one before it) is gone. */
  freeBytesAfter?: number
  name: string
}

/** Whether `free`/`cache` bytes meet the targets (an absent figure cannot meet a target on it). */
export function meets(
  targets: {keepFreeBytes?: number; maxSizeBytes?: number},
  figures: {cacheBytes: number; freeBytes?: number},
): boolean {
  const free =
    targets.keepFreeBytes === undefined ||
    (figures.freeBytes !== undefined && figures.freeBytes >= targets.keepFreeBytes)
  const size = targets.maxSizeBytes === undefined || figures.cacheBytes <= targets.maxSizeBytes
  return free && size
}

/**
 * The entries to remove for space, in order: least recently used first (oldest mtime: Nova touches
 * a base whenever it is used, imagecache.py _age_and_verify_cached_images and the spawn path), the
 * name breaking ties, as few as reach the targets. `start` is the free space and cache size once the
 * age rules' removals are done. When even all of them fall short, all are listed.
 */
export function planSpace(
  candidates: readonly SpaceCandidate[],
  start: {cacheBytes: number; freeBytes?: number},
  targets: {keepFreeBytes?: number; maxSizeBytes?: number},
): SpaceStep[] {
  const ordered = [...candidates].sort(
    (a, b) => a.mtimeMs - b.mtimeMs || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0),
  )
  const steps: SpaceStep[] = []
  let {cacheBytes, freeBytes} = start
  // Free space that cannot be read (statfs failed) is never worked towards: only --max-size then.
  const short = () =>
    (targets.keepFreeBytes !== undefined && freeBytes !== undefined && freeBytes < targets.keepFreeBytes) ||
    (targets.maxSizeBytes !== undefined && cacheBytes > targets.maxSizeBytes)
  for (const c of ordered) {
    if (!short()) break
    cacheBytes -= c.bytes
    if (freeBytes !== undefined) freeBytes += c.bytes
    steps.push({cacheBytesAfter: cacheBytes, freeBytesAfter: freeBytes, name: c.name})
  }

  return steps
}

/** Why a space target was not reached. */
export type SpaceShortfall =
  /** An instance disk could not be read: nothing was removed (the prune guard). */
  | 'guarded'
  /** Every entry left in the cache is in use. */
  | 'in-use'
  /** The file system's free space could not be read, so --keep-free could not be checked. */
  | 'no-fs-usage'
  /** `remove_unused_base_images` is off: prune removes nothing. */
  | 'removal-disabled'
  /** Too little is removable: what is left is in use, kept under a lock, or not prune's to remove. */
  | 'too-little-removable'
