import {type ByteView, match, need, NO_MATCH, type ProbeOutcome} from '../probe.js'

const ENTRIES = 446
const PROTECTIVE = 0xee
const FIXED_DISK_MEDIA = 0xf8

/**
 * A disk with an MBR or a GPT (which starts with a protective MBR), reported as `gpt` as oslo.utils
 * does. A FAT boot sector carries the same 55 AA signature and is not a partition table.
 */
export function probeMbr(view: ByteView): ProbeOutcome {
  const mbr = view.read(0, 512)
  if (!mbr) return need({length: 512, offset: 0})
  if (mbr.length < 512 || mbr[510] !== 0x55 || mbr[511] !== 0xaa) return NO_MATCH
  if (mbr[0x10] === 2 && mbr[0x15] === FIXED_DISK_MEDIA) return NO_MATCH
  if (view.size === undefined) return need({tail: 0})
  const entries = [0, 1, 2, 3].map((i) => mbr.subarray(ENTRIES + 16 * i, ENTRIES + 16 * (i + 1)))
  const used = entries.filter((entry) => entry[4] !== 0).length
  const protective = entries.some((entry) => entry[4] === PROTECTIVE)
  const problem = checkPartitions(entries)
  const failures = problem ? [{check: 'mbr', message: problem}] : []
  return match(failures, {partitions: used, protectiveMbr: protective}, view.size)
}

/** oslo.utils' MBR sanity checks, in its order; the first problem found. */
export function checkPartitions(entries: Buffer[]): string | undefined {
  const used: number[] = []
  let protective = false
  for (const [i, entry] of entries.entries()) {
    const boot = entry[0]
    if (boot !== 0x00 && boot !== 0x80) {
      return `MBR partition entry ${i} has invalid boot flag 0x${(boot ?? 0).toString(16).padStart(2, '0')}`
    }

    if (entry[4] !== 0) used.push(i)
    if (entry[4] === PROTECTIVE) {
      protective = true
      // Bytes 1-3: the starting CHS address, which must be the second sector.
      if (entry[1] !== 0x00 || entry[2] !== 0x02 || entry[3] !== 0x00) return 'GPT protective MBR has invalid start CHS'
      if (entry.readUInt32LE(8) !== 1) return 'GPT protective MBR has invalid start LBA'
    }
  }

  if (protective && (used.length !== 1 || used[0] !== 0)) return 'GPT protective MBR defines invalid extra partitions'
  if (used.length === 0) return 'MBR has no partitions defined'
  return undefined
}
