import {execa} from 'execa'
import {mkdir, readFile, writeFile} from 'node:fs/promises'
import path from 'node:path'

import {
  type DiskFormat,
  FormatInspector,
  type InspectionResult,
  type InspectOptions,
  inspectSource,
} from '../../src/lib/formats/index.js'

// Hand-made image headers, shared by the unit tests and the corpus. Layouts: qemu
// docs/interop/qcow2.txt, VMware "Virtual Disk Format 5.0", [MS-VHDX], ECMA-119, UEFI 2.10 §5.

const MiB = 1024 * 1024

export interface Qcow2HeaderOptions {
  backingFile?: string
  backingFormat?: string
  clusterBits?: number
  dataFile?: string
  /** Incompatible feature bits (v3). Bit 2 is set for you when `dataFile` is given. */
  incompatible?: bigint
  size?: number
  version?: number
}

/** The first 4 KiB of a qcow2 image: header, extensions, then the backing file name. */
export function qcow2Header(options: Qcow2HeaderOptions = {}): Buffer {
  const {backingFile, backingFormat, clusterBits = 16, dataFile, size = MiB, version = 3} = options
  const buf = Buffer.alloc(4096)
  buf.write('QFI\u00FB', 0, 'latin1')
  buf.writeUInt32BE(version, 4)
  buf.writeUInt32BE(clusterBits, 20)
  buf.writeBigUInt64BE(BigInt(size), 24)
  const headerLength = version === 2 ? 72 : 104
  if (version >= 3) {
    const incompatible = (options.incompatible ?? 0n) | (dataFile === undefined ? 0n : 4n)
    buf.writeBigUInt64BE(incompatible, 72)
    buf.writeUInt32BE(4, 96) // refcount_order
    buf.writeUInt32BE(headerLength, 100)
  }

  let at = headerLength
  const extension = (type: number, text: string) => {
    const data = Buffer.from(text)
    buf.writeUInt32BE(type, at)
    buf.writeUInt32BE(data.length, at + 4)
    data.copy(buf, at + 8)
    at += 8 + Math.ceil(data.length / 8) * 8
  }

  if (backingFormat !== undefined) extension(0xe2_79_2a_ca, backingFormat)
  if (dataFile !== undefined) extension(0x44_41_54_41, dataFile)
  at += 8 // end-of-extensions marker (zeros)
  if (backingFile !== undefined) {
    const name = Buffer.from(backingFile)
    buf.writeBigUInt64BE(BigInt(at), 8)
    buf.writeUInt32BE(name.length, 16)
    name.copy(buf, at)
  }

  return buf
}

export interface VmdkSparseOptions {
  capacitySectors?: number
  descriptor?: string
  descriptorSector?: number
  /** Descriptor size in sectors (default: what the text needs). */
  descriptorSectors?: number
  /** Announce a footer (gd offset = GD_AT_END), as streamOptimized writers may. */
  gdAtEnd?: boolean
  /** Bytes appended after the descriptor (grain data, footer...). */
  trailer?: Buffer
  version?: number
}

export function vmdkDescriptor(createType: string, extents: string[] = ['RW 2048 SPARSE "disk.vmdk"']): string {
  return [
    '# Disk DescriptorFile',
    'version=1',
    'CID=12345678',
    'parentCID=ffffffff',
    `createType="${createType}"`,
    '',
    '# Extent description',
    ...extents,
    '',
    '# The Disk Data Base',
    '#DDB',
    '',
    'ddb.virtualHWVersion = "4"',
    'ddb.adapterType = "ide"',
    '',
  ].join('\n')
}

