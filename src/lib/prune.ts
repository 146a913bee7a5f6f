import {posix} from 'node:path'

import type {DiskProblem} from './cache/usage.js'
import type {LockHandle} from './node/types.js'

import {analyzeNode, type NodeAnalysis} from './analysis.js'
import {SIDECAR_DIR} from './cache/naming.js'
import {lockOrder, type PlanItem, recheckRemoval} from './cache/policy.js'
import {hasSpaceTarget} from './cache/space.js'
import {formatDuration} from './duration.js'
import {describeError, errnoCode, ImgcacheError} from './errors.js'
import {
  chooseSpaceRemovals,
  type SpacePreview,
  spacePreview,
  type SpaceRemoval,
  type SpaceReport,
  spaceReport,
} from './prune-space.js'

/** What a prune run did with an entry. */
export type PruneOutcome =
  /** Removing it failed. */
  | 'error'
  /** Kept: the prune guard tripped (an instance disk could not be read). */
  | 'guarded'
  /** Kept: not a cache entry by Nova's rules. */
  | 'ignored'
  /** Kept: in use by an instance (and touched, when Nova would touch it). */
  | 'in-use'
  /** Kept: its lock is held by another process. */
  | 'locked'
  /** Kept: the re-check under the lock found it used again (mtime refreshed) or gone. */
  | 'rechecked'
  /** Kept: old enough, but remove_unused_base_images is off. */
  | 'removal-disabled'
  /** Removed by this run. */
  | 'removed'
  /** Kept: unused but younger than its minimum age. */
  | 'too-young'

/**
 * What prune would do with an entry: the verdict of a dry run and of inspect's preview, which take
 * no lock and change nothing (so they can neither fail nor find a lock busy).
 */
export type PruneVerdictOutcome =
  | 'guarded'
  | 'ignored'
  | 'in-use'
  | 'removal-disabled'
  | 'too-young'
  /** Unused and old enough: prune would remove it (under its lock, after re-checking it). */
  | 'would-remove'

/** An entry as prune saw it, whatever was done with it. */
interface DecisionEntry {
  ageSeconds: number
  /** Allocated bytes of the entry (what removing it frees). */
  bytes: number
  kind: PlanItem['kind']
  name: string
  path: string
  reason: string
  /** When an unused entry becomes removable (ISO time), for too-young entries. */
  removableAt?: string
  /**
   * Removed (or, in a dry run, would be) for a space target, beyond the age rules: its place in the
   * order and the figures once it and every one before it are gone.
   */
  space?: SpaceRemoval
  /** Instances using it. */
  users?: string[]
}

/** What a prune run did with one entry. */
export interface PruneDecision extends DecisionEntry {
  outcome: PruneOutcome
  /** Whether this run refreshed the entry's mtime (Nova's touch of an in-use entry). */
  touched: boolean
}

/** What a dry run says prune would do with one entry; nothing was done. */
export interface PrunePreview extends DecisionEntry {
  outcome: PruneVerdictOutcome
  /** Whether prune would refresh the entry's mtime (it is in use). */
  wouldTouch: boolean
}

/** What prune saw on a node, dry run or not. */
interface PruneNodeFields {
  cacheDir: string
  /** Whether the cache dir exists; when it does not, there is nothing to do. */
  cacheDirExists: boolean
  /** Entries whose removal (or touch) failed: always 0 in a dry run, which does neither. */
  errors: number
  /** Instance disks that could not be read: while any exist, nothing is deleted (exit 4). */
  guard: DiskProblem[]
  instancesPath: string
  node: string
}

/** What a prune run did on a node: every count is of something this run changed. */
export interface PruneRunResult extends PruneNodeFields {
  decisions: PruneDecision[]
  dryRun: false
  /** Allocated bytes this run freed. */
  reclaimedBytes: number
  /** Entries this run removed. */
  removed: number
  /** Orphaned imgcache metadata files this run removed. */
  sidecarsRemoved: number
  /** Prune by space (--keep-free, --max-size): present when a target applies to the node. */
  space?: SpaceReport
  /** Entries whose mtime this run refreshed. */
  touched: number
}

/** What a dry run found on a node: it changed nothing, so its counts say what prune would do. */
export interface PruneDryRunResult extends PruneNodeFields {
  decisions: PrunePreview[]
  dryRun: true
  /** Prune by space (--keep-free, --max-size): what prune would do for the target, when one applies. */
  space?: SpacePreview
  /** Allocated bytes prune would free. */
  wouldReclaimBytes: number
  /** Entries prune would remove. */
  wouldRemove: number
  /** Entries whose mtime prune would refresh. */
  wouldTouch: number
}

