import {mkdtemp, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterEach, beforeEach, describe, expect, it} from 'vitest'

import type {NodeAnalysis} from '../../src/lib/analysis.js'

import {cacheName} from '../../src/lib/cache/naming.js'
import {NOVA_POLICY_DEFAULTS, planPrune, recheckRemoval} from '../../src/lib/cache/policy.js'
import {
  effectiveTarget,
  parseKeepFree,
  parseMaxSize,
  planSpace,
  type SpaceCandidate,
  type SpaceTarget,
} from '../../src/lib/cache/space.js'
import {computeUsage, indexScan} from '../../src/lib/cache/usage.js'
import {loadConfig} from '../../src/lib/config/load.js'
import {resolveSpaceTarget} from '../../src/lib/config/settings.js'
import {UsageError} from '../../src/lib/errors.js'
import {chooseSpaceRemovals, spaceReport} from '../../src/lib/prune-space.js'
import {type PruneDecision, pruneVerdict} from '../../src/lib/prune.js'
import {file, instanceDir, NOW, qcow2Head, scanOf} from '../helpers/scan-builder.js'

const MiB = 1024 * 1024

describe('space targets: parsing', () => {
  it.each([
    ['10%', {percent: 10}],
    ['12.5 %', {percent: 12.5}],
    ['20G', {bytes: 20 * 1024 ** 3}],
    ['512M', {bytes: 512 * MiB}],
    ['1048576', {bytes: MiB}],
    [4096, {bytes: 4096}],
    ['120%', undefined],
    ['100%', undefined],
    ['0%', undefined],
    ['-5%', undefined],
    ['banana', undefined],
    ['10%%', undefined],
    [-1, undefined],
  ])('--keep-free %j → %j', (text, expected) => {
    expect(parseKeepFree(text)).toEqual(expected)
  })

  it.each([
    ['50G', 50 * 1024 ** 3],
    ['1M', MiB],
    [0, 0],
    ['banana', undefined],
    ['10%', undefined],
    [1.5, undefined],
  ])('--max-size %j → %j', (text, expected) => {
    expect(parseMaxSize(text)).toBe(expected)
  })
})

describe('space targets: the strictest applies', () => {
  const target: SpaceTarget = {
    keepFree: [
      {source: 'aggregates.a.prune.keepFree', value: {percent: 10}},
      {source: 'aggregates.b.prune.keepFree', value: {bytes: 5 * MiB}},
    ],
    maxSize: [
      {source: 'aggregates.a.prune.maxSize', value: 30 * MiB},
      {source: 'aggregates.b.prune.maxSize', value: 20 * MiB},
    ],
  }

  it('a percent is of the file system, rounded up; the most free space and the smallest cache win', () => {
    expect(effectiveTarget(target, 100 * MiB)).toEqual({
      keepFree: {percent: 10, source: 'aggregates.a.prune.keepFree', value: 10 * MiB},
      maxSize: {source: 'aggregates.b.prune.maxSize', value: 20 * MiB},
    })
    expect(effectiveTarget(target, 20 * MiB).keepFree).toEqual({
      percent: undefined,
      source: 'aggregates.b.prune.keepFree',
      value: 5 * MiB,
    })
    expect(effectiveTarget({keepFree: [{source: 's', value: {percent: 33}}], maxSize: []}, 1000).keepFree?.value).toBe(
      330,
    )
    expect(
      effectiveTarget({keepFree: [{source: 's', value: {percent: 33.3}}], maxSize: []}, 1000).keepFree?.value,
    ).toBe(333)
  })

  it('without the file system size a percent cannot apply', () => {
    expect(effectiveTarget({keepFree: [{source: 's', value: {percent: 10}}], maxSize: []}, undefined)).toEqual({})
  })
})

const c = (name: string, mtimeMs: number, bytes = 10): SpaceCandidate => ({bytes, mtimeMs, name})

