import {describe, expect, it} from 'vitest'

import type {InspectionResult, InspectOptions} from '../../src/lib/formats/index.js'

import {
  fatBootSector,
  inspectEveryWay,
  isoImage,
  luksHeader,
  mbrImage,
  type PartitionEntry,
  qcow2Header,
  qedHeader,
  rawBytes,
  vdiHeader,
  vhdHeader,
  vhdxImage,
  vmdkDescriptor,
  vmdkFooter,
  vmdkHeader,
  vmdkSparse,
} from '../helpers/image-corpus.js'

const MiB = 1024 * 1024

/** Inspects every way there is and insists they all agree before returning the verdict. */
async function inspect(image: Buffer, options?: InspectOptions): Promise<InspectionResult> {
  const results = await inspectEveryWay(image, options)
  for (const [way, result] of Object.entries(results)) {
    expect({result, way}).toEqual({result: results.random, way})
  }

  return results.random
}

function checks(result: InspectionResult): string[] {
  return result.failures.map((f) => f.check)
}

interface Case {
  candidates?: string[]
  check?: string
  format: string
  image: () => Buffer
  message?: RegExp
  name: string
  options?: InspectOptions
  virtualSize?: number
}

const cases: Case[] = [
  {format: 'qcow2', image: () => qcow2Header(), name: 'qcow2 v3', virtualSize: MiB},
  {format: 'qcow2', image: () => qcow2Header({version: 2}), name: 'qcow2 v2 (compat=0.10)', virtualSize: MiB},
  {
    format: 'qcow2',
    image: () => qcow2Header({incompatible: 8n}),
    name: 'qcow2 with compression type zstd (bit 3)',
    virtualSize: MiB,
  },
  {
    check: 'backing_file',
    format: 'qcow2',
    image: () => qcow2Header({backingFile: '/var/lib/nova/instances/_base/abc', backingFormat: 'raw'}),
    message: /backing file \("\/var\/lib\/nova\/instances\/_base\/abc"\)/,
    name: 'qcow2 with a backing file',
  },
  {
    check: 'data_file',
    format: 'qcow2',
    image: () => qcow2Header({dataFile: '/etc/shadow'}),
    message: /external data file \("\/etc\/shadow"\)/,
    name: 'qcow2 with an external data file',
  },
  {
    check: 'unknown_features',
    format: 'qcow2',
    image: () => qcow2Header({incompatible: 16n}),
    message: /Unknown QCOW2 features found: incompatible feature bit 4 \(extended_l2\)/,
    name: 'qcow2 with extended_l2',
  },
  {
    check: 'unknown_features',
    format: 'qcow2',
    image: () => qcow2Header({version: 1}),
    message: /Unsupported qcow2 version 1/,
    name: 'qcow (version 1)',
  },
  {check: 'banned', format: 'qed', image: () => qedHeader(2 * MiB), name: 'QED', virtualSize: 2 * MiB},
  {format: 'vmdk', image: () => vmdkSparse(), name: 'vmdk monolithicSparse', virtualSize: MiB},
  {
    format: 'vmdk',
    image: () => vmdkSparse({descriptor: vmdkDescriptor('streamOptimized'), version: 3}),
    name: 'vmdk streamOptimized',
    virtualSize: MiB,
  },
  {
    check: 'descriptor',
    format: 'vmdk',
    image: () => vmdkSparse({descriptor: vmdkDescriptor('vmfsSparse')}),
    message: /Unsupported subformat: create type "vmfsSparse"; allowed: streamOptimized, monolithicSparse/,
    name: 'sparse vmdk of another create type',
  },
  {
    check: 'descriptor',
    format: 'vmdk',
    image: () => Buffer.from(vmdkDescriptor('monolithicFlat', ['RW 2048 FLAT "disk-flat.vmdk" 0'])),
    message: /Unsupported subformat: create type "monolithicFlat"/,
    name: 'vmdk descriptor file, monolithicFlat',
  },
  {
    check: 'descriptor',
    format: 'vmdk',
    image: () => Buffer.from(vmdkDescriptor('twoGbMaxExtentSparse', ['RW 4096 SPARSE "disk-s001.vmdk"'])),
    message: /Unsupported subformat/,
    name: 'vmdk descriptor file, twoGbMaxExtentSparse',
    virtualSize: 2 * MiB,
  },
  {
    check: 'descriptor',
    format: 'vmdk',
    image: () => Buffer.from(vmdkDescriptor('monolithicFlat', ['RW 2048 FLAT "/etc/hosts" 0'])),
    name: 'vmdk descriptor file naming /etc/hosts',
  },
  {
    check: 'descriptor',
    format: 'vmdk',
    image: () => Buffer.from('# Disk DescriptorFile\nversion=1\nCID=1\nRW 2048 FLAT "x-flat.vmdk" 0\n'),
    message: /Unsupported subformat: no createType/,
    name: 'vmdk descriptor file without createType',
  },
  {
    format: 'raw',
    image: () => Buffer.from('#!/bin/sh\necho hello, world\n'),
    name: 'a text file that is not a descriptor',
    virtualSize: 28,
  },
  {
    check: 'descriptor',
    format: 'vmdk',
    image: () => vmdkSparse({descriptorSector: 2}),
    message: /Wrong descriptor location: sector 2, expected sector 1/,
    name: 'vmdk with its descriptor elsewhere than sector 1',
  },
  {
    check: 'descriptor',
    format: 'vmdk',
    image: () => vmdkSparse({descriptor: '', descriptorSectors: 0}),
    message: /No descriptor found/,
    name: 'vmdk without a descriptor',
  },
  {
    check: 'format',
    format: 'vmdk',
    image: () => vmdkSparse({version: 4}),
    message: /Unsupported VMDK format version 4/,
    name: 'vmdk sparse version 4',
  },
  {format: 'vhd', image: () => vhdHeader(3 * MiB), name: 'vhd (qemu vpc)', virtualSize: 3 * MiB},
  {format: 'vhdx', image: () => vhdxImage({size: 5 * MiB}), name: 'vhdx', virtualSize: 5 * MiB},
  {
    format: 'vhdx',
    image: () => vhdxImage({metadataOffset: 3 * MiB, size: 7 * MiB}),
    name: 'vhdx with its metadata region past the head',
    virtualSize: 7 * MiB,
  },
  {
    format: 'vhdx',
    image: () => vhdxImage({metadataOffset: 64 * 1024, size: 9 * MiB}),
    name: 'vhdx whose metadata region precedes the region table',
    virtualSize: 9 * MiB,
  },
  {
    check: 'format',
    format: 'vhdx',
    image: () => vhdxImage({regionCount: 5000}),
    message: /region count is 5000 \(limit 2047\)/,
    name: 'vhdx with too many regions',
  },
  {
    check: 'format',
    format: 'vhdx',
    image: () => vhdxImage({metadataCount: 4000}),
    message: /metadata item count is 4000/,
    name: 'vhdx with too many metadata items',
  },
  {format: 'vdi', image: () => vdiHeader(4 * MiB), name: 'vdi', virtualSize: 4 * MiB},
  {format: 'luks', image: () => luksHeader(1, 8, 64 * 1024), name: 'luks v1', virtualSize: 64 * 1024 - 8 * 512},
  {
    check: 'version',
    format: 'luks',
    image: () => luksHeader(2, 8, 64 * 1024),
    message: /LUKS version 2 is not supported/,
    name: 'luks v2',
  },
  {format: 'iso', image: () => isoImage(), name: 'iso 9660', virtualSize: 32 * 2048},
  {format: 'iso', image: () => isoImage({identifier: 'NSR02'}), name: 'udf (NSR02)', virtualSize: 32 * 2048},
  {
    candidates: ['iso', 'gpt'],
    format: 'iso',
    image() {
      const iso = isoImage()
      mbrImage([{boot: 0x80, chs: [0, 1, 0], lba: 0, type: 0x17}])
        .subarray(0, 512)
        .copy(iso)
      return iso
    },
    name: 'hybrid iso (iso + mbr) is an iso',
    virtualSize: 32 * 2048,
  },
  {
    candidates: ['qcow2', 'iso'],
    check: 'multiple_formats',
    format: 'qcow2',
    image: () => isoImage({systemArea: qcow2Header()}),
    message: /Multiple formats detected: qcow2, iso/,
    name: 'iso with a qcow2 header in its system area',
  },
  {format: 'gpt', image: () => mbrImage(), name: 'gpt protective mbr', virtualSize: 64 * 1024},
  {
    format: 'gpt',
    image: () =>
      mbrImage([
        {boot: 0x80, chs: [1, 1, 0], lba: 63, sectors: 60, type: 0x83},
        {chs: [0, 1, 5], lba: 2048, sectors: 40, type: 0x82},
      ]),
    name: 'classic mbr with two partitions',
  },
  {format: 'raw', image: () => fatBootSector(), name: 'a FAT boot sector is not a partition table'},
  {format: 'raw', image: () => rawBytes(200_000), name: 'raw', virtualSize: 200_000},
  {format: 'raw', image: () => Buffer.alloc(0), name: 'empty', virtualSize: 0},
  {format: 'raw', image: () => Buffer.from('QFI'), name: 'three bytes of a qcow2 magic', virtualSize: 3},
  {
    check: 'format',
    format: 'qcow2',
    image: () => qcow2Header().subarray(0, 40),
    message: /truncated/,
    name: 'a truncated qcow2 header',
  },
]

