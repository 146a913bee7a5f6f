/**
 * Kernels and ramdisks an instance boots (usage.ts bootUseOf): Nova keeps the bases of kernel_id and
 * ramdisk_id, ids its database alone holds; on the node, libvirt.xml boots copies of those bases in
 * the instance directory, which the scan has hashed when a cache file has their size and first bytes.
 */
import {describe, expect, it} from 'vitest'

import type {CacheScan, DiskHead, EntryStat, InstanceDirScan} from '../../src/lib/node/types.js'

import {cacheName} from '../../src/lib/cache/naming.js'
import {NOVA_POLICY_DEFAULTS, planPrune} from '../../src/lib/cache/policy.js'
import {computeUsage, indexScan} from '../../src/lib/cache/usage.js'
import {libvirtXml} from '../fixtures/nova-host.js'
import {file, NOW, qcow2Head, scanOf} from '../helpers/scan-builder.js'

const INSTANCES = '/srv/instances'
const CACHE = `${INSTANCES}/_base`
const settings = {cacheDir: CACHE, ephemeralExtension: '0706d66', instancesPath: INSTANCES}
const sha = (id: string) => cacheName(id)
const DAY = 86_400

/** A cache original of `size` bytes that the scan hashed (or could not hash). */
function base(id: string, size: number, digest: string | {error: string}): EntryStat {
  const extra = typeof digest === 'string' ? {digest} : {digestError: digest.error}
  return file(sha(id), 3 * DAY, {size, ...extra})
}

/** A boot file as the scan reports it: its head, size and, when hashed, digest. */
function boot(name: string, size: number, digest?: string): DiskHead {
  return {digest, head: Buffer.alloc(16, 7), name, size}
}

function instance(dir: string, disks: DiskHead[], xml?: string): InstanceDirScan {
  return {
    disks: [{head: qcow2Head(`${CACHE}/${sha('ami')}`), name: 'disk', size: 196_616}, ...disks],
    libvirtXml: xml,
    name: dir,
  }
}

/** The cache every case shares: two kernels of one size, a ramdisk, the root image, an unreadable one. */
const CACHED = [
  base('aki-1', 1000, 'k1'),
  base('aki-2', 1000, 'k2'),
  base('ari-1', 2000, 'r1'),
  base('aki-bad', 3000, {error: 'Input/output error'}),
  file(sha('ami'), 3 * DAY),
]

interface Case {
  cache?: EntryStat[]
  dirs: InstanceDirScan[]
  /** Entry → `via:touch` (in use) or `-` (not in use), for the entries named. */
  expected: Record<string, string>
  name: string
}

const CASES: Case[] = [
  {
    dirs: [instance('u1', [boot('kernel', 1000, 'k1')])],
    expected: {[sha('aki-1')]: 'boot:touch', [sha('aki-2')]: '-'},
    name: "a kernel copy keeps the base with its bytes, touched as Nova touches kernel_id's, not the other of its size",
  },
  {
    dirs: [instance('u1', [boot('kernel', 1000, 'k2'), boot('ramdisk', 2000, 'r1')])],
    expected: {[sha('aki-1')]: '-', [sha('aki-2')]: 'boot:touch', [sha('ari-1')]: 'boot:touch'},
    name: 'a kernel and a ramdisk copy keep their two bases',
  },
  {
    dirs: [instance('u1', [boot('kernel.rescue', 1000, 'k1'), boot('ramdisk.rescue', 2000, 'r1')])],
    expected: {[sha('aki-1')]: 'boot:touch', [sha('ari-1')]: 'boot:touch'},
    name: "a rescued instance's kernel.rescue and ramdisk.rescue keep theirs",
  },
  {
    dirs: [instance('u1', [boot('kernel', 1000)])],
    expected: {[sha('aki-1')]: '-', [sha('aki-2')]: '-'},
    name: 'a copy the scan did not hash (no cache file has its size and first bytes) keeps nothing',
  },
  {
    dirs: [instance('u1', [boot('kernel', 1001, 'k1')])],
    expected: {[sha('aki-1')]: '-'},
    name: 'a digest of another size is another file',
  },
  {
    dirs: [instance('u1', [boot('vmlinuz', 1000, 'k1')])],
    expected: {[sha('aki-1')]: '-'},
    name: 'a file Nova never copies a kernel to is not a boot file',
  },
  {
    dirs: [instance('u1', [boot('kernel', 3000, 'k9')])],
    expected: {[sha('aki-bad')]: 'boot:keep'},
    name: 'a cache file of the same size that could not be hashed may be the original: kept, untouched',
  },
  {
    dirs: [
      instance(
        'u1',
        [],
        libvirtXml({imageId: 'ami', initrd: `_base/${sha('ari-1')}`, kernel: `_base/${sha('aki-2')}`}, 'u1', INSTANCES),
      ),
    ],
    expected: {[sha('aki-1')]: '-', [sha('aki-2')]: 'boot:touch', [sha('ari-1')]: 'boot:touch'},
    name: 'a kernel and initrd booted from the cache path keep their entries, touched',
  },
  {
    cache: [...CACHED, file(`${sha('aki-1')}_sm`, 3 * DAY), file(`${sha('aki-1')}_1073741824`, 3 * DAY)],
    dirs: [instance('u1', [boot('kernel', 1000, 'k1')])],
    expected: {
      [`${sha('aki-1')}_1073741824`]: 'boot:touch',
      [`${sha('aki-1')}_sm`]: 'boot:touch',
      [sha('aki-1')]: 'boot:touch',
    },
    name: "the copy's base is marked as Nova marks an image id: its _sm and <fp>_<digits> copies too",
  },
  {
    dirs: [
      instance('u1', [boot('kernel', 1000, 'k1')], libvirtXml({imageId: 'ami', kernel: 'u1/kernel'}, 'u1', INSTANCES)),
      instance('u2', [boot('kernel', 1000, 'k1')]),
    ],
    expected: {[sha('aki-1')]: 'boot:touch', [sha('ami')]: 'image+backing:touch'},
    name: 'with or without libvirt.xml, every instance booting a copy is a user',
  },
]

