import type {ItemResult} from '../populate.js'

import {formatBytes, formatDuration} from '../duration.js'
import {ExitCode, type ExitCodeValue} from '../exit-codes.js'
import {printable} from './printable.js'
import {renderTable} from './table.js'

export interface ItemTotals {
  cached: number
  errors: number
  existing: number
  /** Pairs the node's storage backend needs no cache for (an rbd clone): skipped, and a success. */
  notNeeded: number
  /** Nodes that could not be reached (each counts once, as in Nova's log line). */
  skippedHosts: number
}

/** Skip codes that mean "nothing to cache on this backend" (backend/rules.ts), not "node unreachable". */
const BACKEND_SKIPS = new Set(['RBD_CLONE', 'RBD_NEVER_DOWNLOAD'])

/** A pair skipped because the node's backend does not need it cached: done, not failed. */
export function isBackendSkip(item: ItemResult): boolean {
  return item.status === 'skipped' && item.code !== undefined && BACKEND_SKIPS.has(item.code)
}

export function totalsOf(items: ItemResult[]): ItemTotals {
  return {
    cached: items.filter((i) => i.status === 'cached').length,
    errors: items.filter((i) => i.status === 'error').length,
    existing: items.filter((i) => i.status === 'existing').length,
    notNeeded: items.filter((i) => isBackendSkip(i)).length,
    skippedHosts: new Set(items.filter((i) => i.status === 'skipped' && !isBackendSkip(i)).map((i) => i.node)).size,
  }
}

/** `1 node`, `2 nodes`. */
export function plural(count: number, noun: string): string {
  return `${count} ${noun}${count === 1 ? '' : 's'}`
}

/**
 * What happened to the (node, image) pairs, counting pairs and saying so: "6 of 6 node-image pairs
 * cached", "4 of 6 node-image pairs cached, 1 already cached, 1 failed". Counts that are zero are
 * left out; unreachable nodes are counted as nodes, beside the pairs they skipped. (Nova's own line,
 * "N cached, N existing, N errors, N skipped hosts", mixes pairs and hosts and writes "1 errors".)
 */
export function totalsLine(items: ItemResult[]): string {
  if (items.length === 0) return 'no node-image pairs'
  const t = totalsOf(items)
  const unreachable = items.filter((i) => i.status === 'skipped' && !isBackendSkip(i)).length
  const parts: Array<[number, string]> = [
    [t.cached, 'cached'],
    [t.existing, 'already cached'],
    [t.errors, 'failed'],
    [unreachable, `skipped (${plural(t.skippedHosts, 'node')} unreachable)`],
    [t.notNeeded, "not needed on the node's storage backend"],
  ]
  const counted = parts.filter(([n]) => n > 0)
  return counted
    .map(([n, what], index) =>
      index === 0 ? `${n} of ${plural(items.length, 'node-image pair')} ${what}` : `${n} ${what}`,
    )
    .join(', ')
}

/**
 * Exit code of a run over (node, image) pairs: 0 all good; 3 some failed; when none succeeded,
 * the failures' own code if they agree (4: every one refused for safety), else 1. Interrupted: 130
 * when nothing finished, 3 otherwise.
 */
export function itemsExit(
  items: ItemResult[],
  interrupted: boolean,
  options: {nothingSucceeded?: ExitCodeValue} = {},
): ExitCodeValue {
  const ok = items.filter((i) => i.status === 'cached' || i.status === 'existing' || isBackendSkip(i)).length
  const failed = items.length - ok
  if (interrupted) return ok > 0 ? ExitCode.Partial : ExitCode.Interrupted
  if (failed === 0) return ExitCode.Ok
  if (ok > 0) return ExitCode.Partial
  if (options.nothingSucceeded !== undefined) return options.nothingSucceeded
  const codes = new Set(items.map((i) => i.exitCode ?? ExitCode.Failed))
  if (codes.size === 1) {
    const only = [...codes][0]
    if (only === ExitCode.Refused || only === ExitCode.Usage) return only
  }

  return ExitCode.Failed
}

function label(item: ItemResult): string {
  return item.image.name ?? item.image.ref
}

/**
 * The per-node, per-image report table, its tally (or `summary`, a line that includes it), then what
 * to do about each failure. FILE SIZE is the cached file's length, as ls -l shows it: for a raw base
 * its virtual size; the blocks it takes on disk are inspect's ON DISK.
 */
export function formatItems(items: ItemResult[], summary = totalsLine(items)): string {
  const rows = items.map((i) => [
    i.node,
    label(i),
    i.status,
    i.bytes === undefined ? '-' : formatBytes(i.bytes),
    i.durationMs === undefined ? '-' : formatDuration(i.durationMs / 1000),
    i.status === 'error' || i.status === 'skipped'
      ? (i.message ?? '')
      : [i.converted ? 'converted to raw' : '', i.resumedFrom ? `resumed at ${formatBytes(i.resumedFrom)}` : '']
          .filter(Boolean)
          .join(', '),
  ])
  const lines = [renderTable(['NODE', 'IMAGE', 'STATUS', 'FILE SIZE', 'TIME', 'DETAIL'], rows), summary]
  const steps = new Map<string, string[]>()
  for (const i of items) {
    if (!i.nextStep) continue
    steps.set(i.nextStep, [...(steps.get(i.nextStep) ?? []), `${i.node}: ${label(i)}`])
  }

  for (const [step, where] of steps)
    lines.push(
      printable(`→ ${step} (${where.slice(0, 5).join(', ')}${where.length > 5 ? `, +${where.length - 5}` : ''})`),
    )
  return lines.join('\n')
}
