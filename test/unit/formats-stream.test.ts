import {mkdtemp, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import path from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {FormatInspector, inspectFile, inspectSource} from '../../src/lib/formats/index.js'
import {assembleResult} from '../../src/lib/formats/result.js'
import {TailRing} from '../../src/lib/formats/stream-capture.js'
import {
  inspectBuffer,
  inspectStream,
  qcow2Header,
  rawBytes,
  seededRandom,
  vhdxImage,
  vmdkDescriptor,
  vmdkFooter,
  vmdkHeader,
  vmdkSparse,
} from '../helpers/image-corpus.js'

const KiB = 1024
const MiB = 1024 * KiB

describe('streaming memory stays bounded', () => {
  it('keeps a few KiB after a qcow2 header, through 200 MiB of data in 1 MiB chunks', () => {
    const inspector = new FormatInspector()
    const zeros = Buffer.alloc(MiB)
    const header = Buffer.concat([qcow2Header({size: 200 * MiB}), zeros.subarray(4096)])
    inspector.write(header)
    let peak = inspector.retainedBytes
    for (let i = 1; i < 200; i++) {
      inspector.write(zeros)
      peak = Math.max(peak, inspector.retainedBytes)
      if (i >= 2) expect(inspector.retainedBytes).toBeLessThan(8 * KiB)
    }

    expect(peak).toBeLessThanOrEqual(MiB + 16 * KiB)
    const result = inspector.finish()
    expect(result).toMatchObject({actualSize: 200 * MiB, format: 'qcow2', safe: true, virtualSize: 200 * MiB})
    expect(inspector.retainedBytes).toBe(0)
  })

  it('stays under 2.2 MiB for a stream that looks like text (a possible VMDK descriptor)', () => {
    const inspector = new FormatInspector()
    const text = Buffer.alloc(64 * KiB, 'plain text that is not a descriptor\n')
    for (let i = 0; i < 64; i++) {
      inspector.write(text)
      expect(inspector.retainedBytes).toBeLessThan(2.2 * MiB)
    }

    expect(inspector.retainedBytes).toBeLessThan(8 * KiB)
    expect(inspector.finish().format).toBe('raw')
  })

  it('does not hold a VMDK descriptor larger than 1 MiB (oslo.utils test_vmdk_bad_descriptor_mem_limit)', () => {
    const image = Buffer.concat([vmdkSparse({descriptorSectors: (2 * MiB) / 512}), Buffer.alloc(3 * MiB)])
    const inspector = new FormatInspector()
    let peak = 0
    for (let at = 0; at < image.length; at += 64 * KiB) {
      inspector.write(image.subarray(at, at + 64 * KiB))
      peak = Math.max(peak, inspector.retainedBytes)
    }

    expect(peak).toBeLessThan(2.5 * MiB)
    expect(inspector.finish()).toMatchObject({format: 'vmdk', safe: true, virtualSize: MiB})
  })

  it('stops capturing once the probes have decided, whatever the chunk size', () => {
    const inspector = new FormatInspector()
    inspector.write(qcow2Header())
    for (let i = 0; i < 40 * KiB; i++) inspector.write(Buffer.of(i % 256))
    const settled = inspector.retainedBytes
    for (let i = 0; i < 100 * KiB; i++) inspector.write(Buffer.of(i % 256))
    expect(inspector.retainedBytes).toBe(settled)
    expect(settled).toBeLessThan(8 * KiB)
  })
})

describe('FormatInspector', () => {
  it('returns the same result from every finish() call', () => {
    const inspector = new FormatInspector()
    inspector.write(qcow2Header())
    const result = inspector.finish()
    expect(inspector.finish()).toBe(result)
    expect(inspector.bytesSeen).toBe(4096)
  })

  it('refuses data after finish()', () => {
    const inspector = new FormatInspector()
    inspector.finish()
    expect(() => inspector.write(Buffer.from('late'))).toThrow(
      expect.objectContaining({code: 'INSPECTOR_FINISHED'}) as Error,
    )
  })

  it('ignores empty chunks', () => {
    const inspector = new FormatInspector()
    inspector.write(Buffer.alloc(0))
    inspector.write(qcow2Header())
    inspector.write(Buffer.alloc(0))
    expect(inspector.finish()).toMatchObject({actualSize: 4096, format: 'qcow2'})
  })

  it('finds a streamOptimized footer across tiny and odd chunks', () => {
    const descriptor = vmdkDescriptor('streamOptimized')
    const header = vmdkHeader({descriptorSectors: Math.ceil(descriptor.length / 512), gdAtEnd: true})
    const image = vmdkSparse({
      descriptor,
      gdAtEnd: true,
      trailer: Buffer.concat([rawBytes(100 * KiB), vmdkFooter(header)]),
    })
    const random = seededRandom(7)
    for (const next of [() => 1, () => 3, () => 1535, () => 1537, () => 1 + Math.floor(random() * 5000)]) {
      expect(inspectStream(image, next).failures).toEqual([])
    }

    const broken = Buffer.from(image)
    broken[broken.length - 1] = 1
    expect(inspectStream(broken, () => 777).failures).toEqual([
      {check: 'footer', message: 'End-of-stream marker is invalid'},
    ])
  })

  it('gives the same results in random chunk sizes as random access, over many seeds', async () => {
    const images = [
      qcow2Header({backingFile: '/base', backingFormat: 'raw'}),
      vhdxImage({metadataOffset: 2 * MiB}),
      vmdkSparse(),
      Buffer.from(vmdkDescriptor('monolithicFlat', ['RW 8 FLAT "f" 0'])),
    ]
    for (const image of images) {
      const expected = await inspectBuffer(image)
      for (let seed = 1; seed <= 20; seed++) {
        const random = seededRandom(seed)
        const maxChunk = [7, 513, 4096, 70_000][seed % 4]!
        expect(inspectStream(image, () => 1 + Math.floor(random() * maxChunk))).toEqual(expected)
      }
    }
  })
})

function recordingSource(image: Buffer, size = image.length) {
  const reads: Array<[number, number]> = []
  const read = async (offset: number, length: number) => {
    reads.push([offset, length])
    const out = Buffer.alloc(Math.max(0, Math.min(length, size - offset)))
    image.copy(out, 0, offset, offset + out.length)
    return out
  }

  return {read, reads}
}

describe('inspectSource', () => {
  it('reads the head of a 10 GiB qcow2 in one request', async () => {
    const source = recordingSource(qcow2Header({size: 10 * 1024 * MiB}), 10 * 1024 * MiB)
    const result = await inspectSource(source.read, 10 * 1024 * MiB)
    expect(result).toMatchObject({format: 'qcow2', safe: true, virtualSize: 10 * 1024 * MiB})
    expect(source.reads).toEqual([[0, 32 * KiB + 2048]])
  })

  it('follows a vhdx to its size in four small reads', async () => {
    const image = vhdxImage({metadataOffset: 8 * MiB, size: 3 * MiB})
    const source = recordingSource(image)
    const result = await inspectSource(source.read, image.length)
    expect(result.virtualSize).toBe(3 * MiB)
    expect(source.reads).toEqual([
      [0, 32 * KiB + 2048],
      [192 * KiB, 64 * KiB],
      [8 * MiB, 64 * KiB],
      [8 * MiB + 64 * KiB, 8],
    ])
  })

  it('never reads past the end', async () => {
    const image = Buffer.from('tiny')
    const source = recordingSource(image)
    expect((await inspectSource(source.read, image.length)).format).toBe('raw')
    for (const [offset, length] of source.reads) expect(offset + length).toBeLessThanOrEqual(image.length)
  })

  it('reads nothing from an empty source', async () => {
    const source = recordingSource(Buffer.alloc(0))
    expect(await inspectSource(source.read, 0)).toMatchObject({actualSize: 0, format: 'raw', virtualSize: 0})
    expect(source.reads).toEqual([])
  })

  it('rejects a source that returns less than it should (the file changed)', async () => {
    await expect(inspectSource(async () => Buffer.alloc(10), 4096)).rejects.toMatchObject({
      code: 'INSPECT_SHORT_READ',
    })
  })

  it('rejects an impossible size', async () => {
    await expect(inspectSource(async () => Buffer.alloc(0), -1)).rejects.toMatchObject({code: 'INSPECT_BAD_SIZE'})
  })

  it('passes read errors through', async () => {
    await expect(
      inspectSource(async () => {
        throw new Error('connection reset')
      }, 4096),
    ).rejects.toThrow('connection reset')
  })
})

describe('inspectFile', () => {
  let dir: string
  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'imgcache-formats-'))
  })
  afterAll(async () => {
    await rm(dir, {force: true, recursive: true})
  })

  it('inspects a local file', async () => {
    const file = path.join(dir, 'disk.qcow2')
    await writeFile(file, qcow2Header({dataFile: 'x.raw'}))
    const result = await inspectFile(file)
    expect(result).toMatchObject({actualSize: 4096, format: 'qcow2', safe: false})
    expect(result.failures.map((f) => f.check)).toEqual(['data_file'])
  })

  it('passes the vmdk allow-list through', async () => {
    const file = path.join(dir, 'flat.vmdk')
    await writeFile(file, vmdkDescriptor('monolithicFlat', ['RW 8 FLAT "flat-f.vmdk" 0']))
    expect((await inspectFile(file)).safe).toBe(false)
    expect((await inspectFile(file, {vmdkAllowedTypes: ['monolithicFlat']})).safe).toBe(true)
  })

  it('says when the file does not exist', async () => {
    await expect(inspectFile(path.join(dir, 'missing'))).rejects.toMatchObject({
      code: 'FS_ENOENT',
      message: expect.stringContaining('missing: does not exist') as string,
    })
  })

  it('says when the path is a directory', async () => {
    await expect(inspectFile(dir)).rejects.toMatchObject({code: 'FS_EISDIR'})
  })
})