describe('space targets: least recently used first, as few as reach the target', () => {
  const candidates = [c('young', 400), c('oldest', 100), c('b-tie', 200), c('a-tie', 200), c('mid', 300)]

  it('keep-free: oldest mtime first, the name breaking ties, stopping once reached', () => {
    expect(planSpace(candidates, {cacheBytes: 100, freeBytes: 5}, {keepFreeBytes: 30})).toEqual([
      {cacheBytesAfter: 90, freeBytesAfter: 15, name: 'oldest'},
      {cacheBytesAfter: 80, freeBytesAfter: 25, name: 'a-tie'},
      {cacheBytesAfter: 70, freeBytesAfter: 35, name: 'b-tie'},
    ])
  })

  it('max-size; both targets: until both hold', () => {
    expect(planSpace(candidates, {cacheBytes: 100, freeBytes: 5}, {maxSizeBytes: 85}).map((s) => s.name)).toEqual([
      'oldest',
      'a-tie',
    ])
    expect(
      planSpace(candidates, {cacheBytes: 100, freeBytes: 5}, {keepFreeBytes: 10, maxSizeBytes: 65}).map((s) => s.name),
    ).toEqual(['oldest', 'a-tie', 'b-tie', 'mid'])
  })

  it('nothing when already met; everything when even that falls short', () => {
    expect(planSpace(candidates, {cacheBytes: 100, freeBytes: 50}, {keepFreeBytes: 50, maxSizeBytes: 100})).toEqual([])
    expect(planSpace(candidates, {cacheBytes: 100, freeBytes: 5}, {keepFreeBytes: 1000})).toHaveLength(5)
  })

  it('free space unknown: only the max-size target is worked towards', () => {
    expect(planSpace(candidates, {cacheBytes: 100}, {keepFreeBytes: 1000})).toEqual([])
    expect(planSpace(candidates, {cacheBytes: 100}, {keepFreeBytes: 1000, maxSizeBytes: 95})).toEqual([
      {cacheBytesAfter: 90, freeBytesAfter: undefined, name: 'oldest'},
    ])
  })
})

describe('space targets: from the flag, the node, its aggregates, the prune section', () => {
  let dir: string
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'imgc-space-'))
  })
  afterEach(async () => {
    await rm(dir, {force: true, recursive: true})
  })

  const load = async (text: string) => {
    const file = join(dir, 'imgcache.yaml')
    await writeFile(file, text)
    return (await loadConfig({env: {HOME: dir, XDG_CONFIG_HOME: join(dir, 'xdg')}, path: file})).config
  }

  it('each key on its own: flag > node > every aggregate of the node > prune section', async () => {
    const config = await load(`
prune: { keepFree: 5%, maxSize: 100G, minAge: 12h }
nodes:
  cmp-01: { host: a, prune: { maxSize: 40G } }
  cmp-02: { host: b }
  cmp-03: { host: c }
aggregates:
  web: { nodes: [cmp-01, cmp-02], prune: { keepFree: 10% } }
  gpu: { nodes: [cmp-02], prune: { keepFree: 30G, maxSize: 60G } }
`)
    const G = 1024 ** 3
    expect(resolveSpaceTarget('cmp-01', config, config.nodes?.['cmp-01'], {})).toEqual({
      keepFree: [{source: 'aggregates.web.prune.keepFree', value: {percent: 10}}],
      maxSize: [{source: 'nodes.cmp-01.prune.maxSize', value: 40 * G}],
    })
    expect(resolveSpaceTarget('cmp-02', config, config.nodes?.['cmp-02'], {})).toEqual({
      keepFree: [
        {source: 'aggregates.web.prune.keepFree', value: {percent: 10}},
        {source: 'aggregates.gpu.prune.keepFree', value: {bytes: 30 * G}},
      ],
      maxSize: [{source: 'aggregates.gpu.prune.maxSize', value: 60 * G}],
    })
    expect(resolveSpaceTarget('cmp-03', config, config.nodes?.['cmp-03'], {})).toEqual({
      keepFree: [{source: 'prune.keepFree', value: {percent: 5}}],
      maxSize: [{source: 'prune.maxSize', value: 100 * G}],
    })
    expect(resolveSpaceTarget('cmp-01', config, config.nodes?.['cmp-01'], {keepFree: {bytes: 1}})).toEqual({
      keepFree: [{source: '--keep-free', value: {bytes: 1}}],
      maxSize: [{source: 'nodes.cmp-01.prune.maxSize', value: 40 * G}],
    })
    expect(resolveSpaceTarget('local', {}, undefined, {})).toEqual({keepFree: [], maxSize: []})
  })

  it('bad values name the file, the key path and what was expected', async () => {
    const error = await load(`
prune: { keepFree: 120% }
nodes:
  cmp-01: { host: a, prune: { maxSize: banana } }
aggregates:
  web: { nodes: [cmp-01], prune: { keepFree: lots } }
`).catch((error_: unknown) => error_)
    expect(error).toBeInstanceOf(UsageError)
    const e = error as UsageError
    expect(e.code).toBe('CONFIG_INVALID')
    expect(e.message).toContain('prune.keepFree: expected a size such as 20G or a percent of the file system below 100')
    expect(e.message).toContain('nodes.cmp-01.prune.maxSize: expected a size such as 50G')
    expect(e.message).toContain('aggregates.web.prune.keepFree: expected a size')
    await expect(load('nodes:\n  cmp-01: { host: a, prune: { minAge: 1h } }\n')).rejects.toThrow(
      /nodes.cmp-01.prune: unknown key minAge/,
    )
  })
})