export type PruneResult = PruneDryRunResult | PruneRunResult

export interface PruneOptions {
  dryRun: boolean
  /** How long to wait for a lock held by someone else before skipping the file. */
  lockTimeoutMs: number
  /** Called once per decision, as it is made (for log lines): a preview in a dry run. */
  onDecision?: (decision: PruneDecision | PrunePreview) => void
  signal?: AbortSignal
}

/** The reason of an entry the first scan found in use (the re-check under the lock gives its own). */
export const IN_USE = 'in use'

/** What prune does with a planned entry (before acting): shared by prune and inspect. */
export function pruneVerdict(
  item: PlanItem,
  guarded: boolean,
): {outcome: PruneVerdictOutcome; reason: string; removableAt?: string} {
  const v = item.verdict
  switch (v.action) {
    case 'ignore': {
      return {outcome: 'ignored', reason: "not a cache entry by Nova's rules"}
    }

    case 'keep': {
      if (v.reason === 'in-use') return {outcome: 'in-use', reason: IN_USE}
      const removableAt = new Date(v.removableAtMs).toISOString()
      if (v.reason === 'too-young') {
        return {
          outcome: 'too-young',
          reason: `unused, younger than ${formatDuration(item.minAgeSeconds ?? 0)}`,
          removableAt,
        }
      }

      return {
        outcome: 'removal-disabled',
        reason: 'unused and old enough, but remove_unused_base_images is off',
        removableAt,
      }
    }

    case 'remove': {
      if (guarded)
        return {outcome: 'guarded', reason: 'unused and old enough, kept because an instance disk could not be read'}
      return {
        outcome: 'would-remove',
        reason:
          item.kind === 'temporary'
            ? `stale ${item.name.endsWith('.part') ? 'download' : 'conversion'} left by an interrupted run`
            : 'unused and old enough',
      }
    }
  }
}

/**
 * Whether prune touches an in-use entry. When a disk cannot be read, Nova's pass stops in its
 * backing-file check, after it has touched the bases its instances' image ids name and before it
 * reaches the swap and ephemeral templates: those stay as they are (checked against Nova's own
 * code: test/e2e/nova-oracle.e2e.test.ts).
 */
function touches(item: PlanItem, guarded: boolean): boolean {
  return (
    item.verdict.action === 'keep' &&
    item.verdict.reason === 'in-use' &&
    item.verdict.touch &&
    !(guarded && (item.kind === 'swap' || item.kind === 'ephemeral'))
  )
}

/** What prune says of an entry, whatever it does with it. */
function entryOf(analysis: NodeAnalysis, item: PlanItem, reason: string, removableAt?: string): DecisionEntry {
  const entry: DecisionEntry = {
    ageSeconds: Math.round(item.ageSeconds),
    bytes: item.entry.type === 'symlink' ? 0 : item.entry.allocated,
    kind: item.kind,
    name: item.name,
    path: posix.join(analysis.settings.cacheDir, item.name),
    reason,
  }
  const use = analysis.usage.uses.get(item.name)
  if (use) entry.users = use.instances
  if (removableAt) entry.removableAt = removableAt
  return entry
}

function nodeFields(analysis: NodeAnalysis): PruneNodeFields {
  const {node, settings, usage} = analysis
  return {
    cacheDir: settings.cacheDir,
    cacheDirExists: analysis.scan.cacheDir.exists,
    errors: 0,
    guard: usage.problems,
    instancesPath: settings.instancesPath,
    node: node.name,
  }
}

/**
 * Nova's clean-up pass on one analysed node (reference §2.4–2.5): touch in-use entries, remove
 * unused ones old enough under their lock after re-checking their age, remove their lock files,
 * and remove imgcache's own stale temporaries when nobody holds their lock. With a space target
 * (--keep-free, --max-size), unused entries then go least recently used first until it is met
 * (prune-space.ts), under the same locks and re-check. A dry run makes the same decisions and
 * changes nothing.
 */
export async function prune(analysis: NodeAnalysis, options: PruneOptions): Promise<PruneResult> {
  return options.dryRun ? previewPrune(analysis, options) : prunePass(analysis, options)
}

/**
 * A dry run: the verdicts of the first scan, with no lock taken and nothing touched or removed. Its
 * result says what prune would do (`would-remove`, `wouldTouch`), never what was done: nothing was.
 */
