import {describe, expect, it} from 'vitest'

import {formatMetrics, previousSuccess} from '../../src/lib/report/metrics.js'

describe('Prometheus text for prune', () => {
  const result = {
    cacheDir: '/i/_base',
    cacheDirExists: true,
    decisions: [],
    dryRun: false as const,
    errors: 0,
    guard: [],
    instancesPath: '/i',
    node: 'cmp-"01"',
    reclaimedBytes: 2048,
    removed: 2,
    sidecarsRemoved: 0,
    touched: 1,
  }

  it('writes one series per node with escaped labels, and the success time', () => {
    const text = formatMetrics(
      [{after: {bytes: 10, entries: {original: 3}}, failed: false, node: result.node, result}],
      1_700_000_000,
      new Map(),
    )
    expect(text).toContain('# TYPE imgcache_cache_entries gauge')
    expect(text).toContain(String.raw`imgcache_cache_entries{kind="original",node="cmp-\"01\""} 3`)
    expect(text).toContain(String.raw`imgcache_prune_removed_entries{node="cmp-\"01\""} 2`)
    expect(text).toContain(String.raw`imgcache_prune_reclaimed_bytes{node="cmp-\"01\""} 2048`)
    expect(text).toContain(String.raw`imgcache_prune_last_success_timestamp_seconds{node="cmp-\"01\""} 1700000000`)
    expect(text.endsWith('\n')).toBe(true)
  })

  it('a dry run removed nothing and is no successful prune: zeros, and the previous last-success time', () => {
    const previous = previousSuccess('imgcache_prune_last_success_timestamp_seconds{node="cmp-03"} 1600000000\n')
    const dry = {
      ...result,
      decisions: [],
      dryRun: true as const,
      node: 'cmp-03',
      wouldReclaimBytes: 2048,
      wouldRemove: 2,
      wouldTouch: 1,
    }
    const text = formatMetrics(
      [{after: {bytes: 10, entries: {original: 3}}, failed: false, node: dry.node, result: dry}],
      1_700_000_000,
      previous,
    )
    expect(text).toContain('imgcache_prune_removed_entries{node="cmp-03"} 0')
    expect(text).toContain('imgcache_prune_reclaimed_bytes{node="cmp-03"} 0')
    expect(text).toContain('imgcache_prune_last_success_timestamp_seconds{node="cmp-03"} 1600000000')
    expect(text).toContain('imgcache_prune_last_run_timestamp_seconds{node="cmp-03"} 1700000000')
  })

  it('a failed node keeps its previous last-success time and counts an error', () => {
    const previous = previousSuccess('imgcache_prune_last_success_timestamp_seconds{node="cmp-02"} 1600000000\n')
    const text = formatMetrics([{failed: true, node: 'cmp-02'}], 1_700_000_000, previous)
    expect(text).toContain('imgcache_prune_last_success_timestamp_seconds{node="cmp-02"} 1600000000')
    expect(text).toContain('imgcache_prune_errors{node="cmp-02"} 1')
    expect(text).toContain('imgcache_prune_last_run_timestamp_seconds{node="cmp-02"} 1700000000')
  })
})
