/** In-memory scans for the pure cache-rule tests: entries, instance dirs and qcow2 heads built by hand. */
import type {CacheScan, EntryStat, InstanceDirScan} from '../../src/lib/node/types.js'

export const NOW = 2_000_000_000_000

/** A minimal, valid qcow2 v3 header (64 KiB clusters) with an optional backing file name. */
export function qcow2Head(backing?: string, virtualSize = 1024 ** 3): Buffer {
  const head = Buffer.alloc(4096)
  head.writeUInt32BE(0x51_46_49_fb, 0)
  head.writeUInt32BE(3, 4)
  head.writeUInt32BE(16, 20)
  head.writeBigUInt64BE(BigInt(virtualSize), 24)
  head.writeBigUInt64BE(0x3_00_00n, 40)
  head.writeBigUInt64BE(0x1_00_00n, 48)
  head.writeUInt32BE(4, 96)
  head.writeUInt32BE(112, 100)
  if (backing !== undefined) {
    const name = Buffer.from(backing, 'utf8')
    head.writeBigUInt64BE(0x2_10n, 8)
    head.writeUInt32BE(name.length, 16)
    name.copy(head, 0x2_10)
  }

  return head
}

export function file(name: string, ageSeconds: number, extra: Partial<EntryStat> = {}): EntryStat {
  return {allocated: 4096, mtimeMs: NOW - ageSeconds * 1000, name, size: 4096, type: 'file', ...extra}
}

export function instanceDir(name: string, disks: Record<string, Buffer>, libvirtXml?: string): InstanceDirScan {
  return {
    disks: Object.entries(disks).map(([disk, head]) => ({head, name: disk, size: 196_616})),
    libvirtXml,
    name,
  }
}

export function scanOf(
  entries: EntryStat[],
  instanceDirs: InstanceDirScan[] = [],
  domainXml: CacheScan['domainXml'] = [],
): CacheScan {
  return {
    cacheDir: {entries, exists: true},
    domainXml,
    instanceDirs,
    instancesPath: {exists: true},
    lockDir: {entries: [], exists: true},
    now: NOW,
    sidecars: {},
  }
}
