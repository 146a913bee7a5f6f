import type {SpacePreview, SpaceReport, Tally} from '../prune-space.js'
import type {PruneDecision, PrunePreview, PruneResult} from '../prune.js'

import {formatBytes, formatDuration} from '../duration.js'
import {IN_USE} from '../prune.js'

export type LogLevel = 'error' | 'info' | 'verbose' | 'warn'

/** How loud a decision is: actions and trouble by default, every decision with --verbose. */
export function decisionLevel(d: PruneDecision | PrunePreview): LogLevel {
  if (d.outcome === 'error') return 'error'
  if (d.outcome === 'guarded' || d.outcome === 'locked') return 'warn'
  // A base found in use only by the re-check under its lock: a disk was made over it meanwhile.
  if (d.outcome === 'removed' || d.outcome === 'would-remove' || (d.outcome === 'in-use' && d.reason !== IN_USE))
    return 'info'
  return 'verbose'
}

/** Whether a decision refreshed its entry's mtime, or (a dry run's preview) would. */
export function touchOf(d: PruneDecision | PrunePreview): {touched: boolean} | {wouldTouch: boolean} {
  return 'wouldTouch' in d ? {wouldTouch: d.wouldTouch} : {touched: d.touched}
}

/** One log line for a decision (a dry run's is a preview), in Nova's words where Nova has them. */
export function decisionText(node: string, d: PruneDecision | PrunePreview): string {
  const prefix = `${node}: `
  switch (d.outcome) {
    case 'error': {
      return `${prefix}failed to remove ${d.path}: ${d.reason}`
    }

    case 'guarded': {
      return `${prefix}kept ${d.path}: ${d.reason}`
    }

    case 'ignored': {
      return `${prefix}ignored ${d.path}: ${d.reason}`
    }

    case 'in-use': {
      const verb = 'wouldTouch' in d ? (d.wouldTouch ? 'would touch' : 'kept') : d.touched ? 'touched' : 'kept'
      return `${prefix}${verb} ${d.path}: in use by ${(d.users ?? []).join(', ')}${d.reason === IN_USE ? '' : ` (${d.reason})`}`
    }

    case 'locked': {
      return `${prefix}skipped ${d.path}: ${d.reason}`
    }

    case 'rechecked': {
      return `${prefix}kept ${d.path}: ${d.reason}`
    }

    case 'removal-disabled': {
      return `${prefix}kept ${d.path}: ${d.reason}`
    }

    case 'removed':
    case 'would-remove': {
      const verb = d.outcome === 'would-remove' ? 'would remove' : 'removed'
      return `${prefix}${verb} ${d.kind === 'temporary' ? 'stale temporary' : d.kind} ${d.path} (${formatBytes(d.bytes)}, unused for ${formatDuration(d.ageSeconds)})${d.kind === 'temporary' ? `: ${d.reason}` : ''}${d.space ? spaceStep(d.space, d.outcome === 'would-remove') : ''}`
    }

    case 'too-young': {
      return `${prefix}kept ${d.path}: too young to remove (${formatDuration(d.ageSeconds)} old${d.removableAt ? `, removable at ${d.removableAt}` : ''})`
    }
  }
}

/**
 * The closing line of a prune on one node. Off a terminal (cron) it is empty when nothing happened,
 * so cron stays quiet. With `person` (stderr is a terminal) there is always one line, with what the
 * run saw, so a person who ran it by hand is never left with silence.
 */
export function pruneSummary(r: PruneResult, options: {person?: boolean} = {}): string {
  const run = `${r.node}: prune ${r.dryRun ? '(dry run) ' : ''}`
  if (!r.cacheDirExists) return options.person ? `${run}no cache dir at ${r.cacheDir}: nothing to do` : ''
  const parts: string[] = []
  const [removed, bytes] = r.dryRun ? [r.wouldRemove, r.wouldReclaimBytes] : [r.removed, r.reclaimedBytes]
  if (removed > 0) parts.push(`${r.dryRun ? 'would remove' : 'removed'} ${removed} (${formatBytes(bytes)})`)
  if (r.errors > 0) parts.push(`${r.errors} error${r.errors === 1 ? '' : 's'}`)
  const locked = r.decisions.filter((d) => d.outcome === 'locked').length
  if (locked > 0) parts.push(`${locked} skipped (locked)`)
  if (r.guard.length > 0)
    parts.push(`nothing removed: ${r.guard.length} instance disk${r.guard.length === 1 ? '' : 's'} unreadable`)
  if (options.person) {
    const count = (outcome: string) => r.decisions.filter((d) => d.outcome === outcome).length
    const entries = r.decisions.filter((d) => d.outcome !== 'ignored').length
    const seen = `${entries} entr${entries === 1 ? 'y' : 'ies'} seen, ${count('in-use')} in use, ${count('too-young')} too young`
    return `${run}${seen}, ${parts.length > 0 ? parts.join(', ') : `${r.dryRun ? 'would remove' : 'removed'} none`}`
  }

  return parts.length > 0 ? `${run}${parts.join(', ')}` : ''
}