/** A hosted sparse extent: the 512-byte KDMV header, then the descriptor from sector 1. */
export function vmdkSparse(options: VmdkSparseOptions = {}): Buffer {
  const descriptor = Buffer.from(options.descriptor ?? vmdkDescriptor('monolithicSparse'))
  const sectors = options.descriptorSectors ?? Math.ceil(descriptor.length / 512)
  const header = vmdkHeader({...options, descriptorSectors: sectors})
  const body = Buffer.alloc(Math.max(sectors, Math.ceil(descriptor.length / 512)) * 512)
  descriptor.copy(body)
  return Buffer.concat([header, body, options.trailer ?? Buffer.alloc(0)])
}

export function vmdkHeader(options: VmdkSparseOptions & {descriptorSectors: number}): Buffer {
  const header = Buffer.alloc(512)
  header.write('KDMV', 0, 'latin1')
  header.writeUInt32LE(options.version ?? 1, 4)
  header.writeUInt32LE(3, 8) // flags
  header.writeBigUInt64LE(BigInt(options.capacitySectors ?? 2048), 12)
  header.writeBigUInt64LE(128n, 20) // grain size
  header.writeBigUInt64LE(BigInt(options.descriptorSector ?? 1), 28)
  header.writeBigUInt64LE(BigInt(options.descriptorSectors), 36)
  header.writeUInt32LE(512, 44) // GTEs per GT
  header.writeBigUInt64LE(options.gdAtEnd ? 0xff_ff_ff_ff_ff_ff_ff_ffn : 21n, 56)
  return header
}

export interface VmdkFooterOptions {
  eosPad?: number
  eosSize?: number
  eosType?: number
  footerPad?: number
  footerSize?: number
  footerType?: number
  /** The header copy in the footer; default: `header` with a real gd offset. */
  header?: Buffer
}

/** The last three sectors of a streamOptimized VMDK: footer marker, footer (header copy), EOS marker. */
export function vmdkFooter(header: Buffer, options: VmdkFooterOptions = {}): Buffer {
  const tail = Buffer.alloc(1536)
  tail.writeUInt32LE(options.footerSize ?? 0, 8)
  tail.writeUInt32LE(options.footerType ?? 3, 12)
  tail.fill(options.footerPad ?? 0, 16, 512)
  const copy = Buffer.from(options.header ?? header)
  if (!options.header) copy.writeBigUInt64LE(21n, 56)
  copy.copy(tail, 512)
  tail.writeUInt32LE(options.eosSize ?? 0, 1024 + 8)
  tail.writeUInt32LE(options.eosType ?? 0, 1024 + 12)
  tail.fill(options.eosPad ?? 0, 1024 + 16, 1536)
  return tail
}

export function vhdHeader(size = MiB): Buffer {
  const buf = Buffer.alloc(1536)
  buf.write('conectix', 0, 'latin1')
  buf.writeBigUInt64BE(BigInt(size), 40)
  buf.writeBigUInt64BE(BigInt(size), 48)
  return buf
}

export function vdiHeader(size = MiB): Buffer {
  const buf = Buffer.alloc(1024)
  buf.write('<<< Oracle VM VirtualBox Disk Image >>>\n', 0, 'latin1')
  buf.writeUInt32LE(0xbe_da_10_7f, 0x40)
  buf.writeBigUInt64LE(BigInt(size), 0x1_70)
  return buf
}

export function qedHeader(size = MiB): Buffer {
  const buf = Buffer.alloc(4096)
  buf.write('QED\0', 0, 'latin1')
  buf.writeUInt32LE(65_536, 4)
  buf.writeBigUInt64LE(BigInt(size), 48)
  return buf
}

export function luksHeader(version = 1, payloadSectors = 4096, totalBytes = 3 * MiB): Buffer {
  const buf = Buffer.alloc(totalBytes)
  buf.write('LUKS\u00BA\u00BE', 0, 'latin1')
  buf.writeUInt16BE(version, 6)
  buf.write('aes', 8, 'latin1')
  buf.write('xts-plain64', 40, 'latin1')
  buf.write('sha256', 72, 'latin1')
  buf.writeUInt32BE(payloadSectors, 104)
  buf.writeUInt32BE(64, 108)
  return buf
}

