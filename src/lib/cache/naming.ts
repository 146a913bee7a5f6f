import {createHash} from 'node:crypto'

/** Nova's cache file name for an image: the lowercase hex SHA-1 of the image id (UTF-8). */
export function cacheName(imageId: string): string {
  return createHash('sha1').update(imageId, 'utf8').digest('hex')
}

/** Nova's lock file name for a cache entry: `nova-<cache file basename>`. */
export function lockName(cacheFileName: string): string {
  return `nova-${cacheFileName.replaceAll('/', '_')}`
}

export const PART_SUFFIX = '.part'
export const CONVERTED_SUFFIX = '.converted'
/** Directory inside the cache dir where imgcache keeps metadata that a SHA-1 cannot give back. Nova ignores it. */
export const SIDECAR_DIR = '.imgcache'

/** The ephemeral template's 7-character extension: MD5 of the mkfs command or file system name. */
export function ephemeralExtension(fsOrMkfsCommand: string): string {
  return createHash('md5').update(fsOrMkfsCommand, 'utf8').digest('hex').slice(0, 7)
}

/**
 * The name `imgcache overlay` has qemu-img write a disk under, beside it, until the rename:
 * `.<disk>.imgcache-<8 hex>.tmp`. Hidden, so that no scan takes a leftover for a disk; scans
 * report leftovers (OVERLAY_TEMPORARY).
 */
export function overlayTemporaryName(diskName: string, hex: string): string {
  return `.${diskName}.imgcache-${hex}.tmp`
}

export const OVERLAY_TEMPORARY = /^\..+\.imgcache-[\da-f]{8}\.tmp$/

/**
 * The files an instance boots that Nova copies out of the cache into the instance directory:
 * `kernel` and `ramdisk` (virt/libvirt/driver.py `_create_image` caches `<sha1(kernel_id)>` and
 * copies it there with the raw backend's `cp`; `_set_guest_for_inst_kernel` boots the copies), and
 * their rescue twins (`_set_guest_for_rescue`). Each is a byte-for-byte copy of a cache original.
 */
export const BOOT_FILE_NAMES: readonly string[] = ['kernel', 'kernel.rescue', 'ramdisk', 'ramdisk.rescue']

export function isBootFileName(name: string): boolean {
  return BOOT_FILE_NAMES.includes(name)
}

/** The digest a scan compares boot files with cache entries by (both sides hashed on the node). */
export const BOOT_DIGEST = 'sha256'
