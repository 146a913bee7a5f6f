import {type ByteView, match, need, NO_MATCH, type ProbeOutcome} from '../probe.js'

const DESCRIPTOR_OFFSET = 32 * 1024
const IDENTIFIERS = new Set(['CD001', 'NSR02', 'NSR03'])

/**
 * ISO 9660 / UDF: a volume descriptor identifier after the 32 KiB system area. qemu treats the
 * file as raw, so the virtual size is the file size; the primary volume descriptor's own size is
 * kept in the details.
 */
export function probeIso(view: ByteView): ProbeOutcome {
  const descriptor = view.read(DESCRIPTOR_OFFSET, 2048)
  if (!descriptor) return need({length: 2048, offset: DESCRIPTOR_OFFSET})
  const identifier = descriptor.subarray(1, 6).toString('latin1')
  if (!IDENTIFIERS.has(identifier)) return NO_MATCH
  if (view.size === undefined) return need({tail: 0})
  let volumeSize: number | undefined
  // Primary volume descriptor (type 1): block count at 80, block size at 128, both little-endian halves.
  if (descriptor[0] === 1 && descriptor.length >= 132) {
    volumeSize = descriptor.readUInt32LE(80) * descriptor.readUInt16LE(128)
  }

  return match(
    [],
    volumeSize === undefined ? {volumeDescriptor: identifier} : {volumeDescriptor: identifier, volumeSize},
    view.size,
  )
}
