import type {EntryStat} from '../node/types.js'
import type {EntryUse} from './usage.js'

import {classifyNova, classifyTemporary, type NovaKind} from './classify.js'
import {lockName, SIDECAR_DIR} from './naming.js'

export interface PolicySettings {
  /** `remove_unused_original_minimum_age_seconds` (Nova: 86400); also swap and ephemeral templates. */
  originalMinAge: number
  /** `remove_unused_base_images` (Nova: true); false: log and touch, delete nothing. */
  removeUnused: boolean
  /** `remove_unused_resized_minimum_age_seconds` (Nova: 3600); also imgcache's stale temporaries. */
  resizedMinAge: number
}

export const NOVA_POLICY_DEFAULTS: PolicySettings = {originalMinAge: 86_400, removeUnused: true, resizedMinAge: 3600}

export type EntryKind = 'temporary' | 'unknown' | NovaKind

export type Verdict =
  /** Not a cache entry by Nova's rules, nor a temporary of ours: never touched, never deleted. */
  | {action: 'ignore'; reason: 'not-a-cache-entry'}
  /** In use by an instance; `touch`: refresh its mtime as Nova does. */
  | {action: 'keep'; reason: 'in-use'; touch: boolean}
  /** Unused and old enough, but `remove_unused_base_images` is off. */
  | {action: 'keep'; reason: 'removal-disabled'; removableAtMs: number}
  /** Unused, but younger than its minimum age. */
  | {action: 'keep'; reason: 'too-young'; removableAtMs: number}
  /** Remove under the lock `lock`, if its mtime is still at or before `cutoffMs`. */
  | {action: 'remove'; cutoffMs: number; lock: string; removeLockFile: boolean}

export interface PlanItem {
  /** Seconds since the entry's mtime. */
  ageSeconds: number
  entry: EntryStat
  kind: EntryKind
  /** The minimum age the rules give this entry (seconds), when they give one. */
  minAgeSeconds?: number
  name: string
  /** For a temporary: the cache entry it is for. */
  temporaryFor?: string
  verdict: Verdict
}

function isFileLike(entry: EntryStat): boolean {
  return entry.type === 'file' || (entry.type === 'symlink' && entry.targetType === 'file')
}

/**
 * Nova's clean-up decisions for every entry of the cache dir (reference §2.3–2.5), plus imgcache's
 * own: stale `.part`/`.converted` files older than the resized age. Pure: the caller acts on it.
 * Ordered as Nova processes them: bases, then swap, then ephemeral templates, then the rest.
 */
