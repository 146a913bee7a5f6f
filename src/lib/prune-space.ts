import type {NodeAnalysis} from './analysis.js'
import type {PlanItem} from './cache/policy.js'
import type {PruneDecision, PrunePreview} from './prune.js'

import {lockName} from './cache/naming.js'
import {effectiveTarget, meets, planSpace, type SpaceShortfall} from './cache/space.js'

/** Entries and the allocated bytes they hold. */
export interface Tally {
  bytes: number
  entries: number
}

/** What prune did (or, in a dry run, would do) about a space target on one node. */
export interface SpaceReport {
  /**
   * The file system and the cache once this run's removals are done (would be, in a dry run):
   * `before` plus the allocated bytes removed, so the figure is this run's alone.
   */
  after: {cacheBytes: number; freeBytes?: number}
  /** The cache dir's file system (statfs: f_bavail, what df shows as available) and the cache's regular files. */
  before: {cacheBytes: number; freeBytes?: number; totalBytes?: number}
  /** What is left in the cache dir after the run, by why it stays (when the target was not reached). */
  left: {inUse: Tally; kept: Tally; notRemovable: Tally}
  reached: boolean
  /** Why the target was not reached (absent when it was). */
  reason?: SpaceShortfall
  /** Allocated bytes freed by the removals made for space alone. */
  reclaimedBytes: number
  /** Entries removed for space alone, beyond the age rules. */
  removed: number
  /** The targets in bytes, and where each came from (`--keep-free`, `nodes.cmp-01.prune.keepFree`, ...). */
  target: {
    keepFreeBytes?: number
    keepFreeFrom?: string
    keepFreePercent?: number
    maxSizeBytes?: number
    maxSizeFrom?: string
  }
}

/**
 * The space report of a dry run: the same figures, named for what prune would do (nothing was
 * removed, so nothing was reached either).
 */
export interface SpacePreview extends Omit<SpaceReport, 'after' | 'reached' | 'reclaimedBytes' | 'removed'> {
  /** The file system and the cache once the removals prune would make are done. */
  wouldLeave: SpaceReport['after']
  /** Whether those removals would reach the target. */
  wouldReach: boolean
  /** Allocated bytes the removals for space alone would free. */
  wouldReclaimBytes: number
  /** Entries prune would remove for space alone, beyond the age rules. */
  wouldRemove: number
}

export function spacePreview(report: SpaceReport): SpacePreview {
  const {after, reached, reclaimedBytes, removed, ...rest} = report
  return {...rest, wouldLeave: after, wouldReach: reached, wouldReclaimBytes: reclaimedBytes, wouldRemove: removed}
}

/** A decision or a dry run's preview: removed (or would be) either way. */
type Decided = PruneDecision | PrunePreview

function gone(d: Decided): boolean {
  return d.outcome === 'removed' || d.outcome === 'would-remove'
}

/** A removal for space on a decision: its place in the order, and the figures once it is done. */
export interface SpaceRemoval {
  /** The cache's allocated bytes once this entry and every one before it are gone. */
  cacheBytesAfter: number
  /** The file system's free bytes once this entry and every one before it are gone. */
  freeBytesAfter?: number
  /** 1 for the least recently used entry removed for space, then 2, ... */
  rank: number
}

/** The bytes the cache dir's regular files occupy, as Nova counts them (libvirt/imagecache.py get_disk_usage), links not followed. */
function cacheBytesOf(analysis: NodeAnalysis): number {
  return analysis.scan.cacheDir.entries.reduce((sum, e) => sum + (e.type === 'file' ? e.allocated : 0), 0)
}

function targetsOf(analysis: NodeAnalysis) {
  const {fs} = analysis.scan
  const target = effectiveTarget(analysis.settings.space, fs?.total)
  return {
    bytes: {keepFreeBytes: target.keepFree?.value, maxSizeBytes: target.maxSize?.value},
    report: {
      keepFreeBytes: target.keepFree?.value,
      keepFreeFrom: target.keepFree?.source,
      keepFreePercent: target.keepFree?.percent,
      maxSizeBytes: target.maxSize?.value,
      maxSizeFrom: target.maxSize?.source,
    },
  }
}

/**
 * Choose the removals for space once the age rules have decided: unused cache entries by Nova's
 * rules that are regular files (never a link, never a temporary, never a file Nova does not own),
 * kept so far only for being younger than their minimum age, least recently used first. Marks their
 * decisions (in `decisions`, by name) and returns the plan items to remove, each to be re-checked
 * under its lock against the mtime the scan saw, as every removal is.
 */
