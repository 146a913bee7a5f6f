import {qemuPath} from '../qemu/argv.js'

/**
 * Nova's Flat instance disk (`imagebackend.py` `Flat.create_image`, its `copy_raw_image`): under the
 * base's lock, `libvirt_utils.copy_image` runs `cp -r <base> <disk>` (cp keeps the holes of a sparse
 * base), then `resize_image` grows it. `--` ends cp's options, whatever the names.
 */
export function flatCopyArgv(base: string, dest: string): string[] {
  return ['cp', '--', base, dest]
}

/**
 * The resize after the copy: `nova/virt/disk/api.py` `extend` runs `qemu-img resize -f <raw|qcow2>
 * <disk> <bytes>`, and only to grow (`can_resize_image`: a size at or below the virtual size is left).
 */
export function flatResizeArgv(path: string, format: string, size: number): string[] {
  return ['qemu-img', 'resize', '-f', format, qemuPath(path), String(size)]
}
