/**
 * A strict reader of the qcow2 header, enough to know an instance disk's backing file without
 * spawning qemu-img (reference sshd-qemu-locks §1: ~500× faster). It refuses what qemu-img would
 * refuse to open, so a damaged header is reported as damaged, as Nova's `qemu-img info` would.
 * Spec: qemu docs/interop/qcow2.txt; all fields big-endian.
 */
export const QCOW2_MAGIC = 0x51_46_49_fb

export interface Qcow2Header {
  backingFile?: string
  /** Where the backing file name is, when it lies beyond the bytes given. */
  backingFileRange?: {length: number; offset: number}
  backingFormat?: string
  clusterSize: number
  format: 'qcow2'
  incompatibleFeatures: bigint
  version: number
  virtualSize: number
}

export interface RawHeader {
  format: 'raw'
}

export class DiskHeaderError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'DiskHeaderError'
  }
}

/** Incompatible-feature bits qemu 7.2 knows: dirty, corrupt, external data file, compression type, extended L2. */
const KNOWN_INCOMPATIBLE = 0b1_1111n

export function isQcow2(head: Buffer): boolean {
  return head.length >= 4 && head.readUInt32BE(0) === QCOW2_MAGIC
}

/**
 * Parse a disk's header from its first bytes. `fileSize` is the file's size, used to refuse
 * truncated headers. A file that does not start with the qcow2 magic is raw (what qemu-img's
 * probe says for Nova's instance disks, which are qcow2 or raw).
 */
export function parseDiskHeader(head: Buffer, fileSize: number): Qcow2Header | RawHeader {
  if (!isQcow2(head)) return {format: 'raw'}
  if (head.length < 72 || fileSize < 72) throw new DiskHeaderError('qcow2 header is truncated')
  const version = head.readUInt32BE(4)
  if (version !== 2 && version !== 3) throw new DiskHeaderError(`unsupported qcow2 version ${version}`)
  const clusterBits = head.readUInt32BE(20)
  if (clusterBits < 9 || clusterBits > 21) throw new DiskHeaderError(`invalid qcow2 cluster size 2^${clusterBits}`)
  const clusterSize = 2 ** clusterBits
  const virtualSize = Number(head.readBigUInt64BE(24))
  const cryptMethod = head.readUInt32BE(32)
  if (cryptMethod > 2) throw new DiskHeaderError(`unsupported qcow2 encryption method ${cryptMethod}`)
  const l1TableOffset = head.readBigUInt64BE(40)
  const refcountTableOffset = head.readBigUInt64BE(48)
  if (l1TableOffset % BigInt(clusterSize) !== 0n) throw new DiskHeaderError('invalid qcow2 L1 table offset')
  if (refcountTableOffset % BigInt(clusterSize) !== 0n) throw new DiskHeaderError('invalid qcow2 refcount table offset')

  let headerLength = 72
  let incompatibleFeatures = 0n
  if (version === 3) {
    if (head.length < 104) throw new DiskHeaderError('qcow2 v3 header is truncated')
    incompatibleFeatures = head.readBigUInt64BE(72)
    const refcountOrder = head.readUInt32BE(96)
    if (refcountOrder > 6) throw new DiskHeaderError(`invalid qcow2 refcount order ${refcountOrder}`)
    headerLength = head.readUInt32BE(100)
    if (headerLength < 104 || headerLength > clusterSize) throw new DiskHeaderError('invalid qcow2 header length')
    const unknown = incompatibleFeatures & ~KNOWN_INCOMPATIBLE
    if (unknown !== 0n) throw new DiskHeaderError(`unsupported qcow2 feature bits 0x${unknown.toString(16)}`)
  }

  if (fileSize < headerLength) throw new DiskHeaderError('qcow2 header is truncated')

  const header: Qcow2Header = {clusterSize, format: 'qcow2', incompatibleFeatures, version, virtualSize}
  const backingOffset = head.readBigUInt64BE(8)
  const backingLength = head.readUInt32BE(16)
  if (backingOffset !== 0n) {
    if (backingLength > 1023) throw new DiskHeaderError('qcow2 backing file name is too long')
    if (backingOffset > BigInt(clusterSize)) throw new DiskHeaderError('invalid qcow2 backing file offset')
    const offset = Number(backingOffset)
    if (offset + backingLength > fileSize)
      throw new DiskHeaderError('qcow2 backing file name lies past the end of the file')
    if (offset + backingLength <= head.length) {
      header.backingFile = head.toString('utf8', offset, offset + backingLength)
    } else {
      header.backingFileRange = {length: backingLength, offset}
    }
  }

  // Header extensions: the backing format name (0xe2792aca).
  for (let o = headerLength; o + 8 <= head.length;) {
    const type = head.readUInt32BE(o)
    const length = head.readUInt32BE(o + 4)
    if (type === 0) break
    if (type === 0xe2_79_2a_ca && o + 8 + length <= head.length)
      header.backingFormat = head.toString('utf8', o + 8, o + 8 + length)
    o += 8 + Math.ceil(length / 8) * 8
  }

  return header
}

/** Whether a backing name is a plain file path (not `json:{...}` or a protocol such as `rbd:` or `nbd://`). */
export function isPlainFileName(backingFile: string): boolean {
  if (backingFile.startsWith('json:')) return false
  if (backingFile.startsWith('file:')) return true
  return !/^[a-z][a-z0-9+.-]*:/i.test(backingFile) || backingFile.startsWith('/')
}

/** The file a backing name refers to, as qemu resolves it: relative names against the overlay's directory. */
export function backingPath(overlayDir: string, backingFile: string): string | undefined {
  if (!isPlainFileName(backingFile)) return undefined
  const name = backingFile.startsWith('file:') ? backingFile.slice(5) : backingFile
  if (name.startsWith('/')) return normalize(name)
  return normalize(`${overlayDir}/${name}`)
}

function normalize(path: string): string {
  const out: string[] = []
  for (const part of path.split('/')) {
    if (part === '' || part === '.') continue
    if (part === '..') out.pop()
    else out.push(part)
  }

  return `/${out.join('/')}`
}