function previewPrune(analysis: NodeAnalysis, options: PruneOptions): PruneDryRunResult {
  const guarded = analysis.usage.problems.length > 0
  const result: PruneDryRunResult = {
    ...nodeFields(analysis),
    decisions: [],
    dryRun: true,
    wouldReclaimBytes: 0,
    wouldRemove: 0,
    wouldTouch: 0,
  }
  const previews: PrunePreview[] = []
  for (const item of analysis.plan) {
    if (options.signal?.aborted) break
    if (item.kind === 'unknown' && item.name === SIDECAR_DIR) continue
    const {outcome, reason, removableAt} = pruneVerdict(item, guarded)
    previews.push({...entryOf(analysis, item, reason, removableAt), outcome, wouldTouch: touches(item, guarded)})
  }

  const space = hasSpaceTarget(analysis.settings.space) && !options.signal?.aborted
  if (space) {
    chooseSpaceRemovals(analysis, new Map(previews.map((p) => [p.name, p])), guarded, 'would-remove')
    byRank(previews)
  }

  for (const preview of previews) {
    if (preview.wouldTouch) result.wouldTouch++
    if (preview.outcome === 'would-remove') {
      result.wouldRemove++
      result.wouldReclaimBytes += preview.bytes
    }

    result.decisions.push(preview)
    options.onDecision?.(preview)
  }

  if (space) result.space = spacePreview(spaceReport(analysis, result.decisions, guarded))
  return result
}

/** Space removals move to the end of the decisions, in the order chosen (a stable sort keeps the rest). */
function byRank(decisions: Array<{space?: SpaceRemoval}>): void {
  const rank = (d: {space?: SpaceRemoval}) => d.space?.rank ?? 0
  decisions.sort((a, b) => rank(a) - rank(b))
}

async function prunePass(analysis: NodeAnalysis, options: PruneOptions): Promise<PruneRunResult> {
  const {node, plan, settings, usage} = analysis
  const guarded = usage.problems.length > 0
  const result: PruneRunResult = {
    ...nodeFields(analysis),
    decisions: [],
    dryRun: false,
    reclaimedBytes: 0,
    removed: 0,
    sidecarsRemoved: 0,
    touched: 0,
  }
  const emit = (decision: PruneDecision) => {
    result.decisions.push(decision)
    options.onDecision?.(decision)
  }

  // Touch in-use entries first, as Nova marks them before it removes anything.
  const toTouch = plan.filter((i) => touches(i, guarded))
  let touchFailed = false
  if (toTouch.length > 0) {
    try {
      await node.touch(toTouch.map((i) => posix.join(settings.cacheDir, i.name)))
    } catch (error) {
      touchFailed = true
      result.errors++
      emit({
        ageSeconds: 0,
        bytes: 0,
        kind: 'original',
        name: '(touch)',
        outcome: 'error',
        path: settings.cacheDir,
        reason: `cannot refresh the mtime of in-use entries: ${describeError(error)}`,
        touched: false,
      })
    }
  }

  // Cache entries are removed together at the end, under all their locks at once and after one
  // re-scan (removeRechecked); imgcache's stale temporaries one by one, as soon as their lock is free.
  const decisions: PruneDecision[] = []
  const batch: Removal[] = []
  for (const item of plan) {
    if (options.signal?.aborted) break
    if (item.kind === 'unknown' && item.name === SIDECAR_DIR) continue
    const {outcome, reason, removableAt} = pruneVerdict(item, guarded)
    const decision: PruneDecision = {
      ...entryOf(analysis, item, reason, removableAt),
      // `removed` before the removal below, which turns it into what happened when the entry stays
      // (locked, rechecked, error); nothing reads a decision before that.
      outcome: outcome === 'would-remove' ? 'removed' : outcome,
      touched: touches(item, guarded) && !touchFailed,
    }

    if (outcome === 'would-remove' && item.verdict.action === 'remove') {
      if (item.kind === 'temporary') {
        // eslint-disable-next-line no-await-in-loop
        await removeUnderLock(analysis, item, decision, options)
      } else {
        batch.push({decision, item, lock: item.verdict.lock})
      }
    }

    decisions.push(decision)
  }

  // Space targets, after the age rules: the least recently used unused entries join the same batch
  // (the same locks, the same re-scan), and their decisions move to the end, in the order chosen.
  if (hasSpaceTarget(settings.space) && !options.signal?.aborted) {
    const byName = new Map(decisions.map((d) => [d.name, d]))
    for (const item of chooseSpaceRemovals(analysis, byName, guarded, 'removed')) {
      if (item.verdict.action === 'remove')
        batch.push({decision: byName.get(item.name)!, item, lock: item.verdict.lock})
    }

    byRank(decisions)
  }

  if (batch.length > 0) result.guard = [...result.guard, ...(await removeRechecked(analysis, batch, options))]

  for (const decision of decisions) {
    if (decision.touched) result.touched++
    if (decision.outcome === 'removed') {
      result.removed++
      result.reclaimedBytes += decision.bytes
    } else if (decision.outcome === 'error') {
      result.errors++
    }

    emit(decision)
  }

  if (hasSpaceTarget(settings.space)) result.space = spaceReport(analysis, result.decisions, result.guard.length > 0)

  if (!guarded && settings.policy.removeUnused) {
    const gone = new Set(result.decisions.filter((d) => d.outcome === 'removed').map((d) => d.name))
    result.sidecarsRemoved = await removeOrphanSidecars(analysis, gone)
  }

  return result
}

