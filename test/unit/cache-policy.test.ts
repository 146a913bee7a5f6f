import {describe, expect, it} from 'vitest'

import type {CacheScan} from '../../src/lib/node/types.js'

import {cacheName} from '../../src/lib/cache/naming.js'
import {NOVA_POLICY_DEFAULTS, type PlanItem, planPrune} from '../../src/lib/cache/policy.js'
import {computeUsage, indexScan, type UsageReport} from '../../src/lib/cache/usage.js'
import {libvirtXml} from '../fixtures/nova-host.js'
import {file, instanceDir, NOW, qcow2Head, scanOf} from '../helpers/scan-builder.js'

const INSTANCES = '/srv/instances'
const CACHE = `${INSTANCES}/_base`
const settings = {cacheDir: CACHE, ephemeralExtension: '0706d66', instancesPath: INSTANCES}
const sha = (id: string) => cacheName(id)

function usageOf(scan: CacheScan): UsageReport {
  return computeUsage(scan, indexScan(scan, settings), settings)
}

function plan(scan: CacheScan, policy = NOVA_POLICY_DEFAULTS): Record<string, PlanItem['verdict']> {
  const items = planPrune(scan.cacheDir.entries, usageOf(scan).uses, policy, NOW)
  return Object.fromEntries(items.map((i) => [i.name, i.verdict]))
}

function actions(scan: CacheScan, policy = NOVA_POLICY_DEFAULTS): Record<string, string> {
  const items = planPrune(scan.cacheDir.entries, usageOf(scan).uses, policy, NOW)
  return Object.fromEntries(
    items.map((i) => [
      i.name,
      i.verdict.action === 'keep'
        ? `keep:${i.verdict.reason}${i.verdict.reason === 'in-use' && i.verdict.touch ? ':touch' : ''}`
        : i.verdict.action,
    ]),
  )
}

const HOUR = 3600
const DAY = 86_400

describe('prune policy: ages (reference §6 cases 2, 18, 19, 22, 23, 25)', () => {
  it('case 2: the age is now minus mtime', () => {
    const items = planPrune(
      [{...file('x'.repeat(40), 0), mtimeMs: 1_000_000_000}],
      new Map(),
      NOVA_POLICY_DEFAULTS,
      2_000_000_000,
    )
    expect(items[0]?.ageSeconds).toBe(1_000_000)
  })

  it('case 18: a resized base is kept while fresh and removed, with its lock file, after 3601 s', () => {
    const name = `${sha('1')}_10737418240`
    expect(plan(scanOf([file(name, 10)]))[name]).toMatchObject({action: 'keep', reason: 'too-young'})
    expect(plan(scanOf([file(name, 3601)]))[name]).toEqual({
      action: 'remove',
      cutoffMs: NOW - 3600 * 1000,
      lock: `nova-${name}`,
      removeLockFile: true,
    })
  })

  it('case 19: an original is kept when fresh and at 3601 s, removed at 25 h', () => {
    const name = sha('1')
    expect(actions(scanOf([file(name, 0)]))[name]).toBe('keep:too-young')
    expect(actions(scanOf([file(name, 3601)]))[name]).toBe('keep:too-young')
    expect(actions(scanOf([file(name, 25 * HOUR)]))[name]).toBe('remove')
  })

  it('the boundary: exactly the minimum age is old enough (Nova keeps only age < max)', () => {
    expect(actions(scanOf([file(sha('1'), DAY)]))[sha('1')]).toBe('remove')
    expect(actions(scanOf([file(sha('1'), DAY - 1)]))[sha('1')]).toBe('keep:too-young')
  })

  it('cases 22 and 23: unused swap and ephemeral templates go after 24 h, used ones stay; their lock files stay', () => {
    const xml = libvirtXml({ephemeralGb: 2, imageId: 'a', swapMb: 128}, 'inst-1')
    const scan = scanOf(
      [
        file('swap_128', 11.6 * DAY),
        file('swap_256', 11.6 * DAY),
        file('ephemeral_2_0706d66', 11 * DAY),
        file('ephemeral_456_40d1d2c', 11 * DAY),
      ],
      [instanceDir('inst-1', {}, xml)],
    )
    const p = plan(scan)
    expect(p.swap_128).toEqual({action: 'keep', reason: 'in-use', touch: true})
    expect(p.ephemeral_2_0706d66).toEqual({action: 'keep', reason: 'in-use', touch: true})
    expect(p.swap_256).toMatchObject({action: 'remove', lock: 'nova-swap_256', removeLockFile: false})
    expect(p.ephemeral_456_40d1d2c).toMatchObject({
      action: 'remove',
      lock: 'nova-ephemeral_456_40d1d2c',
      removeLockFile: false,
    })
  })

  it('a swap template younger than 24 h is kept even though swap is not "original"', () => {
    expect(actions(scanOf([file('swap_512', 2 * HOUR)])).swap_512).toBe('keep:too-young')
  })

  it('case 25: with remove_unused_base_images off nothing is removed, in-use files are still touched', () => {
    const scan = scanOf(
      [file(sha('1'), 3 * DAY), file(sha('2'), 3 * DAY)],
      [instanceDir('i', {}, libvirtXml({imageId: '2'}, 'i'))],
    )
    const a = actions(scan, {...NOVA_POLICY_DEFAULTS, removeUnused: false})
    expect(a).toEqual({[sha('1')]: 'keep:removal-disabled', [sha('2')]: 'keep:in-use:touch'})
  })

  it("stale temporaries older than the resized age are removed under the final name's lock; fresh ones are kept", () => {
    const scan = scanOf([
      file(`${sha('1')}.part`, 2 * HOUR),
      file(`${sha('2')}.converted`, 10 * 60),
      file('notes.part', 9 * DAY),
    ])
    const p = plan(scan)
    expect(p[`${sha('1')}.part`]).toMatchObject({action: 'remove', lock: `nova-${sha('1')}`, removeLockFile: true})
    expect(p[`${sha('2')}.converted`]).toMatchObject({action: 'keep', reason: 'too-young'})
    expect(p['notes.part']).toEqual({action: 'ignore', reason: 'not-a-cache-entry'})
  })

  it('never plans to remove directories, dangling symlinks or unknown files, whatever their age', () => {
    const scan = scanOf([
      file(sha('1'), 9 * DAY, {type: 'dir'}),
      file(sha('2'), 9 * DAY, {targetType: 'missing', type: 'symlink'}),
      file(`${sha('3')}_5`, 9 * DAY),
      file('random.txt', 9 * DAY),
    ])
    expect(Object.values(actions(scan))).toEqual(['ignore', 'ignore', 'ignore', 'ignore'])
  })

  it('a symlink to a regular file is a candidate, as os.path.isfile follows links', () => {
    expect(actions(scanOf([file(sha('1'), 9 * DAY, {targetType: 'file', type: 'symlink'})]))[sha('1')]).toBe('remove')
  })
})