/** GUID in the Microsoft on-disk form (first three fields little-endian). */
function msGuid(text: string): Buffer {
  const bytes = Buffer.from(text.replaceAll('-', ''), 'hex')
  return Buffer.concat([
    Buffer.from(bytes.subarray(0, 4)).reverse(),
    Buffer.from(bytes.subarray(4, 6)).reverse(),
    Buffer.from(bytes.subarray(6, 8)).reverse(),
    bytes.subarray(8),
  ])
}

export interface VhdxOptions {
  /** Metadata item count written in the table header (default: the real count, 1). */
  metadataCount?: number
  metadataOffset?: number
  regionCount?: number
  size?: number
}

/** The structures a VHDX size lookup walks: identifier, region table at 192 KiB, metadata table and item. */
export function vhdxImage(options: VhdxOptions = {}): Buffer {
  const {metadataOffset = MiB, size = MiB} = options
  const buf = Buffer.alloc(Math.max(metadataOffset + 64 * 1024 + 4096, 256 * 1024))
  buf.write('vhdxfile', 0, 'latin1')
  buf.write('imgcache test', 8, 'utf16le') // creator
  const table = 192 * 1024
  buf.write('regi', table, 'latin1')
  buf.writeUInt32LE(options.regionCount ?? 2, table + 8)
  msGuid('2DC27766-F623-4200-9D64-115E9BFD4A08').copy(buf, table + 16) // BAT
  buf.writeBigUInt64LE(BigInt(2 * MiB), table + 32)
  msGuid('8B7CA206-4790-4B9A-B8FE-575F050F886E').copy(buf, table + 48) // metadata
  buf.writeBigUInt64LE(BigInt(metadataOffset), table + 64)
  buf.writeUInt32LE(MiB, table + 72)
  buf.write('metadata', metadataOffset, 'latin1')
  buf.writeUInt16LE(options.metadataCount ?? 1, metadataOffset + 10)
  msGuid('2FA54224-CD1B-4876-B211-5DBED83BF4B8').copy(buf, metadataOffset + 32)
  buf.writeUInt32LE(64 * 1024, metadataOffset + 48)
  buf.writeUInt32LE(8, metadataOffset + 52)
  buf.writeBigUInt64LE(BigInt(size), metadataOffset + 64 * 1024)
  return buf
}

export interface IsoOptions {
  blocks?: number
  identifier?: string
  /** Bytes written over the start of the 32 KiB system area (e.g. a qcow2 header). */
  systemArea?: Buffer
}

/** An ISO 9660 image: system area, primary volume descriptor at 32 KiB, terminator. */
export function isoImage(options: IsoOptions = {}): Buffer {
  const {blocks = 32, identifier = 'CD001'} = options
  const buf = Buffer.alloc(blocks * 2048)
  options.systemArea?.copy(buf, 0)
  const pvd = 32 * 1024
  buf[pvd] = 1
  buf.write(identifier, pvd + 1, 'latin1')
  buf[pvd + 6] = 1
  buf.write('IMGCACHE TEST'.padEnd(32), pvd + 40, 'latin1')
  buf.writeUInt32LE(blocks, pvd + 80)
  buf.writeUInt32BE(blocks, pvd + 84)
  buf.writeUInt16LE(2048, pvd + 128)
  buf.writeUInt16BE(2048, pvd + 130)
  buf[pvd + 2048] = 255
  buf.write(identifier, pvd + 2049, 'latin1')
  buf[pvd + 2054] = 1
  return buf
}

export interface PartitionEntry {
  boot?: number
  /** Bytes 1-3 of the entry (head, sector+cylinder high bits, cylinder). */
  chs?: [number, number, number]
  lba?: number
  sectors?: number
  type?: number
}

