import {type ByteView, match, need, NO_MATCH, type ProbeOutcome, startsWith, u64} from '../probe.js'

// Layout: [MS-VHDX]. Little-endian; GUIDs in their mixed-endian on-disk form.
const MAGIC = Buffer.from('vhdxfile', 'latin1')
const REGION_TABLE = 192 * 1024
const TABLE_BYTES = 64 * 1024
const MAX_ENTRIES = 2047
const REGION_SIGNATURE = 0x69_67_65_72 // 'regi'
const METADATA_REGION = guid('8B7CA206-4790-4B9A-B8FE-575F050F886E')
const VIRTUAL_DISK_SIZE = guid('2FA54224-CD1B-4876-B211-5DBED83BF4B8')

export function probeVhdx(view: ByteView): ProbeOutcome {
  const ident = view.read(0, 8)
  if (!ident) return need({length: 8, offset: 0})
  if (!startsWith(ident, MAGIC)) return NO_MATCH
  const fail = (message: string) => match([{check: 'format', message}])

  const regions = view.read(REGION_TABLE, TABLE_BYTES)
  if (!regions) return need({length: TABLE_BYTES, offset: REGION_TABLE})
  if (regions.length < 16 || regions.readUInt32LE(0) !== REGION_SIGNATURE) {
    return fail('vhdx region table signature not found')
  }

  const regionCount = regions.readUInt32LE(8)
  if (regionCount > MAX_ENTRIES) return fail(`vhdx region count is ${regionCount} (limit ${MAX_ENTRIES})`)
  const regionEntry = findEntry(regions, 16, regionCount, METADATA_REGION)
  if (regionEntry === undefined || regionEntry + 32 > regions.length) return fail('vhdx metadata region not found')
  const metadataOffset = u64(regions, regionEntry + 16, 'le')
  if (metadataOffset === undefined) return fail('vhdx metadata region offset is out of range')

  const metadata = view.read(metadataOffset, TABLE_BYTES)
  if (!metadata) return need({length: TABLE_BYTES, offset: metadataOffset})
  if (metadata.length < 32 || !startsWith(metadata, Buffer.from('metadata', 'latin1'))) {
    return fail('vhdx metadata table signature not found')
  }

  const itemCount = metadata.readUInt16LE(10)
  if (itemCount > MAX_ENTRIES) return fail(`vhdx metadata item count is ${itemCount} (limit ${MAX_ENTRIES})`)
  const item = findEntry(metadata, 32, itemCount, VIRTUAL_DISK_SIZE)
  if (item === undefined || item + 20 > metadata.length) return fail('vhdx virtual disk size item not found')
  const sizeAt = metadataOffset + metadata.readUInt32LE(item + 16)
  const size = view.read(sizeAt, 8)
  if (!size) return need({length: 8, offset: sizeAt})
  if (size.length < 8) return fail('vhdx virtual disk size item is past the end of the file')
  return match([], {}, u64(size, 0, 'le'))
}

function findEntry(table: Buffer, first: number, count: number, id: Buffer): number | undefined {
  for (let i = 0; i < count; i++) {
    const at = first + i * 32
    if (at + 16 > table.length) return undefined
    if (table.subarray(at, at + 16).equals(id)) return at
  }

  return undefined
}

/** A GUID in the Microsoft on-disk form: first three fields little-endian, the rest as written. */
function guid(text: string): Buffer {
  const hex = text.replaceAll('-', '')
  const bytes = Buffer.from(hex, 'hex')
  return Buffer.concat([
    Buffer.from(bytes.subarray(0, 4)).reverse(),
    Buffer.from(bytes.subarray(4, 6)).reverse(),
    Buffer.from(bytes.subarray(6, 8)).reverse(),
    bytes.subarray(8),
  ])
}