describe('assembleResult', () => {
  it('reports a probe left waiting for bytes that streamed past as incomplete', () => {
    const result = assembleResult(
      [
        ['qcow2', {status: 'no-match'}],
        ['vhdx', {needs: [{length: 8, offset: 123}, {tail: 512}], status: 'need'}],
      ],
      1000,
    )
    expect(result).toMatchObject({candidates: ['vhdx'], format: 'vhdx', safe: false})
    expect(result.failures).toEqual([
      {
        check: 'incomplete',
        message: 'vhdx header points at data that could not be read: 8 bytes at offset 123, the last 512 bytes',
      },
    ])
  })
})

describe('TailRing', () => {
  it('keeps the last bytes whatever the chunking', () => {
    const data = rawBytes(5000)
    for (const size of [1, 2, 7, 1536, 1537, 4999, 5000]) {
      const ring = new TailRing(1536)
      for (let at = 0; at < data.length; at += size) ring.push(data.subarray(at, at + size))
      expect(ring.last(1536)).toEqual(data.subarray(5000 - 1536))
      expect(ring.last(10)).toEqual(data.subarray(4990))
    }
  })

  it('returns what there is of a short stream', () => {
    const ring = new TailRing(16)
    ring.push(Buffer.from('abc'))
    expect(ring.last(16).toString()).toBe('abc')
  })
})