/** A cache entry prune is about to remove, and its decision (updated in place). */
interface Removal {
  decision: PruneDecision
  item: PlanItem
  /** Its lock's file name (`nova-<name>`). */
  lock: string
}

/**
 * Remove cache entries the first scan found unused and old enough, beyond Nova: their locks are
 * all taken first, in lockOrder (two prunes cannot deadlock), then ONE re-scan of the node says
 * whether a disk made meanwhile uses any of them. An overlay, imgcache's or Nova's
 * (imagebackend.py Qcow2.create_image), creates its disk under the same lock, so a disk that
 * exists by the time prune holds the lock is in that re-scan, and one that does not yet exist will
 * find the base gone under the lock. Locks are released on every path. Returns the instance disks
 * the re-scan could not read (the guard: then nothing is removed).
 */
async function removeRechecked(
  analysis: NodeAnalysis,
  batch: Removal[],
  options: PruneOptions,
): Promise<NodeAnalysis['usage']['problems']> {
  const {node, settings} = analysis
  const held: Array<{handle: LockHandle; removal: Removal}> = []
  let problems: NodeAnalysis['usage']['problems'] = []
  try {
    for (const removal of lockOrder(batch)) {
      if (options.signal?.aborted) {
        keepInterrupted(removal.decision)
        continue
      }

      // eslint-disable-next-line no-await-in-loop
      const handle = await takeLock(analysis, removal.item, removal.decision, options.lockTimeoutMs, options)
      if (handle) held.push({handle, removal})
    }

    if (held.length === 0) return problems
    if (options.signal?.aborted) {
      for (const {removal} of held) keepInterrupted(removal.decision)
      return problems
    }

    let fresh: NodeAnalysis
    try {
      fresh = await analyzeNode(node, settings, analysis.options)
    } catch (error) {
      for (const {removal} of held) {
        removal.decision.outcome = 'error'
        removal.decision.reason = `kept: cannot scan the node again under its lock: ${describeError(error)}`
      }

      return problems
    }

    problems = fresh.usage.problems
    const entries = new Map(fresh.scan.cacheDir.entries.map((e) => [e.name, e]))
    const toTouch: PruneDecision[] = []
    for (const {removal} of held) {
      const {decision, item} = removal
      const verdict = recheckRemoval(item, {
        entry: entries.get(item.name),
        guarded: problems.length > 0,
        use: fresh.usage.uses.get(item.name),
      })
      if (verdict.action === 'remove') {
        // eslint-disable-next-line no-await-in-loop
        await removeEntry(analysis, item, decision)
        continue
      }

      switch (verdict.reason) {
        case 'gone': {
          decision.outcome = 'rechecked'
          decision.reason = 'gone when re-checked under the lock'
          break
        }

        case 'guarded': {
          decision.outcome = 'guarded'
          decision.reason = `unused and old enough, kept because an instance disk could not be read when re-checked under the lock (${problems.map((p) => p.path).join(', ')})`
          break
        }

        case 'in-use': {
          decision.outcome = 'in-use'
          decision.reason = 'a disk made since the scan uses it, found when re-checked under the lock'
          decision.users = verdict.users
          if (verdict.touch) toTouch.push(decision)
          break
        }

        case 'used-again': {
          decision.outcome = 'rechecked'
          decision.reason = 'used again while waiting for the lock (mtime refreshed)'
          break
        }
      }
    }

    // Nova touches the in-use bases it finds (imagecache.py _age_and_verify_cached_images).
    if (toTouch.length > 0) {
      await node.touch(toTouch.map((d) => d.path)).then(
        () => {
          for (const d of toTouch) d.touched = true
        },
        () => undefined,
      )
    }
  } finally {
    for (const {handle} of held.toReversed()) {
      // eslint-disable-next-line no-await-in-loop
      await handle.release().catch(() => undefined)
    }
  }

  // Nova removes a removed base's lock file outside the lock (even when the re-check kept the file);
  // not when a disk was found using the base meanwhile, whose lock is in use again.
  for (const {removal} of held) {
    const {decision, item} = removal
    if (item.verdict.action !== 'remove' || !item.verdict.removeLockFile) continue
    if (decision.outcome !== 'removed' && decision.outcome !== 'rechecked') continue
    // eslint-disable-next-line no-await-in-loop
    await node.remove(posix.join(settings.lockDir, item.verdict.lock)).catch(() => 'missing')
  }

  return problems
}

