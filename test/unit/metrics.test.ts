import {describe, expect, it} from 'vitest'

import {spacePreview} from '../../src/lib/prune-space.js'
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

  it('says whether a space target was reached and why not, for runs that changed something', () => {
    const space = {
      after: {cacheBytes: 40, freeBytes: 60},
      before: {cacheBytes: 50, freeBytes: 50, totalBytes: 100},
      left: {inUse: {bytes: 40, entries: 2}, kept: {bytes: 0, entries: 0}, notRemovable: {bytes: 0, entries: 0}},
      reached: false,
      reason: 'in-use' as const,
      reclaimedBytes: 10,
      removed: 1,
      target: {keepFreeBytes: 90, keepFreeFrom: '--keep-free'},
    }
    const run = {...result, node: 'cmp-03', space}
    const text = formatMetrics([{failed: false, node: 'cmp-03', result: run}], 1_700_000_000, new Map())
    expect(text).toContain('imgcache_prune_space_target_reached{node="cmp-03",reason="in-use"} 0')
    expect(text).toContain('imgcache_prune_space_removed_entries{node="cmp-03"} 1')
    expect(text).toContain('imgcache_prune_space_free_bytes{node="cmp-03"} 60')
    const reached = {...run, space: {...space, reached: true, reason: undefined}}
    expect(formatMetrics([{failed: false, node: 'cmp-03', result: reached}], 1, new Map())).toContain(
      'imgcache_prune_space_target_reached{node="cmp-03",reason="none"} 1',
    )
    // A dry run leaves the disk as it was: no space series.
    const preview = {
      cacheDir: run.cacheDir,
      cacheDirExists: run.cacheDirExists,
      decisions: [],
      dryRun: true as const,
      errors: 0,
      guard: [],
      instancesPath: run.instancesPath,
      node: run.node,
      space: spacePreview(space),
    }
    const dry = formatMetrics(
      [{failed: false, node: 'cmp-03', result: {...preview, wouldReclaimBytes: 10, wouldRemove: 1, wouldTouch: 0}}],
      1,
      new Map(),
    )
    expect(dry).not.toContain('imgcache_prune_space_')
    // No target, no space series.
    expect(formatMetrics([{failed: false, node: 'x', result}], 1, new Map())).not.toContain('imgcache_prune_space_')
  })
})