describe('removals for space: the candidates, and the same re-check under the lock as every removal', () => {
  const INSTANCES = '/srv/instances'
  const CACHE = `${INSTANCES}/_base`
  const usageSettings = {cacheDir: CACHE, ephemeralExtension: '0706d66', instancesPath: INSTANCES}
  const [OLD, USED, YOUNG, LINKED] = ['old', 'used', 'young', 'linked'].map((id) => cacheName(id)) as [
    string,
    string,
    string,
    string,
  ]
  const HOUR = 3600

  function analysis(
    entries = baseEntries(),
    instances = [instanceDir('inst-1', {disk: qcow2Head(`${CACHE}/${USED}`)})],
  ) {
    const scan = {...scanOf(entries, instances), fs: {available: 10 * MiB, total: 100 * MiB}}
    const usage = computeUsage(scan, indexScan(scan, usageSettings), usageSettings)
    const policy = NOVA_POLICY_DEFAULTS
    return {
      plan: planPrune(scan.cacheDir.entries, usage.uses, policy, scan.now),
      scan,
      settings: {policy, space: {keepFree: [{source: '--keep-free', value: {percent: 99}}], maxSize: []}},
      usage,
    } as unknown as NodeAnalysis
  }

  function baseEntries() {
    return [
      file(OLD, 30 * HOUR, {allocated: MiB}),
      file(USED, 40 * HOUR, {allocated: MiB}),
      file(YOUNG, 2 * HOUR, {allocated: MiB}),
      file(LINKED, 20 * HOUR, {allocated: 0, targetType: 'file', type: 'symlink'}),
      file(`${cacheName('dl')}.part`, 600, {allocated: MiB}),
      file('random.txt', 50 * HOUR, {allocated: MiB}),
    ]
  }

  function decide(a: NodeAnalysis) {
    const decisions = new Map(
      a.plan.map((i): [string, PruneDecision] => {
        const {outcome} = pruneVerdict(i, false)
        return [
          i.name,
          {
            ageSeconds: i.ageSeconds,
            bytes: i.entry.allocated,
            kind: i.kind,
            name: i.name,
            outcome: outcome === 'would-remove' ? 'removed' : outcome,
            path: `${CACHE}/${i.name}`,
            reason: '',
            touched: false,
          },
        ]
      }),
    )
    return {decisions, items: chooseSpaceRemovals(a, decisions, false, 'removed')}
  }

  it('only unused regular files that are cache entries by Nova: never in use, a link, a temporary or another file', () => {
    const {decisions, items} = decide(analysis())
    expect(items.map((i) => i.name)).toEqual([YOUNG])
    expect(decisions.get(YOUNG)).toMatchObject({outcome: 'removed', space: {freeBytesAfter: 12 * MiB, rank: 1}})
    expect(items[0]!.verdict).toEqual({
      action: 'remove',
      cutoffMs: NOW - 2 * HOUR * 1000,
      lock: `nova-${YOUNG}`,
      removeLockFile: true,
    })
  })

  it('nothing when an instance disk could not be read (the guard) or removal is off', () => {
    const a = analysis()
    expect(chooseSpaceRemovals(a, decide(a).decisions, true, 'removed')).toEqual([])
    const off = {...a, settings: {...a.settings, policy: {...NOVA_POLICY_DEFAULTS, removeUnused: false}}}
    expect(chooseSpaceRemovals(off as NodeAnalysis, decide(off as NodeAnalysis).decisions, false, 'removed')).toEqual(
      [],
    )
  })

  it('the report says why a target was not reached', () => {
    const a = analysis()
    const {decisions} = decide(a)
    expect(spaceReport(a, [...decisions.values()], false)).toMatchObject({
      after: {freeBytes: 12 * MiB},
      before: {freeBytes: 10 * MiB, totalBytes: 100 * MiB},
      left: {inUse: {entries: 1}, kept: {entries: 0}, notRemovable: {entries: 2}},
      reached: false,
      reason: 'too-little-removable',
      removed: 1,
      target: {keepFreeBytes: 99 * MiB, keepFreeFrom: '--keep-free', keepFreePercent: 99},
    })
    const guarded = decide(a).decisions
    expect(spaceReport(a, [...guarded.values()], true).reason).toBe('guarded')
    const off = {
      ...a,
      settings: {...a.settings, policy: {...NOVA_POLICY_DEFAULTS, removeUnused: false}},
    } as NodeAnalysis
    expect(spaceReport(off, [...decide(off).decisions.values()], false).reason).toBe('removal-disabled')
    const blind = {...a, scan: {...a.scan, fs: undefined}} as NodeAnalysis
    expect(spaceReport(blind, [...decide(blind).decisions.values()], false)).toMatchObject({
      reached: false,
      reason: 'no-fs-usage',
    })
    // Only the entry in use is left: everything left is in use.
    const only = analysis([file(USED, 40 * HOUR, {allocated: MiB}), file(YOUNG, 2 * HOUR, {allocated: MiB})])
    expect(spaceReport(only, [...decide(only).decisions.values()], false)).toMatchObject({
      left: {inUse: {bytes: MiB, entries: 1}},
      reason: 'in-use',
    })
  })

  it('re-checked under the lock: touched since the scan, or used by a disk made since, it stays', () => {
    const [item] = decide(analysis()).items
    const entry = (ageSeconds: number) => file(YOUNG, ageSeconds, {allocated: MiB})
    expect(recheckRemoval(item!, {entry: entry(2 * HOUR), guarded: false})).toEqual({action: 'remove'})
    expect(recheckRemoval(item!, {entry: entry(0), guarded: false})).toEqual({action: 'keep', reason: 'used-again'})
    const later = analysis(baseEntries(), [
      instanceDir('inst-1', {disk: qcow2Head(`${CACHE}/${USED}`)}),
      instanceDir('inst-2', {disk: qcow2Head(`${CACHE}/${YOUNG}`)}),
    ])
    expect(
      recheckRemoval(item!, {entry: entry(2 * HOUR), guarded: false, use: later.usage.uses.get(YOUNG)}),
    ).toMatchObject({action: 'keep', reason: 'in-use'})
  })
})
