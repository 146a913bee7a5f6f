import type {FormatDetails, SafetyFailure} from '../types.js'

import {type ByteView, match, type Need, need, NO_MATCH, type ProbeOutcome, quote, startsWith, u64} from '../probe.js'

// Layout: qemu docs/interop/qcow2.txt. All fields big-endian.
const MAGIC = Buffer.from('QFI\u00FB', 'latin1')
const V2_HEADER = 72
const V3_HEADER = 104
/** Incompatible feature bits qemu defines and oslo.utils accepts: dirty, corrupt, data file, compression type. */
const KNOWN_INCOMPATIBLE_BITS = 4
const FEATURE_NAMES: Record<number, string> = {
  0: 'dirty',
  1: 'corrupt',
  2: 'external data file',
  3: 'compression type',
  4: 'extended_l2',
}
const EXT_BACKING_FORMAT = 0xe2_79_2a_ca
const EXT_DATA_FILE = 0x44_41_54_41
/** The backing file name lives in the first cluster; the largest cluster is 2 MiB. */
const NAME_LIMIT = 2 * 1024 * 1024
const EXTENSION_LIMIT = 64 * 1024

interface Header {
  backingOffset: bigint
  backingSize: number
  clusterSize?: number
  encrypted: boolean
  /** Where the header extensions start. */
  extensionsAt: number
  /** Incompatible feature bits (v3; zero for v2, which has no such field). */
  incompatible: bigint
  version: number
  virtualSize?: number
}

export function probeQcow2(view: ByteView): ProbeOutcome {
  const bytes = view.read(0, 512)
  if (!bytes) return need({length: 512, offset: 0})
  if (!startsWith(bytes, MAGIC)) return NO_MATCH
  const header = parseHeader(bytes)
  if (typeof header === 'string') return match([{check: 'format', message: header}])

  const hasBacking = header.backingOffset !== 0n
  const hasDataFile = hasBit(header.incompatible, 2)
  const details: FormatDetails = {version: header.version}
  if (header.clusterSize !== undefined) details.clusterSize = header.clusterSize
  if (header.encrypted) details.encrypted = true
  if (header.version === 3) {
    details.dirty = hasBit(header.incompatible, 0)
    details.corrupt = hasBit(header.incompatible, 1)
    details.extendedL2 = hasBit(header.incompatible, 4)
  }

  const names = readNames(view, header, hasBacking, hasDataFile)
  if ('needs' in names) return names
  const {backingName, extensions} = names

  const failures: SafetyFailure[] = []
  if (hasBacking) {
    if (backingName !== undefined) details.backingFile = backingName
    const format = extensions.get(EXT_BACKING_FORMAT)
    if (format) details.backingFormat = format.toString('utf8')
    const named = backingName === undefined ? '' : ` (${quote(backingName)})`
    failures.push({check: 'backing_file', message: `qcow2 image has a backing file${named}`})
  }

  if (hasDataFile) {
    const name = extensions.get(EXT_DATA_FILE)?.toString('utf8')
    if (name !== undefined) details.dataFile = name
    const named = name === undefined ? '' : ` (${quote(name)})`
    failures.push({check: 'data_file', message: `qcow2 image has an external data file${named}`})
  }

  const unknown = checkFeatures(header)
  if (unknown) failures.push({check: 'unknown_features', message: unknown})
  if (header.virtualSize === undefined) failures.push({check: 'format', message: 'qcow2 virtual size is out of range'})
  return match(failures, details, header.virtualSize)
}

/** Names are read only for unsafe images, to say in the failure what they point at. */
function readNames(
  view: ByteView,
  header: Header,
  hasBacking: boolean,
  hasDataFile: boolean,
): {backingName?: string; extensions: Map<number, Buffer>} | {needs: Need[]; status: 'need'} {
  let backingName: string | undefined
  const {backingOffset, backingSize} = header
  if (hasBacking && backingSize > 0 && backingSize <= 1023 && backingOffset + BigInt(backingSize) <= NAME_LIMIT) {
    const name = view.read(Number(backingOffset), backingSize)
    if (!name) return {needs: [{length: backingSize, offset: Number(backingOffset)}], status: 'need'}
    backingName = name.toString('utf8')
  }

  let extensions = new Map<number, Buffer>()
  const end = Math.min(header.clusterSize ?? EXTENSION_LIMIT, EXTENSION_LIMIT)
  if ((hasBacking || hasDataFile) && header.extensionsAt < end) {
    const area = view.read(header.extensionsAt, end - header.extensionsAt)
    if (!area) return {needs: [{length: end - header.extensionsAt, offset: header.extensionsAt}], status: 'need'}
    extensions = parseExtensions(area)
  }

  return backingName === undefined ? {extensions} : {backingName, extensions}
}

function parseHeader(bytes: Buffer): Header | string {
  if (bytes.length < V2_HEADER) return `qcow2 header is truncated (${bytes.length} bytes)`
  const version = bytes.readUInt32BE(4)
  const clusterBits = bytes.readUInt32BE(20)
  const header: Header = {
    backingOffset: bytes.readBigUInt64BE(8),
    backingSize: bytes.readUInt32BE(16),
    encrypted: bytes.readUInt32BE(32) !== 0,
    extensionsAt: V2_HEADER,
    incompatible: 0n,
    version,
    virtualSize: u64(bytes, 24, 'be'),
  }
  if (clusterBits >= 9 && clusterBits <= 21) header.clusterSize = 2 ** clusterBits
  // Version 2 has no feature fields: bytes 72.. already hold header extensions, so reading them
  // as feature bits (as oslo.utils' data_file check does) would misfire.
  if (version === 3) {
    if (bytes.length < V3_HEADER) return `qcow2 v3 header is truncated (${bytes.length} bytes)`
    header.incompatible = bytes.readBigUInt64BE(72)
    header.extensionsAt = Math.max(bytes.readUInt32BE(100), V3_HEADER)
  }

  return header
}

/** oslo.utils' unknown_features: version 2 or 3 only; v3 incompatible bits from 4 up refused. */
function checkFeatures(header: Header): string | undefined {
  if (header.version !== 2 && header.version !== 3) return `Unsupported qcow2 version ${header.version}`
  const unknown: string[] = []
  for (let bit = KNOWN_INCOMPATIBLE_BITS; bit < 64; bit++) {
    if (hasBit(header.incompatible, bit))
      unknown.push(FEATURE_NAMES[bit] ? `${bit} (${FEATURE_NAMES[bit]})` : String(bit))
  }

  return unknown.length > 0 ? `Unknown QCOW2 features found: incompatible feature bit ${unknown.join(', ')}` : undefined
}

function hasBit(value: bigint, bit: number): boolean {
  return (value / 2n ** BigInt(bit)) % 2n === 1n
}

/** Header extensions: {u32 type, u32 length, data padded to 8}; type 0 ends the list. */
function parseExtensions(area: Buffer): Map<number, Buffer> {
  const found = new Map<number, Buffer>()
  let at = 0
  while (at + 8 <= area.length) {
    const type = area.readUInt32BE(at)
    const length = area.readUInt32BE(at + 4)
    if (type === 0 || at + 8 + length > area.length) break
    found.set(type, area.subarray(at + 8, at + 8 + length))
    at += 8 + Math.ceil(length / 8) * 8
  }

  return found
}
