import type {PruneResult} from '../prune.js'

/** Metric names and help texts, for node_exporter's textfile collector. */
const METRICS = {
  bytes: ['imgcache_cache_bytes', 'gauge', 'Bytes allocated by the cache dir after the last prune.'],
  entries: ['imgcache_cache_entries', 'gauge', 'Cache entries (Nova rules) after the last prune, by kind.'],
  errors: [
    'imgcache_prune_errors',
    'gauge',
    'Errors in the last prune run (failed removals, unreachable nodes, guard trips).',
  ],
  lastRun: ['imgcache_prune_last_run_timestamp_seconds', 'gauge', 'When the last prune run ended.'],
  lastSuccess: [
    'imgcache_prune_last_success_timestamp_seconds',
    'gauge',
    'When a prune run (not a dry run) last ended without errors.',
  ],
  reclaimed: ['imgcache_prune_reclaimed_bytes', 'gauge', 'Bytes freed by the last prune run (0 for a dry run).'],
  removed: ['imgcache_prune_removed_entries', 'gauge', 'Entries removed by the last prune run (0 for a dry run).'],
  spaceFree: [
    'imgcache_prune_space_free_bytes',
    'gauge',
    "Free bytes of the cache's file system after the last prune run (nodes with a space target).",
  ],
  spaceReached: [
    'imgcache_prune_space_target_reached',
    'gauge',
    "1 when the last prune run reached the node's space target (--keep-free, --max-size), else 0; reason says why not.",
  ],
  spaceRemoved: [
    'imgcache_prune_space_removed_entries',
    'gauge',
    'Entries the last prune run removed for the space target alone, beyond the age rules.',
  ],
} as const

function escapeLabel(value: string): string {
  return value
    .replaceAll('\\', '\\\\')
    .replaceAll('\n', String.raw`\n`)
    .replaceAll('"', String.raw`\"`)
}

export interface NodeMetrics {
  /** Entry counts by kind and bytes after the run (undefined when the node could not be scanned). */
  after?: {bytes: number; entries: Record<string, number>}
  /** Counted as an error for the node: unreachable, guard tripped, ... */
  failed: boolean
  node: string
  result?: PruneResult
}

/** Read the previous file's last-success timestamps, so a failed run does not erase them. */
export function previousSuccess(text: string | undefined): Map<string, number> {
  const out = new Map<string, number>()
  const re = /^imgcache_prune_last_success_timestamp_seconds\{node="((?:[^"\\]|\\.)*)"\} (\S+)$/gm
  for (const m of (text ?? '').matchAll(re))
    out.set((m[1] as string).replaceAll(String.raw`\"`, '"').replaceAll('\\\\', '\\'), Number(m[2]))
  return out
}

/** Prometheus text exposition of a prune run, one series per node. */
export function formatMetrics(nodes: NodeMetrics[], nowSeconds: number, previous: Map<string, number>): string {
  const lines: string[] = []
  const series = (key: keyof typeof METRICS, values: Array<[Record<string, string>, number]>) => {
    const [name, type, help] = METRICS[key]
    lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`)
    for (const [labels, value] of values) {
      const text = Object.entries(labels)
        .map(([k, v]) => `${k}="${escapeLabel(v)}"`)
        .join(',')
      lines.push(`${name}{${text}} ${Number.isInteger(value) ? value : value.toFixed(3)}`)
    }
  }

  series(
    'entries',
    nodes.flatMap((n) =>
      Object.entries(n.after?.entries ?? {}).map(([kind, count]): [Record<string, string>, number] => [
        {kind, node: n.node},
        count,
      ]),
    ),
  )
  series(
    'bytes',
    nodes.filter((n) => n.after).map((n) => [{node: n.node}, n.after?.bytes ?? 0]),
  )
  series(
    'removed',
    nodes.map((n) => [{node: n.node}, n.result?.dryRun ? 0 : (n.result?.removed ?? 0)]),
  )
  series(
    'reclaimed',
    nodes.map((n) => [{node: n.node}, n.result?.dryRun ? 0 : (n.result?.reclaimedBytes ?? 0)]),
  )
  series(
    'errors',
    nodes.map((n) => [{node: n.node}, (n.result?.errors ?? 0) + (n.failed ? 1 : 0)]),
  )
  // Space targets: only for runs that changed something (a dry run leaves the disk as it was).
  const spaced = nodes.flatMap((n) =>
    n.result?.space && !n.result.dryRun ? [{node: n.node, space: n.result.space}] : [],
  )
  if (spaced.length > 0) {
    series(
      'spaceReached',
      spaced.map(({node, space}) => [{node, reason: space.reason ?? 'none'}, space.reached ? 1 : 0]),
    )
    series(
      'spaceRemoved',
      spaced.map(({node, space}) => [{node}, space.removed]),
    )
    series(
      'spaceFree',
      spaced.flatMap(({node, space}): Array<[Record<string, string>, number]> =>
        space.after.freeBytes === undefined ? [] : [[{node}, space.after.freeBytes]],
      ),
    )
  }

  series(
    'lastSuccess',
    nodes
      .map((n): [Record<string, string>, number | undefined] => [
        {node: n.node},
        // A dry run changed nothing: it is no successful prune, whatever it found.
        n.failed || (n.result?.errors ?? 0) > 0 || n.result?.dryRun ? previous.get(n.node) : nowSeconds,
      ])
      .filter((s): s is [Record<string, string>, number] => s[1] !== undefined),
  )
  series(
    'lastRun',
    nodes.map((n) => [{node: n.node}, nowSeconds]),
  )
  return `${lines.join('\n')}\n`
}