function describeUse(scan: CacheScan): Record<string, string> {
  const usage = computeUsage(scan, indexScan(scan, settings), settings)
  const out: Record<string, string> = {}
  for (const entry of scan.cacheDir.entries) {
    const use = usage.uses.get(entry.name)
    out[entry.name] = use ? `${use.via.join('+')}:${use.touch ? 'touch' : 'keep'}` : '-'
  }

  return out
}

describe('kernels and ramdisks keep their bases in use', () => {
  it.each(CASES)('$name', ({cache, dirs, expected}) => {
    const uses = describeUse(scanOf(cache ?? CACHED, dirs))
    expect(Object.fromEntries(Object.keys(expected).map((k) => [k, uses[k]]))).toEqual(expected)
  })

  it('names every instance that boots a copy as a user of the base, and prune keeps it', () => {
    const scan = scanOf(CACHED, [
      instance('u1', [boot('kernel', 1000, 'k1')]),
      instance('u2', [boot('kernel', 1000, 'k1'), boot('ramdisk', 2000, 'r1')]),
    ])
    const usage = computeUsage(scan, indexScan(scan, settings), settings)
    expect(usage.uses.get(sha('aki-1'))).toEqual({instances: ['u1', 'u2'], touch: true, via: ['boot']})
    const verdicts = Object.fromEntries(
      planPrune(scan.cacheDir.entries, usage.uses, NOVA_POLICY_DEFAULTS, NOW).map((i) => [i.name, i.verdict.action]),
    )
    expect(verdicts).toMatchObject({[sha('aki-1')]: 'keep', [sha('aki-2')]: 'remove', [sha('ari-1')]: 'keep'})
  })

  it('an unreadable copy is an unreadable disk: prune deletes nothing and says which', () => {
    const scan = scanOf(CACHED, [
      instance('u1', [{error: 'cannot read: Permission denied', errorCode: 'EACCES', name: 'kernel'}]),
    ])
    const usage = computeUsage(scan, indexScan(scan, settings), settings)
    expect(usage.problems).toEqual([
      {instance: 'u1', path: `${INSTANCES}/u1/kernel`, reason: 'cannot read: Permission denied'},
    ])
  })

  it('a boot path in the instance directory under a name Nova never uses is reported, not compared', () => {
    const scan = scanOf(CACHED, [instance('u1', [], libvirtXml({kernel: 'u1/vmlinuz-custom'}, 'u1', INSTANCES))])
    const usage = computeUsage(scan, indexScan(scan, settings), settings)
    expect(usage.metadataWarnings).toEqual([
      {path: `${INSTANCES}/u1/libvirt.xml`, reason: expect.stringContaining(`${INSTANCES}/u1/vmlinuz-custom`)},
    ])
  })
})
