import {posix} from 'node:path'

import type {DiskProblem} from './cache/usage.js'
import type {LockHandle} from './node/types.js'

import {analyzeNode, type NodeAnalysis} from './analysis.js'
import {SIDECAR_DIR} from './cache/naming.js'
import {lockOrder, type PlanItem, recheckRemoval} from './cache/policy.js'
import {hasSpaceTarget} from './cache/space.js'
import {formatDuration} from './duration.js'
import {describeError, errnoCode, ImgcacheError} from './errors.js'
import {chooseSpaceRemovals, type SpaceRemoval, type SpaceReport, spaceReport} from './prune-space.js'

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
  /** Removed (or, in a dry run, would be). */
  | 'removed'
  /** Kept: unused but younger than its minimum age. */
  | 'too-young'

export interface PruneDecision {
  ageSeconds: number
  bytes: number
  kind: PlanItem['kind']
  name: string
  outcome: PruneOutcome
  path: string
  reason: string
  /** When an unused entry becomes removable (ISO time), for too-young entries. */
  removableAt?: string
  /** Removed (or would be) for a space target, beyond the age rules: its place and the figures after it. */
  space?: SpaceRemoval
  /** Whether the entry's mtime was refreshed (or, in a dry run, would be). */
  touched: boolean
  users?: string[]
}

export interface PruneResult {
  cacheDir: string
  /** Whether the cache dir exists; when it does not, there is nothing to do. */
  cacheDirExists: boolean
  decisions: PruneDecision[]
  dryRun: boolean
  errors: number
  /** Instance disks that could not be read: while any exist, nothing is deleted (exit 4). */
  guard: DiskProblem[]
  instancesPath: string
  node: string
  /** Allocated bytes freed (or that would be freed). */
  reclaimedBytes: number
  removed: number
  /** Orphaned imgcache metadata files removed. */
  sidecarsRemoved: number
  /** Prune by space (--keep-free, --max-size): present when a target applies to the node. */
  space?: SpaceReport
  touched: number
}

export interface PruneOptions {
  dryRun: boolean
  /** How long to wait for a lock held by someone else before skipping the file. */
  lockTimeoutMs: number
  /** Called once per decision, as it is made (for log lines). */
  onDecision?: (decision: PruneDecision) => void
  signal?: AbortSignal
}

/** The reason of an entry the first scan found in use (the re-check under the lock gives its own). */
export const IN_USE = 'in use'

/** What prune does with a planned entry (before acting): shared by prune and inspect. */
export function pruneVerdict(
  item: PlanItem,
  guarded: boolean,
): {outcome: PruneOutcome; reason: string; removableAt?: string} {
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
        outcome: 'removed',
        reason:
          item.kind === 'temporary'
            ? `stale ${item.name.endsWith('.part') ? 'download' : 'conversion'} left by an interrupted run`
            : 'unused and old enough',
      }
    }
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
  const {node, plan, settings, usage} = analysis
  const guarded = usage.problems.length > 0
  const result: PruneResult = {
    cacheDir: settings.cacheDir,
    cacheDirExists: analysis.scan.cacheDir.exists,
    decisions: [],
    dryRun: options.dryRun,
    errors: 0,
    guard: usage.problems,
    instancesPath: settings.instancesPath,
    node: node.name,
    reclaimedBytes: 0,
    removed: 0,
    sidecarsRemoved: 0,
    touched: 0,
  }
  const emit = (decision: PruneDecision) => {
    result.decisions.push(decision)
    options.onDecision?.(decision)
  }

  // Touch in-use entries first, as Nova marks them before it removes anything. When a disk cannot
  // be read, Nova's pass stops in its backing-file check, after it has touched the bases its
  // instances' image ids name and before it reaches the swap and ephemeral templates: those stay
  // as they are (checked against Nova's own code: test/e2e/nova-oracle.e2e.test.ts).
  const touches = (item: (typeof plan)[number]) =>
    item.verdict.action === 'keep' &&
    item.verdict.reason === 'in-use' &&
    item.verdict.touch &&
    !(guarded && (item.kind === 'swap' || item.kind === 'ephemeral'))
  const toTouch = plan.filter((i) => touches(i))
  if (!options.dryRun && toTouch.length > 0) {
    try {
      await node.touch(toTouch.map((i) => posix.join(settings.cacheDir, i.name)))
    } catch (error) {
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
    const path = posix.join(settings.cacheDir, item.name)
    if (item.kind === 'unknown' && item.name === SIDECAR_DIR) continue
    const {outcome, reason, removableAt} = pruneVerdict(item, guarded)
    const decision: PruneDecision = {
      ageSeconds: Math.round(item.ageSeconds),
      bytes: item.entry.type === 'symlink' ? 0 : item.entry.allocated,
      kind: item.kind,
      name: item.name,
      outcome,
      path,
      reason,
      touched: touches(item),
    }
    const use = usage.uses.get(item.name)
    if (use) decision.users = use.instances
    if (removableAt) decision.removableAt = removableAt

    if (outcome === 'removed' && item.verdict.action === 'remove' && !options.dryRun) {
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
    for (const item of chooseSpaceRemovals(analysis, byName, guarded)) {
      const decision = byName.get(item.name)!
      if (!options.dryRun && item.verdict.action === 'remove') batch.push({decision, item, lock: item.verdict.lock})
    }

    const rank = (d: PruneDecision) => d.space?.rank ?? 0
    decisions.sort((a, b) => rank(a) - rank(b))
  }

  if (batch.length > 0) result.guard = [...result.guard, ...(await removeRechecked(analysis, batch, options))]

  for (const decision of decisions) {
    if (decision.touched && !options.dryRun) result.touched++
    if (decision.outcome === 'removed') {
      result.removed++
      result.reclaimedBytes += decision.bytes
    } else if (decision.outcome === 'error') {
      result.errors++
    }

    emit(decision)
  }

  if (hasSpaceTarget(settings.space)) result.space = spaceReport(analysis, result.decisions, result.guard.length > 0)

  if (!guarded && !options.dryRun && settings.policy.removeUnused) {
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
