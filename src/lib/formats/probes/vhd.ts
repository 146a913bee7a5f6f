import {type ByteView, match, need, NO_MATCH, type ProbeOutcome, startsWith, u64} from '../probe.js'

const MAGIC = Buffer.from('conectix', 'latin1')

/**
 * VHD (qemu: vpc). A dynamic disk starts with a copy of its footer; the size is the footer's
 * "original size", as oslo.utils reads it. A fixed VHD has its footer only at the end and is
 * treated as raw, by qemu's probe as well.
 */
export function probeVhd(view: ByteView): ProbeOutcome {
  const header = view.read(0, 512)
  if (!header) return need({length: 512, offset: 0})
  if (!startsWith(header, MAGIC)) return NO_MATCH
  return match([], {}, header.length >= 48 ? u64(header, 40, 'be') : undefined)
}
