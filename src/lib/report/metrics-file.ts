import {readFile, rename, unlink, writeFile} from 'node:fs/promises'
import {basename, dirname, join} from 'node:path'

import type {PruneResult} from '../prune.js'
import type {NodeFailure} from './outcome.js'

import {fromErrno} from '../errors.js'
import {formatMetrics, type NodeMetrics, previousSuccess} from './metrics.js'

function after(result: PruneResult): NodeMetrics['after'] {
  const entries: Record<string, number> = {ephemeral: 0, original: 0, resized: 0, swap: 0}
  let bytes = 0
  for (const d of result.decisions) {
    const gone = d.outcome === 'removed' && !result.dryRun
    if (gone || d.kind === 'temporary' || d.kind === 'unknown') continue
    entries[d.kind] = (entries[d.kind] ?? 0) + 1
    bytes += d.bytes
  }

  return {bytes, entries}
}

/**
 * Write the run's metrics atomically (temp file in the same directory, then rename), so the
 * textfile collector never reads half a file. Keeps each node's last-success time across failures.
 */
export async function writeMetricsFile(path: string, results: PruneResult[], failures: NodeFailure[]): Promise<void> {
  const previous = previousSuccess(await readFile(path, 'utf8').catch(() => undefined))
  const nodes: NodeMetrics[] = [
    ...results.map((r) => ({after: after(r), failed: r.guard.length > 0, node: r.node, result: r})),
    ...failures.map((f) => ({failed: true, node: f.node})),
  ]
  const text = formatMetrics(nodes, Math.floor(Date.now() / 1000), previous)
  const temporary = join(dirname(path), `.${basename(path)}.${process.pid}.tmp`)
  try {
    await writeFile(temporary, text, {mode: 0o644})
    await rename(temporary, path)
  } catch (error) {
    await unlink(temporary).catch(() => undefined)
    throw fromErrno(error, 'cannot write the metrics file', path, {field: '--metrics-file'})
  }
}
