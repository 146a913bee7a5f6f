import type {QemuInfo} from './info.js'

import {DEFAULT_VMDK_ALLOWED_TYPES, type Verdict} from '../formats/index.js'

/**
 * The second opinion Nova asks of qemu-img after the inspector (nova/virt/images.py fetch_to_raw
 * and libvirt utils create_image): qemu must name a format, the one expected, and report neither a
 * backing file nor a data file; a VMDK must be of an allowed create type. Returns a verdict like
 * checkDeclaredFormat; `verdictError` turns a refusal into a SafetyError.
 */
export function checkQemuAgrees(
  expectedQemuFormat: string,
  info: QemuInfo,
  options: {vmdkAllowedTypes?: readonly string[]} = {},
): Verdict {
  const refuse = (code: string, reason: string): Verdict => ({code, ok: false, reason})
  const {format} = info
  if (format === undefined || format === '') {
    return refuse('QEMU_NO_FORMAT', 'qemu-img reports no format for the image')
  }

  if (format !== expectedQemuFormat) {
    return refuse(
      'FORMAT_MISMATCH',
      `content does not match disk_format: detected by qemu as ${format} but we expected ${expectedQemuFormat}`,
    )
  }

  if (info.backingFilename !== undefined) {
    return refuse('BACKING_FILE', `fmt=${format} backed by: ${JSON.stringify(info.backingFilename)}`)
  }

  if (info.dataFile !== undefined) {
    return refuse('DATA_FILE', `fmt=${format} has data-file: ${JSON.stringify(info.dataFile)}`)
  }

  if (format === 'vmdk') {
    const allowed = options.vmdkAllowedTypes ?? DEFAULT_VMDK_ALLOWED_TYPES
    const type = info.vmdkCreateType
    if (allowed.length === 0)
      return refuse('VMDK_TYPE', 'every VMDK is refused: the allowed create types list is empty')
    if (type === undefined || !allowed.includes(type)) {
      return refuse(
        'VMDK_TYPE',
        `vmdk create-type ${JSON.stringify(type ?? '(none)')} is not allowed (allowed: ${allowed.join(', ')})`,
      )
    }
  }

  return {ok: true}
}