describe('usage from instance files (reference §6 cases 7–14, file-based)', () => {
  it('case 7: image, kernel and ramdisk ids in domain metadata protect and touch their bases', () => {
    const scan = scanOf(
      [
        file(sha('1'), 3 * DAY),
        file(sha('2'), 3 * DAY),
        file(sha('21'), 3 * DAY),
        file(sha('22'), 3 * DAY),
        file(sha('42'), 3 * DAY),
      ],
      [
        instanceDir('a', {}, libvirtXml({imageId: '1', name: 'instance-00000001'}, 'a')),
        instanceDir('b', {}, libvirtXml({imageId: '2', name: 'instance-00000002'}, 'b')),
      ],
      [
        {
          path: '/etc/libvirt/qemu/instance-00000003.xml',
          text: libvirtXml({imageId: '2', kernelId: '21', name: 'instance-00000003', ramdiskId: '22'}, 'c'),
        },
      ],
    )
    const usage = usageOf(scan)
    expect(usage.uses.get(sha('1'))).toEqual({instances: ['a (instance-00000001)'], touch: true, via: ['image']})
    expect(usage.uses.get(sha('2'))?.instances).toEqual(['b (instance-00000002)', 'instance-00000003'])
    expect(usage.uses.get(sha('21'))?.instances).toEqual(['instance-00000003'])
    expect(usage.uses.get(sha('22'))?.instances).toEqual(['instance-00000003'])
    expect(usage.uses.has(sha('42'))).toBe(false)
    expect(actions(scan)[sha('42')]).toBe('remove')
  })

  it("case 8: swap and ephemeral names come from the flavor; the ephemeral name uses the node's extension", () => {
    const scan = scanOf(
      [
        file('swap_128', 3 * DAY),
        file('swap_256', 3 * DAY),
        file('ephemeral_4_0706d66', 3 * DAY),
        file('ephemeral_4_40d1d2c', 3 * DAY),
      ],
      [
        instanceDir('a', {}, libvirtXml({ephemeralGb: 4, imageId: '1', swapMb: 256}, 'a')),
        instanceDir('b', {}, libvirtXml({imageId: '2', swapMb: 128}, 'b')),
      ],
    )
    const a = actions(scan)
    expect(a).toEqual({
      ephemeral_4_0706d66: 'keep:in-use:touch',
      ephemeral_4_40d1d2c: 'remove',
      swap_128: 'keep:in-use:touch',
      swap_256: 'keep:in-use:touch',
    })
  })

  it('case 9: a <uuid>_resize directory protects what its disks use', () => {
    const scan = scanOf(
      [file(sha('9'), 3 * DAY)],
      [instanceDir('u-1_resize', {disk: qcow2Head(`${CACHE}/${sha('9')}`)})],
    )
    expect(actions(scan)[sha('9')]).toMatch(/^keep:in-use/)
  })

  it('a <uuid>_del directory (an instance being deleted) protects nothing, as in Nova', () => {
    const scan = scanOf([file(sha('9'), 3 * DAY)], [instanceDir('u-1_del', {disk: qcow2Head(`${CACHE}/${sha('9')}`)})])
    expect(actions(scan)[sha('9')]).toBe('remove')
  })

  it('case 10: an image id reaches <fp>, <fp>_sm and <fp>_<digits>, not <fp>_<other>', () => {
    const fp = sha('1')
    const scan = scanOf(
      [file(fp, 3 * DAY), file(`${fp}_sm`, 3 * DAY), file(`${fp}_10737418240`, 3 * DAY), file(`${fp}_abc`, 3 * DAY)],
      [instanceDir('a', {}, libvirtXml({imageId: '1'}, 'a'))],
    )
    expect(actions(scan)).toEqual({
      [fp]: 'keep:in-use:touch',
      [`${fp}_10737418240`]: 'keep:in-use:touch',
      [`${fp}_abc`]: 'remove',
      [`${fp}_sm`]: 'keep:in-use:touch',
    })
  })

  it("Nova's list walk: of two adjacent <fp>_<digits> files the second stays unexplained (unless a disk uses it)", () => {
    const fp = sha('1')
    const entries = [file(`${fp}_10`, 3 * DAY), file(`${fp}_20`, 3 * DAY), file(`${fp}_30`, 3 * DAY)]
    const meta = instanceDir('a', {}, libvirtXml({imageId: '1'}, 'a'))
    expect(actions(scanOf(entries, [meta]))).toEqual({
      [`${fp}_10`]: 'keep:in-use:touch',
      [`${fp}_20`]: 'remove',
      [`${fp}_30`]: 'keep:in-use:touch',
    })
    // A disk backed by the skipped file protects it all the same.
    const backed = instanceDir('b', {disk: qcow2Head(`${CACHE}/${fp}_20`)})
    expect(actions(scanOf(entries, [meta, backed]))[`${fp}_20`]).toBe('keep:in-use')
  })

  it('case 11: disks backed by <sha1>_sm or <sha1>_<size> protect those files', () => {
    const scan = scanOf(
      [file(`${sha('1')}_sm`, 3 * DAY), file(`${sha('2')}_10737418240`, 3 * DAY), file(`${sha('3')}_sm`, 3 * DAY)],
      [
        instanceDir('instance-00000001', {disk: qcow2Head(`${CACHE}/${sha('1')}_sm`)}),
        instanceDir('banana-42-hamster', {disk: qcow2Head(`${CACHE}/${sha('2')}_10737418240`)}),
      ],
    )
    const a = actions(scan)
    expect(a[`${sha('1')}_sm`]).toMatch(/^keep:in-use/)
    expect(a[`${sha('2')}_10737418240`]).toMatch(/^keep:in-use/)
    expect(a[`${sha('3')}_sm`]).toBe('remove')
  })

  it('every disk counts, not only `disk`: disk.local on an ephemeral template, disk.swap on a swap template', () => {
    const scan = scanOf(
      [file('ephemeral_20_40d1d2c', 3 * DAY), file('swap_512', 3 * DAY), file(sha('1'), 3 * DAY)],
      [
        instanceDir('u1', {
          disk: qcow2Head(`${CACHE}/${sha('1')}`),
          'disk.local': qcow2Head(`${CACHE}/ephemeral_20_40d1d2c`),
          'disk.swap': qcow2Head(`${CACHE}/swap_512`),
        }),
      ],
    )
    expect(Object.values(actions(scan)).every((a) => a.startsWith('keep:in-use'))).toBe(true)
  })

  it("relative backing names are resolved against the disk's directory", () => {
    const scan = scanOf([file(sha('1'), 3 * DAY)], [instanceDir('u1', {disk: qcow2Head(`../_base/${sha('1')}`)})])
    expect(usageOf(scan).instances[0]?.disks[0]?.backingChain).toEqual([`${CACHE}/${sha('1')}`])
    expect(actions(scan)[sha('1')]).toMatch(/^keep:in-use/)
  })

  it("Nova's basename rule: a backing file in another directory with a cache name protects the local entry", () => {
    const scan = scanOf(
      [file(sha('1'), 3 * DAY)],
      [instanceDir('u1', {disk: qcow2Head(`/mnt/other-host/_base/${sha('1')}`)})],
    )
    expect(actions(scan)[sha('1')]).toMatch(/^keep:in-use/)
  })

  it('the whole chain counts: disk → instance-local overlay → cache base', () => {
    const scan = scanOf(
      [file(sha('1'), 3 * DAY)],
      [instanceDir('u1', {disk: qcow2Head('disk.snap'), 'disk.snap': qcow2Head(`${CACHE}/${sha('1')}`)})],
    )
    expect(usageOf(scan).instances[0]?.disks.find((d) => d.name === 'disk')?.backingChain).toEqual([
      `${INSTANCES}/u1/disk.snap`,
      `${CACHE}/${sha('1')}`,
    ])
  })

  it('backing-only use does not touch when the metadata names the image; infers the image (and touches) without metadata', () => {
    const withMeta = scanOf(
      [file(sha('1'), 3 * DAY), file(sha('2'), 3 * DAY)],
      [instanceDir('u1', {disk: qcow2Head(`${CACHE}/${sha('2')}`)}, libvirtXml({imageId: '1'}, 'u1'))],
    )
    expect(actions(withMeta)).toEqual({[sha('1')]: 'keep:in-use:touch', [sha('2')]: 'keep:in-use'})
    const noMeta = scanOf([file(sha('2'), 3 * DAY)], [instanceDir('u1', {disk: qcow2Head(`${CACHE}/${sha('2')}`)})])
    expect(actions(noMeta)).toEqual({[sha('2')]: 'keep:in-use:touch'})
  })

  it('case 12: a damaged instance disk is a problem that names the disk', () => {
    const damaged = Buffer.alloc(4096)
    damaged.write('QFI\u00FB', 0, 'latin1')
    damaged.writeUInt32BE(7, 4)
    const usage = usageOf(scanOf([file(sha('1'), 3 * DAY)], [instanceDir('u1', {disk: damaged})]))
    expect(usage.problems).toEqual([
      {instance: 'u1', path: `${INSTANCES}/u1/disk`, reason: 'unsupported qcow2 version 7'},
    ])
  })

  it('an unreadable disk (EACCES) is a problem; a disk that vanished (ENOENT) is not', () => {
    const scan = scanOf(
      [],
      [
        {disks: [{error: 'cannot read: EACCES', errorCode: 'EACCES', name: 'disk'}], name: 'u1'},
        {disks: [{error: 'cannot read: ENOENT', errorCode: 'ENOENT', name: 'disk'}], name: 'u2'},
      ],
    )
    expect(usageOf(scan).problems.map((p) => p.path)).toEqual([`${INSTANCES}/u1/disk`])
  })

  it("case 14: the full pass of Nova's test", () => {
    const fp = sha('1')
    const entries = [
      file('00000001', 3 * DAY),
      file('ephemeral_0_20_None', 3 * DAY),
      file(`${'e97222e91fc4241f49a7f520d1dcf446751129b3'}_sm`, 3 * DAY),
      file(`${'e09c675c2d1cfac32dae3c2d83689c8c94bc693b'}_sm`, 3 * DAY),
      file(sha('42'), 3 * DAY),
      file(fp, 3 * DAY),
      file(sha('21'), 3 * DAY),
      file(sha('22'), 3 * DAY),
      file(`${fp}_5368709120`, 3 * DAY),
      file(`${fp}_10737418240`, 3 * DAY),
      file('00000004', 3 * DAY),
    ]
    const backed = qcow2Head(`${CACHE}/${fp}_5368709120`)
    const scan = scanOf(entries, [
      instanceDir('instance-1', {disk: backed}, libvirtXml({imageId: '1', name: 'instance-1'}, 'instance-1')),
      instanceDir(
        'instance-2',
        {disk: backed},
        libvirtXml({imageId: '1', kernelId: '21', name: 'instance-2', ramdiskId: '22'}, 'instance-2'),
      ),
    ])
    const a = actions(scan)
    const active = Object.entries(a)
      .filter(([, v]) => v.startsWith('keep:in-use'))
      .map(([k]) => k)
    // Exactly Nova's 4: <fp>_10737418240 follows <fp>_5368709120 in the listing and is skipped.
    expect(active.sort()).toEqual([fp, `${fp}_5368709120`, sha('21'), sha('22')].sort())
    expect(a[`${fp}_10737418240`]).toBe('remove')
    expect(a[`${'e97222e91fc4241f49a7f520d1dcf446751129b3'}_sm`]).toBe('remove')
    expect(a[`${'e09c675c2d1cfac32dae3c2d83689c8c94bc693b'}_sm`]).toBe('remove')
    expect(a[sha('42')]).toBe('remove')
    expect(a['00000001']).toBe('ignore')
    expect(a.ephemeral_0_20_None).toBe('ignore')
  })
})
