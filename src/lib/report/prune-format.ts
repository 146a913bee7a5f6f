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
      return `${prefix}${verb} ${d.kind === 'temporary' ? 'stale temporary' : d.kind} ${d.path} (${formatBytes(d.bytes)}, unused for ${formatDuration(d.ageSeconds)})${d.kind === 'temporary' ? `: ${d.reason}` : ''}`
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