export function chooseSpaceRemovals(
  analysis: NodeAnalysis,
  decisions: ReadonlyMap<string, PruneDecision> | ReadonlyMap<string, PrunePreview>,
  guarded: boolean,
  outcome: 'removed' | 'would-remove',
): PlanItem[] {
  if (guarded || !analysis.settings.policy.removeUnused) return []
  const {fs} = analysis.scan
  const freedByAge = [...decisions.values()].reduce((sum: number, d: Decided) => sum + (gone(d) ? d.bytes : 0), 0)
  const items = new Map(analysis.plan.map((i) => [i.name, i]))
  const candidates = analysis.plan
    .filter(
      (i) =>
        i.verdict.action === 'keep' &&
        i.verdict.reason === 'too-young' &&
        i.kind !== 'temporary' &&
        i.kind !== 'unknown' &&
        i.entry.type === 'file' &&
        !analysis.usage.uses.has(i.name),
    )
    .map((i) => ({bytes: i.entry.allocated, mtimeMs: i.entry.mtimeMs, name: i.name}))
  const steps = planSpace(
    candidates,
    {cacheBytes: cacheBytesOf(analysis) - freedByAge, freeBytes: fs ? fs.available + freedByAge : undefined},
    targetsOf(analysis).bytes,
  )
  return steps.map((step, index): PlanItem => {
    const item = items.get(step.name)!
    const decision = decisions.get(step.name)!
    decision.outcome = outcome
    decision.reason = `unused and least recently used: removable before its minimum age for the space target`
    decision.space = {cacheBytesAfter: step.cacheBytesAfter, freeBytesAfter: step.freeBytesAfter, rank: index + 1}
    delete decision.removableAt
    return {
      ...item,
      // Nova's re-check under the lock (imagecache.py _remove_old_enough_file), with the scan's
      // mtime as the cut-off: touched since (used again), it stays.
      verdict: {
        action: 'remove',
        cutoffMs: item.entry.mtimeMs,
        lock: lockName(item.name),
        removeLockFile: item.kind === 'original' || item.kind === 'resized',
      },
    }
  })
}

/** The space report of a node once every decision is final. */
export function spaceReport(analysis: NodeAnalysis, decisions: readonly Decided[], guarded: boolean): SpaceReport {
  const {fs} = analysis.scan
  const {bytes: targets, report: target} = targetsOf(analysis)
  const before = {cacheBytes: cacheBytesOf(analysis), freeBytes: fs?.available, totalBytes: fs?.total}
  const removed = decisions.filter((d) => gone(d))
  const freed = removed.reduce((sum, d) => sum + d.bytes, 0)
  const after = {
    cacheBytes: before.cacheBytes - freed,
    freeBytes: before.freeBytes === undefined ? undefined : before.freeBytes + freed,
  }
  // A percent, or any free-space target, cannot be checked without the file system's figures.
  const freeUnknown = analysis.settings.space.keepFree.length > 0 && after.freeBytes === undefined
  const reached = !freeUnknown && meets(targets, after)
  const forSpace = removed.filter((d) => d.space)

  // What stays, by why: the regular files left in the cache dir.
  const files = new Set(analysis.scan.cacheDir.entries.filter((e) => e.type === 'file').map((e) => e.name))
  const left = {inUse: tally(), kept: tally(), notRemovable: tally()}
  for (const d of decisions) {
    if (!files.has(d.name) || gone(d)) continue
    const into =
      d.outcome === 'in-use'
        ? left.inUse
        : d.outcome === 'locked' || d.outcome === 'rechecked' || d.outcome === 'error'
          ? left.kept
          : left.notRemovable
    into.entries++
    into.bytes += d.bytes
  }

  let reason: SpaceShortfall | undefined
  if (!reached) {
    if (guarded) reason = 'guarded'
    else if (!analysis.settings.policy.removeUnused) reason = 'removal-disabled'
    else if (freeUnknown) reason = 'no-fs-usage'
    else if (left.inUse.entries > 0 && left.kept.entries === 0 && left.notRemovable.entries === 0) reason = 'in-use'
    else reason = 'too-little-removable'
  }

  return {
    after,
    before,
    left,
    reached,
    ...(reason ? {reason} : {}),
    reclaimedBytes: forSpace.reduce((sum, d) => sum + d.bytes, 0),
    removed: forSpace.length,
    target,
  }
}

function tally(): Tally {
  return {bytes: 0, entries: 0}
}