/** The tail of a removal made for space: its place in the order and what the file system then has. */
function spaceStep(step: NonNullable<PruneDecision['space']>, dryRun: boolean): string {
  const figures = [
    step.freeBytesAfter === undefined ? '' : `${formatBytes(step.freeBytesAfter)} free`,
    `cache ${formatBytes(step.cacheBytesAfter)}`,
  ].filter(Boolean)
  return `: #${step.rank} least recently used, for space; ${dryRun ? 'would leave' : 'leaves'} ${figures.join(', ')}`
}

function tallyText(t: Tally, what: string): string {
  return t.entries === 0 ? '' : `${t.entries} ${what} (${formatBytes(t.bytes)})`
}

/** Why a space target was not reached, in words. */
function shortfallText(space: SpaceReport): string {
  switch (space.reason) {
    case 'guarded': {
      return 'nothing removed: an instance disk could not be read'
    }

    case 'in-use': {
      return `every entry left in the cache is in use (${space.left.inUse.entries}, ${formatBytes(space.left.inUse.bytes)})`
    }

    case 'no-fs-usage': {
      return "the file system's free space could not be read"
    }

    case 'removal-disabled': {
      return 'remove_unused_base_images is off: prune removes nothing'
    }

    case 'too-little-removable': {
      const parts = [
        tallyText(space.left.inUse, 'in use'),
        tallyText(space.left.kept, 'kept under their lock or by the re-check'),
        tallyText(space.left.notRemovable, 'that prune never removes (not cache entries, temporaries in progress)'),
      ].filter(Boolean)
      return parts.length === 0
        ? "too little is removable: the cache is empty, the file system's other files hold the space"
        : `too little is removable: left are ${parts.join(', ')}`
    }

    case undefined: {
      return ''
    }
  }
}

/**
 * The line about a node's space target: a warning when it was not reached (the run still succeeded:
 * exit 0), an info line when entries were removed for it, a verbose one when it was met already.
 */
export function spaceLine(r: PruneResult): undefined | {level: LogLevel; text: string} {
  if (!r.space) return undefined
  const space = r.dryRun ? asReport(r.space) : r.space
  const {after, target} = space
  const asked = [
    target.keepFreeBytes === undefined
      ? ''
      : `${after.freeBytes === undefined ? 'free space unknown' : `${formatBytes(after.freeBytes)} free`}, at least ${formatBytes(target.keepFreeBytes)} asked (${target.keepFreeFrom}${target.keepFreePercent === undefined ? '' : ` ${target.keepFreePercent}%`})`,
    target.maxSizeBytes === undefined
      ? ''
      : `cache ${formatBytes(after.cacheBytes)}, at most ${formatBytes(target.maxSizeBytes)} asked (${target.maxSizeFrom})`,
  ]
    .filter(Boolean)
    .join('; ')
  const run = `${r.node}: ${r.dryRun ? '(dry run) ' : ''}`
  if (!space.reached)
    return {
      level: 'warn',
      text: `${run}space target ${r.dryRun ? 'would not be' : 'not'} reached: ${asked}: ${shortfallText(space)}`,
    }
  if (space.removed > 0) {
    return {
      level: 'info',
      text: `${run}space target ${r.dryRun ? 'would be ' : ''}reached: ${asked}; ${r.dryRun ? 'would remove' : 'removed'} ${space.removed} unused entr${space.removed === 1 ? 'y' : 'ies'} (${formatBytes(space.reclaimedBytes)}) least recently used first`,
    }
  }

  return {level: 'verbose', text: `${run}space target met: ${asked}`}
}

/** A dry run's space figures read as the report they project (for the wording above, which says "would"). */
function asReport(preview: SpacePreview): SpaceReport {
  const {wouldLeave, wouldReach, wouldReclaimBytes, wouldRemove, ...rest} = preview
  return {...rest, after: wouldLeave, reached: wouldReach, reclaimedBytes: wouldReclaimBytes, removed: wouldRemove}
}