describe('format detection and safety checks (both entry points, every chunking)', () => {
  it.each(cases)('$name', async (c) => {
    const image = c.image()
    const result = await inspect(image, c.options)
    expect(result.format).toBe(c.format)
    expect(result.candidates).toEqual(c.candidates ?? [c.format])
    expect(result.actualSize).toBe(image.length)
    if (c.check === undefined) {
      expect(result.failures).toEqual([])
      expect(result.safe).toBe(true)
    } else {
      expect(checks(result)).toContain(c.check)
      expect(result.safe).toBe(false)
    }

    if (c.message) expect(result.failures.map((f) => f.message).join('\n')).toMatch(c.message)
    if (c.virtualSize !== undefined) expect(result.virtualSize).toBe(c.virtualSize)
  })
})

describe('qcow2 details', () => {
  it('reports version, cluster size, feature flags, backing file and format', async () => {
    const result = await inspect(qcow2Header({backingFile: 'base.raw', backingFormat: 'raw', clusterBits: 12}))
    expect(result.details).toEqual({
      backingFile: 'base.raw',
      backingFormat: 'raw',
      clusterSize: 4096,
      corrupt: false,
      dirty: false,
      extendedL2: false,
      version: 3,
    })
  })

  it('names the data file', async () => {
    const result = await inspect(qcow2Header({dataFile: 'data.raw'}))
    expect(result.details.dataFile).toBe('data.raw')
  })

  it('finds a backing file name stored beyond the 1 MiB head', async () => {
    const image = Buffer.alloc(2 * MiB)
    qcow2Header().copy(image)
    image.writeBigUInt64BE(BigInt(1.5 * MiB), 8)
    image.writeUInt32BE(8, 16)
    image.write('far.base', 1.5 * MiB)
    const result = await inspect(image)
    expect(result.failures).toEqual([{check: 'backing_file', message: 'qcow2 image has a backing file ("far.base")'}])
  })
})