export function planPrune(
  entries: EntryStat[],
  uses: ReadonlyMap<string, EntryUse>,
  settings: PolicySettings,
  nowMs: number,
): PlanItem[] {
  const names = new Set(entries.map((e) => e.name))
  const items = entries.map((entry) => planEntry(entry, uses, settings, nowMs, names))
  const rank: Record<EntryKind, number> = {ephemeral: 2, original: 0, resized: 0, swap: 1, temporary: 3, unknown: 4}
  return items.sort((a, b) => rank[a.kind] - rank[b.kind] || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
}

/** The age rule shared by cache entries and temporaries: too young, removal off, or remove under `lock`. */
function ageVerdict(
  entry: EntryStat,
  ageSeconds: number,
  minAgeSeconds: number,
  settings: PolicySettings,
  nowMs: number,
  removal: {lock: string; removeLockFile: boolean},
): Verdict {
  const removableAtMs = entry.mtimeMs + minAgeSeconds * 1000
  if (ageSeconds < minAgeSeconds) return {action: 'keep', reason: 'too-young', removableAtMs}
  if (!settings.removeUnused) return {action: 'keep', reason: 'removal-disabled', removableAtMs}
  return {action: 'remove', cutoffMs: nowMs - minAgeSeconds * 1000, ...removal}
}

function planEntry(
  entry: EntryStat,
  uses: ReadonlyMap<string, EntryUse>,
  settings: PolicySettings,
  nowMs: number,
  names: ReadonlySet<string>,
): PlanItem {
  const ageSeconds = Math.max(0, (nowMs - entry.mtimeMs) / 1000)
  const kind = classifyNova(entry.name, isFileLike(entry))
  if (kind) {
    const minAgeSeconds = kind === 'resized' ? settings.resizedMinAge : settings.originalMinAge
    const use = uses.get(entry.name)
    const verdict: Verdict = use
      ? {action: 'keep', reason: 'in-use', touch: use.touch}
      : ageVerdict(entry, ageSeconds, minAgeSeconds, settings, nowMs, {
          lock: lockName(entry.name),
          // Nova deletes the lock file of bases it removes, not of swap and ephemeral templates.
          removeLockFile: kind === 'original' || kind === 'resized',
        })
    return {ageSeconds, entry, kind, minAgeSeconds, name: entry.name, verdict}
  }

  const temporary = entry.type === 'file' ? classifyTemporary(entry.name) : undefined
  if (temporary) {
    const minAgeSeconds = settings.resizedMinAge
    const verdict = ageVerdict(entry, ageSeconds, minAgeSeconds, settings, nowMs, {
      lock: lockName(temporary.finalName),
      // The lock file goes with the temporary when the entry it was for does not exist either.
      removeLockFile: !names.has(temporary.finalName),
    })
    return {
      ageSeconds,
      entry,
      kind: 'temporary',
      minAgeSeconds,
      name: entry.name,
      temporaryFor: temporary.finalName,
      verdict,
    }
  }

  return {
    ageSeconds,
    entry,
    kind: 'unknown',
    name: entry.name,
    verdict: {action: 'ignore', reason: 'not-a-cache-entry'},
  }
}

/** Whether a name in the cache dir is imgcache's own metadata directory. */
export function isSidecarDir(name: string): boolean {
  return name === SIDECAR_DIR
}

/**
 * The order prune takes the locks of the entries it is about to remove: by lock name, each once.
 * Every prune takes them in the same order, so two prunes never wait for each other in a cycle.
 */
export function lockOrder<T extends {lock: string}>(removals: readonly T[]): T[] {
  const byLock = new Map<string, T>()
  for (const r of removals) if (!byLock.has(r.lock)) byLock.set(r.lock, r)
  return [...byLock.values()].sort((a, b) => (a.lock < b.lock ? -1 : a.lock > b.lock ? 1 : 0))
}

/** What a fresh scan, made while prune holds an entry's lock, says about removing it. */
export type Recheck =
  /** Gone already (another prune, or Nova's own pass). */
  | {action: 'keep'; reason: 'gone'}
  /** An instance disk that could not be read appeared meanwhile: keep everything (the guard). */
  | {action: 'keep'; reason: 'guarded'}
  /** A disk made since the first scan uses it: keep it, and touch it when Nova would. */
  | {action: 'keep'; reason: 'in-use'; touch: boolean; users: string[]}
  /** Its mtime moved past the cut-off: something used it since the first scan. */
  | {action: 'keep'; reason: 'used-again'}
  /** Still unused and old enough: remove it now, before the lock is released. */
  | {action: 'remove'}

/**
 * The re-check under the lock, beyond Nova's (which looks at existence and age only,
 * nova/virt/imagecache.py `_remove_old_enough_file`): a disk created over the base between the
 * first scan and the lock (an overlay holds the same lock while it creates the disk) now shows in
 * the fresh scan, and keeps the base. Pure: `fresh` is what the re-scan found for this entry.
 */
export function recheckRemoval(item: PlanItem, fresh: {entry?: EntryStat; guarded: boolean; use?: EntryUse}): Recheck {
  if (item.verdict.action !== 'remove') throw new Error(`recheckRemoval: ${item.name} was not planned for removal`)
  if (fresh.guarded) return {action: 'keep', reason: 'guarded'}
  if (!fresh.entry) return {action: 'keep', reason: 'gone'}
  if (fresh.use) return {action: 'keep', reason: 'in-use', touch: fresh.use.touch, users: fresh.use.instances}
  if (fresh.entry.mtimeMs > item.verdict.cutoffMs) return {action: 'keep', reason: 'used-again'}
  return {action: 'remove'}
}
