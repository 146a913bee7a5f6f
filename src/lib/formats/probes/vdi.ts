import {type ByteView, match, need, NO_MATCH, type ProbeOutcome, u64} from '../probe.js'

const SIGNATURE = 0xbe_da_10_7f

/** VirtualBox VDI: signature at 0x40, disk size at 0x170 (little-endian; qemu block/vdi.c). */
export function probeVdi(view: ByteView): ProbeOutcome {
  const header = view.read(0, 512)
  if (!header) return need({length: 512, offset: 0})
  if (header.length < 0x44 || header.readUInt32LE(0x40) !== SIGNATURE) return NO_MATCH
  return match([], {}, header.length >= 0x1_78 ? u64(header, 0x1_70, 'le') : undefined)
}