// Reference case 49 (oslo.utils test_qcow2_feature_flag_checks).
function featureHeader(version: number, mutate: (buf: Buffer) => void): Buffer {
  const buf = qcow2Header({version: 3})
  buf.writeUInt32BE(version, 4)
  mutate(buf)
  return buf
}

describe('qcow2 feature flags', () => {
  it.each([
    ['no flags', 3, () => {}, []],
    ['highest-order byte set', 3, (b: Buffer) => b.writeUInt8(0x01, 0x48), ['unknown_features']],
    ['dirty bit only', 3, (b: Buffer) => b.writeUInt8(0x01, 0x4f), []],
    ['corrupt bit', 3, (b: Buffer) => b.writeUInt8(0x02, 0x4f), []],
    ['bit 7 of the low byte', 3, (b: Buffer) => b.writeUInt8(0x80, 0x4f), ['unknown_features']],
    ['version 1', 1, () => {}, ['unknown_features']],
    ['version 4', 4, () => {}, ['unknown_features']],
    ['version 2 with the same bytes', 2, (b: Buffer) => b.writeUInt8(0x80, 0x4f), []],
  ] as const)('%s', async (_name, version, mutate, expected) => {
    const result = await inspect(featureHeader(version, mutate))
    expect(result.format).toBe('qcow2')
    expect(checks(result)).toEqual(expected)
  })

  it('says which version is unsupported', async () => {
    const result = await inspect(featureHeader(4, () => {}))
    expect(result.failures).toEqual([{check: 'unknown_features', message: 'Unsupported qcow2 version 4'}])
  })
})

// Reference case 50 (oslo.utils test_vmdk_safety_checks).
function sparseWithLines(lines: string[]): Buffer {
  return vmdkSparse({descriptor: lines.join('\n')})
}

