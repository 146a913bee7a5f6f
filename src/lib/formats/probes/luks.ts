import {type ByteView, match, need, NO_MATCH, type ProbeOutcome, startsWith} from '../probe.js'

const MAGIC = Buffer.from('LUKS\u00BA\u00BE', 'latin1')

/**
 * LUKS (cryptsetup on-disk format, big-endian): only version 1 is accepted, as in oslo.utils and
 * qemu. The virtual size is what follows the payload offset.
 */
export function probeLuks(view: ByteView): ProbeOutcome {
  const header = view.read(0, 592)
  if (!header) return need({length: 592, offset: 0})
  if (!startsWith(header, MAGIC)) return NO_MATCH
  if (header.length < 112) return match([{check: 'format', message: 'LUKS header is truncated'}])
  const version = header.readUInt16BE(6)
  const cipherName = cString(header.subarray(8, 40))
  const cipherMode = cString(header.subarray(40, 72))
  const payloadBytes = header.readUInt32BE(104) * 512
  const failures = version === 1 ? [] : [{check: 'version', message: `LUKS version ${version} is not supported`}]
  if (view.size === undefined) return need({tail: 0})
  return match(failures, {cipher: `${cipherName}-${cipherMode}`, version}, Math.max(view.size - payloadBytes, 0))
}

function cString(buf: Buffer): string {
  const end = buf.indexOf(0)
  return buf.subarray(0, end === -1 ? buf.length : end).toString('latin1')
}
