import {describe, expect, it} from 'vitest'

import {backingPath, DiskHeaderError, isPlainFileName, parseDiskHeader} from '../../src/lib/cache/qcow2-header.js'
import {qcow2Head} from '../helpers/scan-builder.js'

function mutate(fn: (b: Buffer) => void, backing?: string): Buffer {
  const head = qcow2Head(backing)
  fn(head)
  return head
}

describe('qcow2 header reader', () => {
  it('reads virtual size, cluster size and the backing file name', () => {
    expect(parseDiskHeader(qcow2Head('/var/lib/nova/instances/_base/abc', 20 * 1024 ** 3), 200_000)).toMatchObject({
      backingFile: '/var/lib/nova/instances/_base/abc',
      clusterSize: 65_536,
      format: 'qcow2',
      version: 3,
      virtualSize: 20 * 1024 ** 3,
    })
  })

  it('treats anything without the magic as raw', () => {
    expect(parseDiskHeader(Buffer.alloc(4096), 4096)).toEqual({format: 'raw'})
    expect(parseDiskHeader(Buffer.alloc(0), 0)).toEqual({format: 'raw'})
  })

  it('asks for the name when it lies beyond the bytes given', () => {
    const head = qcow2Head('name-beyond')
    const short = head.subarray(0, 0x2_00)
    expect(parseDiskHeader(short, 200_000)).toMatchObject({backingFileRange: {length: 11, offset: 0x2_10}})
  })

  it.each<[string, (b: Buffer) => void, RegExp]>([
    ['version 1', (b) => b.writeUInt32BE(1, 4), /unsupported qcow2 version 1/],
    ['version 4', (b) => b.writeUInt32BE(4, 4), /unsupported qcow2 version 4/],
    ['cluster bits 8', (b) => b.writeUInt32BE(8, 20), /cluster size/],
    ['cluster bits 22', (b) => b.writeUInt32BE(22, 20), /cluster size/],
    ['encryption method 3', (b) => b.writeUInt32BE(3, 32), /encryption/],
    ['misaligned L1 table', (b) => b.writeBigUInt64BE(0x3_00_01n, 40), /L1 table/],
    ['unknown incompatible feature bit 5', (b) => b.writeBigUInt64BE(1n << 5n, 72), /feature bits 0x20/],
    ['header length too small', (b) => b.writeUInt32BE(50, 100), /header length/],
    ['backing name longer than 1023 bytes', (b) => b.writeUInt32BE(2000, 16), /too long/],
    ['backing offset past the first cluster', (b) => b.writeBigUInt64BE(0x2_00_00n, 8), /backing file offset/],
  ])('refuses a damaged header: %s', (_label, fn, message) => {
    expect(() => parseDiskHeader(mutate(fn, 'x'), 200_000)).toThrow(message)
    expect(() => parseDiskHeader(mutate(fn, 'x'), 200_000)).toThrow(DiskHeaderError)
  })

  it('refuses a truncated file and a name past the end of the file', () => {
    expect(() => parseDiskHeader(qcow2Head().subarray(0, 40), 40)).toThrow(/truncated/)
    expect(() => parseDiskHeader(qcow2Head('abc'), 0x2_10)).toThrow(/past the end/)
  })

  it('accepts the known feature bits (dirty, corrupt, data file, compression, extended L2)', () => {
    expect(
      parseDiskHeader(
        mutate((b) => b.writeBigUInt64BE(0b1_1111n, 72)),
        200_000,
      ),
    ).toMatchObject({incompatibleFeatures: 31n})
  })

  it('resolves backing names as qemu does', () => {
    expect(backingPath('/i/u1', '../_base/abc')).toBe('/i/_base/abc')
    expect(backingPath('/i/u1', '/i/_base/abc')).toBe('/i/_base/abc')
    expect(backingPath('/i/u1', 'disk.snap')).toBe('/i/u1/disk.snap')
    expect(backingPath('/i/u1', 'file:/i/_base/x')).toBe('/i/_base/x')
    expect(backingPath('/i/u1', 'json:{"file":"x"}')).toBeUndefined()
    expect(backingPath('/i/u1', 'rbd:pool/image')).toBeUndefined()
    expect(isPlainFileName('nbd://host/export')).toBe(false)
  })
})