describe('vmdk descriptor rules', () => {
  const base = ['# a comment', '', ' ', 'someUnknownThing=foo', 'ddb whatever', 'rw 0 somefile.vmdk']
  const withType = (type: string, extra: string[] = []) => sparseWithLines([base[0]!, type, ...base.slice(1), ...extra])

  it.each([
    ['createType without quotes', withType('createType monolithicFlat'), /Unsupported subformat/],
    ['createType monolithicFlat', withType('createType="monolithicFlat"'), /Unsupported subformat/],
    [
      'a wronly extent',
      withType('createType="monolithicSparse"', ['wronly 2048 somefile2.vmdk']),
      /Invalid VMDK descriptor data/,
    ],
    [
      'an extent naming a path',
      withType('createType="monolithicSparse"', ['rw 2048 /etc/hosts']),
      /Invalid extent filenames found/,
    ],
    [
      'no extents',
      sparseWithLines(['# a comment', 'createType="monolithicSparse"', 'someUnknownThing=foo', 'ddb whatever']),
      /No extents found/,
    ],
    [
      'an unknown line',
      withType('createType="monolithicSparse"', ['bogus line here']),
      /unexpected line "bogus line here"/,
    ],
  ])('%s → refused', async (_name, image, message) => {
    const result = await inspect(image)
    expect(result.format).toBe('vmdk')
    expect(checks(result)).toEqual(['descriptor'])
    expect(result.failures[0]?.message).toMatch(message)
  })

  it('monolithicSparse with one plain extent is accepted', async () => {
    const result = await inspect(withType('createType="monolithicSparse"'))
    expect(result.failures).toEqual([])
    expect(result.details).toMatchObject({createType: 'monolithicSparse', version: 1})
  })

  it('matches the create type case-insensitively and keeps the case it was written in', async () => {
    const result = await inspect(withType('CREATETYPE="MonolithicSparse"'))
    expect(result.safe).toBe(true)
    expect(result.details.createType).toBe('MonolithicSparse')
  })

  it('lists extent file names', async () => {
    const result = await inspect(
      Buffer.from(vmdkDescriptor('monolithicFlat', ['RW 2048 FLAT "a-flat.vmdk" 0', 'RDONLY 10 FLAT "b.vmdk" 0'])),
    )
    expect(result.details.extents).toEqual(['a-flat.vmdk', 'b.vmdk'])
    expect(result.virtualSize).toBe(2058 * 512)
  })
})

function flat(extent = 'RW 2048 FLAT "disk-flat.vmdk" 0'): Buffer {
  return Buffer.from(vmdkDescriptor('monolithicFlat', [extent]))
}

describe('vmdk allowed create types', () => {
  it('accepts monolithicFlat when the list includes it', async () => {
    const result = await inspect(flat(), {vmdkAllowedTypes: ['monolithicFlat']})
    expect(result.safe).toBe(true)
    expect(result.virtualSize).toBe(MiB)
  })

  it('still refuses extents that name paths', async () => {
    const result = await inspect(flat('RW 2048 FLAT "/etc/hosts" 0'), {vmdkAllowedTypes: ['monolithicFlat']})
    expect(result.failures).toEqual([
      {check: 'descriptor', message: String.raw`Invalid extent filenames found: "RW 2048 FLAT \"/etc/hosts\" 0"`},
    ])
  })

  it('refuses the default types when they are not listed', async () => {
    const result = await inspect(vmdkSparse(), {vmdkAllowedTypes: ['monolithicFlat']})
    expect(result.failures[0]?.message).toMatch(/create type "monolithicSparse"; allowed: monolithicFlat/)
  })

  it('refuses every vmdk with an empty list', async () => {
    const result = await inspect(vmdkSparse({descriptor: vmdkDescriptor('streamOptimized')}), {vmdkAllowedTypes: []})
    expect(result.failures[0]?.message).toMatch(/every VMDK is refused \(the allowed list is empty\)/)
  })

  it('compares without case', async () => {
    const result = await inspect(vmdkSparse(), {vmdkAllowedTypes: ['MONOLITHICSPARSE']})
    expect(result.safe).toBe(true)
  })
})