/** A disk whose first sector is an MBR with the given entries (default: one GPT protective entry). */
export function mbrImage(entries: PartitionEntry[] = [{}], size = 64 * 1024): Buffer {
  const buf = Buffer.alloc(size)
  for (const [i, entry] of entries.entries()) {
    const at = 446 + 16 * i
    buf[at] = entry.boot ?? 0
    const [head, sector, cylinder] = entry.chs ?? [0, 2, 0]
    buf[at + 1] = head
    buf[at + 2] = sector
    buf[at + 3] = cylinder
    buf[at + 4] = entry.type ?? 0xee
    buf.fill(0xff, at + 5, at + 8)
    buf.writeUInt32LE(entry.lba ?? 1, at + 8)
    buf.writeUInt32LE(entry.sectors ?? size / 512 - 1, at + 12)
  }

  buf[510] = 0x55
  buf[511] = 0xaa
  if (size >= 1024) buf.write('EFI PART', 512, 'latin1')
  return buf
}

/** A FAT boot sector: 55 AA but not a partition table. */
export function fatBootSector(): Buffer {
  const buf = mbrImage([{boot: 0, type: 0x0c}], 4096)
  buf.write('\u00EB\u003C\u0090MSDOS5.0', 0, 'latin1')
  buf[0x10] = 2
  buf[0x15] = 0xf8
  return buf
}

/** Deterministic bytes that match no format. */
export function rawBytes(size: number): Buffer {
  const buf = Buffer.alloc(size)
  for (let i = 0; i < size; i++) buf[i] = (i * 131 + 7) % 256
  return buf
}

async function qemuImg(...args: string[]): Promise<void> {
  await execa('qemu-img', args)
}

/**
 * `qemu-img create -f luks` times its key derivation by the thread's CPU clock (qemu's
 * crypto/pbkdf.c, qcrypto_pbkdf2_count_iters) and gives up with "Unable to get accurate CPU usage"
 * when one measured round reads 0 ms, which a busy 2-core machine produces now and then (it failed
 * a CI run). The image is fine when a round measures; so try again, a few times, on that error only.
 */
async function qemuImgLuks(...args: string[]): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      await qemuImg(...args)
      return
    } catch (error) {
      if (attempt >= 5 || !String((error as Error).message).includes('Unable to get accurate CPU usage')) throw error
    }
  }
}

// The corpus: real qemu-img images plus the hand-made ones, for integration and e2e tests.

/**
 * The verdict the download pipeline must reach (inspector, then the declared-format rule): `safe`,
 * or the check that refuses it: a SafetyFailure check name, or `disk_format` when only the
 * declared format disagrees with the content.
 */
export type CorpusExpectation = 'safe' | {check: string}

export interface CorpusImage {
  /** Glance `disk_format` the image is registered with. */
  declared: string
  expect: CorpusExpectation
  /** What the inspector must detect. */
  format: DiskFormat
  path: string
}

export const CORPUS_NAMES = [
  'qcow2-v3',
  'qcow2-v2',
  'qcow2-backing-file',
  'qcow2-data-file',
  'qcow2-extended-l2',
  'qed',
  'vmdk-monolithic-sparse',
  'vmdk-stream-optimized',
  'vmdk-monolithic-flat',
  'vmdk-two-gb-max-extent-sparse',
  'vmdk-extent-etc-hosts',
  'vhd',
  'vhdx',
  'vdi',
  'luks',
  'raw',
  'iso',
  'iso-with-qcow2-header',
  'gpt',
  'raw-declared-qcow2',
  'qcow2-declared-raw',
] as const

export type CorpusName = (typeof CORPUS_NAMES)[number]

/** Test secret for the LUKS image; never a real one. */
export const CORPUS_LUKS_SECRET = 'test'

/**
 * Creates the corpus in `dir` (about 25 files, under 20 MB apparent, a few seconds: the LUKS key
 * derivation dominates). Returns name → image. `raw-declared-qcow2` and `qcow2-declared-raw` share
 * the files of `raw` and `qcow2-v3`; `qcow2-backing-file`, `qcow2-data-file` and
 * `vmdk-*` descriptors point at other files in `dir`, so keep the directory together.
 */
