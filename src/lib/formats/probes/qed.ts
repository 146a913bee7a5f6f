import {type ByteView, match, need, NO_MATCH, type ProbeOutcome, startsWith, u64} from '../probe.js'

const MAGIC = Buffer.from('QED\0', 'latin1')

/** QED: recognised so that it can be refused; nothing in OpenStack supports it. */
export function probeQed(view: ByteView): ProbeOutcome {
  const header = view.read(0, 512)
  if (!header) return need({length: 512, offset: 0})
  if (!startsWith(header, MAGIC)) return NO_MATCH
  const failures = [{check: 'banned', message: 'QED images are never allowed'}]
  // image_size is a little-endian u64 at 48 (qemu block/qed.h QEDHeader).
  return match(failures, {}, header.length >= 56 ? u64(header, 48, 'le') : undefined)
}