// oslo.utils test_vmdk_footer_checks / test_vmdk_with_footer.
describe('streamOptimized footer', () => {
  const descriptor = vmdkDescriptor('streamOptimized')
  const sectors = Math.ceil(descriptor.length / 512)
  const header = vmdkHeader({descriptorSectors: sectors, gdAtEnd: true})
  const image = (footer: Buffer) =>
    vmdkSparse({descriptor, gdAtEnd: true, trailer: Buffer.concat([Buffer.alloc(4096, 0x5a), footer])})
  const headerWith = (mutate: (b: Buffer) => void) => {
    const copy = Buffer.from(header)
    copy.writeBigUInt64LE(21n, 56)
    mutate(copy)
    return copy
  }

  it('accepts a consistent footer', async () => {
    const result = await inspect(image(vmdkFooter(header)))
    expect(result.failures).toEqual([])
  })

  it.each([
    ['signature', {header: headerWith((b) => b.write('leak', 0, 'latin1'))}, /signature do not match/],
    ['version', {header: headerWith((b) => b.writeUInt32LE(2, 4))}, /versions do not match/],
    ['descriptor size', {header: headerWith((b) => b.writeBigUInt64LE(99n, 36))}, /different descriptor/],
    ['descriptor place', {header: headerWith((b) => b.writeBigUInt64LE(3n, 28))}, /different descriptor/],
    ['another footer', {header}, /another footer/],
    ['footer marker type', {footerType: 7}, /Footer marker is invalid/],
    ['footer marker size', {footerSize: 1}, /Footer marker is invalid/],
    ['footer marker padding', {footerPad: 1}, /Footer marker is invalid/],
    ['eos marker type', {eosType: 7}, /End-of-stream marker is invalid/],
    ['eos marker size', {eosSize: 1}, /End-of-stream marker is invalid/],
    ['eos marker padding', {eosPad: 1}, /End-of-stream marker is invalid/],
  ])('refuses a bad %s', async (_name, options, message) => {
    const result = await inspect(image(vmdkFooter(header, options)))
    expect(result.failures).toHaveLength(1)
    expect(result.failures[0]?.check).toBe('footer')
    expect(result.failures[0]?.message).toMatch(message)
  })

  it('refuses a stream that announces a footer and ends without one', async () => {
    const result = await inspect(vmdkSparse({descriptor, gdAtEnd: true}))
    expect(checks(result)).toEqual(['footer'])
  })
})

// Reference case 52 (oslo.utils test_gpt_mbr_check).
describe('mbr / gpt partition table checks', () => {
  it.each<[string, PartitionEntry[], RegExp | undefined]>([
    ['protective entry, correct', [{}], undefined],
    ['invalid boot flag', [{boot: 0x0a}], /partition entry 0 has invalid boot flag 0x0a/],
    ['no partitions', [{type: 0}], /no partitions defined/],
    ['a second entry next to the protective one', [{}, {}], /invalid extra partitions/],
    ['a non-protective type tolerates any start CHS', [{chs: [0, 1, 0], type: 0x8e}, {type: 2}], undefined],
    ['protective entry starting at head 1', [{chs: [0, 1, 0]}, {type: 2}], /invalid start CHS/],
    ['a non-protective type tolerates any start LBA', [{lba: 2, type: 0x8e}], undefined],
    ['protective entry starting at LBA 2', [{lba: 2}], /invalid start LBA/],
    ['protective entry not first', [{type: 0}, {}], /invalid extra partitions/],
  ])('%s', async (_name, entries, message) => {
    const result = await inspect(mbrImage(entries))
    expect(result.format).toBe('gpt')
    if (message) {
      expect(checks(result)).toEqual(['mbr'])
      expect(result.failures[0]?.message).toMatch(message)
    } else {
      expect(result.failures).toEqual([])
    }
  })

  it('reports the partition count and whether the MBR is protective', async () => {
    expect((await inspect(mbrImage())).details).toEqual({partitions: 1, protectiveMbr: true})
    expect((await inspect(mbrImage([{type: 0x83}, {type: 0x82}]))).details).toEqual({
      partitions: 2,
      protectiveMbr: false,
    })
  })
})

// Reference case 51.
describe('multiple formats', () => {
  it('exposes every matching format and refuses the image', async () => {
    const result = await inspect(isoImage({systemArea: qcow2Header()}))
    expect(result.candidates).toEqual(['qcow2', 'iso'])
    expect(result.failures[0]).toEqual({check: 'multiple_formats', message: 'Multiple formats detected: qcow2, iso'})
    expect(result.safe).toBe(false)
  })

  it('carries the failures of every candidate', async () => {
    const result = await inspect(isoImage({systemArea: qcow2Header({backingFile: '/etc/passwd'})}))
    expect(checks(result)).toEqual(['multiple_formats', 'backing_file'])
  })

  it('refuses an iso with a partition table and another header', async () => {
    const image = isoImage({systemArea: vhdHeader()})
    image[510] = 0x55
    image[511] = 0xaa
    image[446 + 4] = 0x83
    const result = await inspect(image)
    expect(result.candidates).toEqual(['vhd', 'iso', 'gpt'])
    expect(checks(result)).toContain('multiple_formats')
  })
})

describe('iso details', () => {
  it('keeps the volume size the primary volume descriptor declares', async () => {
    const image = Buffer.concat([isoImage({blocks: 32}), Buffer.alloc(4096)])
    const result = await inspect(image)
    expect(result.virtualSize).toBe(image.length)
    expect(result.details).toEqual({volumeDescriptor: 'CD001', volumeSize: 32 * 2048})
  })
})