export async function makeImageCorpus(dir: string): Promise<Record<CorpusName, CorpusImage>> {
  await mkdir(dir, {recursive: true})
  const at = (name: string) => path.join(dir, name)
  const base = at('base.raw')
  await writeFile(base, rawBytes(MiB))

  const corpus: Partial<Record<CorpusName, CorpusImage>> = {}
  const add = (name: CorpusName, file: string, declared: string, format: DiskFormat, expect: CorpusExpectation) => {
    corpus[name] = {declared, expect, format, path: at(file)}
  }

  const etcHosts = vmdkDescriptor('monolithicFlat', ['RW 2048 FLAT "/etc/hosts" 0'])
  await Promise.all([
    qemuImg('create', '-q', '-f', 'qcow2', at('v3.qcow2'), '1M'),
    qemuImg('create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', at('v2.qcow2'), '1M'),
    qemuImg('create', '-q', '-f', 'qcow2', '-b', base, '-F', 'raw', at('backing.qcow2')),
    qemuImg(
      'create',
      '-q',
      '-f',
      'qcow2',
      '-o',
      `data_file=${at('data-file.data').replaceAll(',', ',,')},data_file_raw=on`,
      at('data-file.qcow2'),
      '1M',
    ),
    qemuImg('create', '-q', '-f', 'qcow2', '-o', 'extended_l2=on', at('extended-l2.qcow2'), '1M'),
    qemuImg('create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', at('small-cluster.qcow2'), '1M'),
    qemuImg('create', '-q', '-f', 'qed', at('image.qed'), '1M'),
    qemuImg('create', '-q', '-f', 'vmdk', '-o', 'subformat=monolithicSparse', at('sparse.vmdk'), '1M'),
    qemuImg('create', '-q', '-f', 'vmdk', '-o', 'subformat=streamOptimized', at('stream.vmdk'), '1M'),
    qemuImg('create', '-q', '-f', 'vmdk', '-o', 'subformat=monolithicFlat', at('flat.vmdk'), '1M'),
    qemuImg('create', '-q', '-f', 'vmdk', '-o', 'subformat=twoGbMaxExtentSparse', at('twogb.vmdk'), '1M'),
    writeFile(at('etc-hosts.vmdk'), etcHosts),
    qemuImg('create', '-q', '-f', 'vpc', at('image.vhd'), '1M'),
    qemuImg('create', '-q', '-f', 'vhdx', at('image.vhdx'), '1M'),
    qemuImg('create', '-q', '-f', 'vdi', at('image.vdi'), '1M'),
    qemuImgLuks(
      'create',
      '-q',
      '-f',
      'luks',
      '--object',
      `secret,id=sec0,data=${CORPUS_LUKS_SECRET}`,
      '-o',
      'key-secret=sec0,iter-time=10',
      at('image.luks'),
      '1M',
    ),
    writeFile(at('image.raw'), rawBytes(MiB)),
    writeFile(at('image.iso'), isoImage()),
    writeFile(at('gpt.raw'), mbrImage([{}], MiB)),
  ])
  // An ISO whose system area starts with a real qcow2 header (oslo.utils test_bad_iso_qcow2).
  const smallQcow2 = await readFile(at('small-cluster.qcow2'))
  await writeFile(at('qcow2-in.iso'), isoImage({systemArea: smallQcow2.subarray(0, 32 * 1024)}))

  add('qcow2-v3', 'v3.qcow2', 'qcow2', 'qcow2', 'safe')
  add('qcow2-v2', 'v2.qcow2', 'qcow2', 'qcow2', 'safe')
  add('qcow2-backing-file', 'backing.qcow2', 'qcow2', 'qcow2', {check: 'backing_file'})
  add('qcow2-data-file', 'data-file.qcow2', 'qcow2', 'qcow2', {check: 'data_file'})
  add('qcow2-extended-l2', 'extended-l2.qcow2', 'qcow2', 'qcow2', {check: 'unknown_features'})
  add('qed', 'image.qed', 'qed', 'qed', {check: 'banned'})
  add('vmdk-monolithic-sparse', 'sparse.vmdk', 'vmdk', 'vmdk', 'safe')
  add('vmdk-stream-optimized', 'stream.vmdk', 'vmdk', 'vmdk', 'safe')
  add('vmdk-monolithic-flat', 'flat.vmdk', 'vmdk', 'vmdk', {check: 'descriptor'})
  add('vmdk-two-gb-max-extent-sparse', 'twogb.vmdk', 'vmdk', 'vmdk', {check: 'descriptor'})
  add('vmdk-extent-etc-hosts', 'etc-hosts.vmdk', 'vmdk', 'vmdk', {check: 'descriptor'})
  add('vhd', 'image.vhd', 'vhd', 'vhd', 'safe')
  add('vhdx', 'image.vhdx', 'vhdx', 'vhdx', 'safe')
  add('vdi', 'image.vdi', 'vdi', 'vdi', 'safe')
  add('luks', 'image.luks', 'luks', 'luks', 'safe')
  add('raw', 'image.raw', 'raw', 'raw', 'safe')
  add('iso', 'image.iso', 'iso', 'iso', 'safe')
  add('iso-with-qcow2-header', 'qcow2-in.iso', 'iso', 'qcow2', {check: 'multiple_formats'})
  add('gpt', 'gpt.raw', 'raw', 'gpt', 'safe')
  add('raw-declared-qcow2', 'image.raw', 'qcow2', 'raw', {check: 'disk_format'})
  add('qcow2-declared-raw', 'v3.qcow2', 'raw', 'qcow2', {check: 'disk_format'})
  return corpus as Record<CorpusName, CorpusImage>
}