function keepInterrupted(decision: PruneDecision): void {
  decision.outcome = 'error'
  decision.reason = 'kept: interrupted before it could be removed'
}

/** The entry's lock, or undefined with the decision saying why not (busy, or an error). */
async function takeLock(
  analysis: NodeAnalysis,
  item: PlanItem,
  decision: PruneDecision,
  timeoutMs: number,
  options: PruneOptions,
): Promise<LockHandle | undefined> {
  if (item.verdict.action !== 'remove') return undefined
  const lockPath = posix.join(analysis.settings.lockDir, item.verdict.lock)
  try {
    return await analysis.node.lock(lockPath, {signal: options.signal, timeoutMs})
  } catch (error) {
    if (error instanceof ImgcacheError && error.code === 'LOCK_BUSY') {
      decision.outcome = 'locked'
      decision.reason =
        item.kind === 'temporary'
          ? 'a download or conversion holds its lock: still in progress'
          : `its lock ${lockPath} is held by another process; skipped (waited ${Math.round(timeoutMs / 1000)} s)`
      return undefined
    }

    decision.outcome = 'error'
    decision.reason = options.signal?.aborted
      ? 'kept: interrupted while waiting for its lock'
      : `cannot take its lock: ${describeError(error)}`
    return undefined
  }
}

/** Remove one entry whose lock is held, if its mtime is still at or before the cut-off (Nova's re-check). */
async function removeEntry(analysis: NodeAnalysis, item: PlanItem, decision: PruneDecision): Promise<void> {
  if (item.verdict.action !== 'remove') return
  try {
    const removed = await analysis.node.remove(decision.path, {olderThanMs: item.verdict.cutoffMs})
    if (removed !== 'removed') {
      decision.outcome = 'rechecked'
      decision.reason =
        removed === 'missing'
          ? 'gone when re-checked under the lock'
          : 'used again while waiting for the lock (mtime refreshed)'
    }
  } catch (error) {
    decision.outcome = 'error'
    decision.reason = `failed to remove: ${describeError(error)}`
    if (errnoCode((error as {cause?: unknown}).cause) === 'EACCES') decision.reason += ' (run as root or the nova user)'
  }
}

/** A stale temporary: removed only when nobody holds its lock right now (a download in progress does). */
async function removeUnderLock(analysis: NodeAnalysis, item: PlanItem, decision: PruneDecision, options: PruneOptions) {
  if (item.verdict.action !== 'remove') return
  const lock = await takeLock(analysis, item, decision, 0, options)
  if (!lock) return
  try {
    await removeEntry(analysis, item, decision)
  } finally {
    await lock.release()
  }

  if (item.verdict.removeLockFile) {
    await analysis.node.remove(posix.join(analysis.settings.lockDir, item.verdict.lock)).catch(() => 'missing')
  }
}

async function removeOrphanSidecars(analysis: NodeAnalysis, gone: Set<string>): Promise<number> {
  const {node, scan, settings} = analysis
  const present = new Set(scan.cacheDir.entries.map((e) => e.name).filter((n) => !gone.has(n)))
  let removed = 0
  for (const name of Object.keys(scan.sidecars)) {
    if (present.has(name) || present.has(`${name}.part`) || present.has(`${name}.converted`)) continue
    // eslint-disable-next-line no-await-in-loop
    const outcome = await node.remove(posix.join(settings.cacheDir, SIDECAR_DIR, `${name}.json`)).catch(() => 'missing')
    if (outcome === 'removed') removed++
  }

  return removed
}
