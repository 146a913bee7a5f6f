import {describe, expect, it} from 'vitest'

import type {CacheScan} from '../../src/lib/node/types.js'

import {cacheName} from '../../src/lib/cache/naming.js'
import {lockOrder, NOVA_POLICY_DEFAULTS, planPrune, recheckRemoval} from '../../src/lib/cache/policy.js'
import {computeUsage, indexScan} from '../../src/lib/cache/usage.js'
import {IN_USE, type PruneDecision} from '../../src/lib/prune.js'
import {decisionLevel, decisionText} from '../../src/lib/report/prune-format.js'
import {libvirtXml} from '../fixtures/nova-host.js'
import {file, instanceDir, NOW, qcow2Head, scanOf} from '../helpers/scan-builder.js'

const INSTANCES = '/srv/instances'
const CACHE = `${INSTANCES}/_base`
const settings = {cacheDir: CACHE, ephemeralExtension: '0706d66', instancesPath: INSTANCES}
const DAY = 86_400
const A = cacheName('image-a')
const B = cacheName('image-b')
const minAge0 = {...NOVA_POLICY_DEFAULTS, originalMinAge: 0}

function analyse(scan: CacheScan, policy = minAge0) {
  const usage = computeUsage(scan, indexScan(scan, settings), settings)
  return {plan: planPrune(scan.cacheDir.entries, usage.uses, policy, scan.now), usage}
}

/** The first scan's plan item for `name` (planned for removal), and the re-check against a second scan. */
function recheck(name: string, first: CacheScan, second: CacheScan) {
  const item = analyse(first).plan.find((i) => i.name === name)
  if (!item) throw new Error(`${name} not in the plan`)
  expect(item.verdict.action).toBe('remove')
  const fresh = analyse(second)
  return recheckRemoval(item, {
    entry: second.cacheDir.entries.find((e) => e.name === name),
    guarded: fresh.usage.problems.length > 0,
    use: fresh.usage.uses.get(name),
  })
}

describe('lockOrder: the order prune takes the locks of the entries it removes', () => {
  it('sorts by lock name whatever order the plan gives, so two prunes never wait on each other in a cycle', () => {
    const removals = [
      {lock: 'nova-swap_512'},
      {lock: `nova-${B}`},
      {lock: 'nova-ephemeral_1_0706d66'},
      {lock: `nova-${A}`},
    ]
    const expected = removals.map((r) => r.lock).sort()
    expect(lockOrder(removals).map((r) => r.lock)).toEqual(expected)
    expect(lockOrder(removals.toReversed()).map((r) => r.lock)).toEqual(expected)
  })

  it('takes each lock once (this process would otherwise wait for itself)', () => {
    const order = lockOrder([
      {lock: `nova-${A}`, name: 'first'},
      {lock: `nova-${A}`, name: 'second'},
    ])
    expect(order.map((r) => r.name)).toEqual(['first'])
  })
})

describe('recheckRemoval: the re-scan under the lock decides', () => {
  const unused = scanOf([file(A, 2 * DAY)])

  it('removes an entry still unused and no younger than the cut-off', () => {
    expect(recheck(A, unused, scanOf([file(A, 2 * DAY)]))).toEqual({action: 'remove'})
  })

  it('keeps an entry that a disk made since the first scan is backed by, and touches it as Nova would', () => {
    const second = scanOf([file(A, 2 * DAY)], [instanceDir('vm-new', {disk: qcow2Head(`${CACHE}/${A}`)})])
    expect(recheck(A, unused, second)).toEqual({action: 'keep', reason: 'in-use', touch: true, users: ['vm-new']})
  })

  it('keeps an entry that an instance whose libvirt.xml names its image began to use', () => {
    const xml = libvirtXml({imageId: 'image-a', name: 'instance-00000001'}, 'vm-xml')
    const second = scanOf([file(A, 2 * DAY)], [instanceDir('vm-xml', {}, xml)])
    const verdict = recheck(A, unused, second)
    expect(verdict).toMatchObject({action: 'keep', reason: 'in-use'})
  })

  it('keeps an entry whose mtime moved past the cut-off (used again since the first scan)', () => {
    const touched = scanOf([file(A, -1)])
    expect(recheck(A, unused, touched)).toEqual({action: 'keep', reason: 'used-again'})
  })

  it('keeps an entry that is gone already', () => {
    expect(recheck(A, unused, scanOf([]))).toEqual({action: 'keep', reason: 'gone'})
  })

  it('keeps everything when a disk that appeared meanwhile cannot be read (the guard)', () => {
    const second = scanOf(
      [file(A, 2 * DAY)],
      [{disks: [{error: 'cannot read: EACCES', errorCode: 'EACCES', name: 'disk'}], name: 'vm-bad'}],
    )
    expect(recheck(A, unused, second)).toEqual({action: 'keep', reason: 'guarded'})
  })

  it('a disk over another base does not keep this one', () => {
    const first = scanOf([file(A, 2 * DAY), file(B, 2 * DAY)])
    const second = scanOf(
      [file(A, 2 * DAY), file(B, 2 * DAY)],
      [instanceDir('vm-b', {disk: qcow2Head(`${CACHE}/${B}`)})],
    )
    expect(recheck(A, first, second)).toEqual({action: 'remove'})
    expect(recheck(B, first, second)).toMatchObject({action: 'keep', reason: 'in-use'})
  })

  it('refuses an item the plan never meant to remove', () => {
    const item = analyse(scanOf([file(A, 2 * DAY)]), NOVA_POLICY_DEFAULTS).plan[0]!
    const young = {...item, verdict: {action: 'keep', reason: 'too-young', removableAtMs: NOW} as const}
    expect(() => recheckRemoval(young, {guarded: false})).toThrow(/not planned for removal/)
  })
})

describe('the log line of a base the re-check found in use', () => {
  const decision: PruneDecision = {
    ageSeconds: 2 * DAY,
    bytes: 4096,
    kind: 'original',
    name: A,
    outcome: 'in-use',
    path: `${CACHE}/${A}`,
    reason: 'a disk made since the scan uses it, found when re-checked under the lock',
    touched: true,
    users: ['vm-new'],
  }

  it('is shown by default and says why the base was kept, unlike an ordinary in-use base', () => {
    expect(decisionLevel(decision)).toBe('info')
    expect(decisionText('local', decision)).toBe(
      `local: touched ${CACHE}/${A}: in use by vm-new (a disk made since the scan uses it, found when re-checked under the lock)`,
    )
    expect(decisionLevel({...decision, reason: IN_USE})).toBe('verbose')
    expect(decisionText('local', {...decision, reason: IN_USE})).toBe(`local: touched ${CACHE}/${A}: in use by vm-new`)
  })
})