// Running both entry points over one buffer, for tests that compare them.

/** A small deterministic PRNG (mulberry32), so "random" chunkings are reproducible. */
export function seededRandom(seed: number): () => number {
  let state = seed
  return () => {
    state = (state + 0x6d_2b_79_f5) % 2 ** 32
    let t = Math.imul(state ^ (state >>> 15), state | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32
  }
}

/** Feeds `image` to a streaming inspector in chunks of the sizes `nextSize` returns. */
export function inspectStream(image: Buffer, nextSize: () => number, options?: InspectOptions): InspectionResult {
  const inspector = new FormatInspector(options)
  for (let at = 0; at < image.length;) {
    const size = Math.max(1, nextSize())
    inspector.write(image.subarray(at, at + size))
    at += size
  }

  return inspector.finish()
}

export async function inspectBuffer(image: Buffer, options?: InspectOptions): Promise<InspectionResult> {
  return inspectSource(async (offset, length) => image.subarray(offset, offset + length), image.length, options)
}

/**
 * The result of every way of inspecting `image`: random access, one chunk, 1-byte chunks, random
 * chunk sizes (1 byte to 64 KiB, seeded), and typical 64 KiB chunks.
 */
export async function inspectEveryWay(
  image: Buffer,
  options?: InspectOptions,
): Promise<Record<'chunks64k' | 'oneByte' | 'oneChunk' | 'random' | 'randomChunks', InspectionResult>> {
  const random = seededRandom(image.length)
  return {
    chunks64k: inspectStream(image, () => 64 * 1024, options),
    oneByte: inspectStream(image, () => 1, options),
    oneChunk: inspectStream(image, () => image.length, options),
    random: await inspectBuffer(image, options),
    randomChunks: inspectStream(image, () => 1 + Math.floor(random() * (random() < 0.5 ? 600 : 65_536)), options),
  }
}
