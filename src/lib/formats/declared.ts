import type {DiskFormat, InspectionResult} from './types.js'

import {SafetyError} from '../errors.js'
import {DISK_FORMATS} from './types.js'

/** Glance formats that carry no disk header (kernels, ramdisks, AMI machine images). */
const AMI_FORMATS = new Set(['aki', 'ami', 'ari'])

/** The answer of a check: `code` and `reason` are set when it refuses. */
export interface Verdict {
  code?: string
  ok: boolean
  reason?: string
}

export interface DeclaredVerdict extends Verdict {
  /** The format to give `qemu-img -f` and to expect from `qemu-img info`. */
  qemuFormat: string
}

/** qemu's name for a format: vhd is `vpc`; ISO, partitioned disks and AMI formats are raw to qemu. */
export function qemuFormatName(format: string): string {
  if (format === 'vhd') return 'vpc'
  if (format === 'iso' || format === 'gpt' || AMI_FORMATS.has(format)) return 'raw'
  return format
}

export function isDiskFormat(value: string): value is DiskFormat {
  return (DISK_FORMATS as readonly string[]).includes(value)
}

/**
 * Nova's rule (nova/virt/images.py, upstream): a `disk_format` without an inspector is refused;
 * the detected format must equal it, except that `raw` may hold a partition table (`gpt`) and
 * `ami`/`aki`/`ari` are not compared (they are raw to qemu, like `iso`). Content matching several
 * formats is refused whatever was declared. Unlike Nova, `vhd` is expected as qemu's `vpc`.
 * Safety failures are not judged here: see `result.safe`.
 */
export function checkDeclaredFormat(declared: string, result: InspectionResult): DeclaredVerdict {
  const refuse = (code: string, reason: string): DeclaredVerdict => ({
    code,
    ok: false,
    qemuFormat: qemuFormatName(declared),
    reason,
  })
  if (!AMI_FORMATS.has(declared) && !isDiskFormat(declared)) {
    return refuse('UNSUPPORTED_DISK_FORMAT', `disk_format ${JSON.stringify(declared)} is not a supported image format`)
  }

  const multiple = result.failures.find((f) => f.check === 'multiple_formats')
  if (multiple) {
    return refuse(
      'MULTIPLE_FORMATS',
      `declared ${declared} but the content matches several formats (${result.candidates.join(', ')})`,
    )
  }

  if (AMI_FORMATS.has(declared)) return {ok: true, qemuFormat: 'raw'}
  if (declared === 'raw' && result.format === 'gpt') return {ok: true, qemuFormat: 'raw'}
  if (result.format !== declared) {
    const content = result.format === 'raw' ? 'raw (no known disk header)' : result.format
    return refuse('FORMAT_MISMATCH', `declared ${declared} but the content is ${content}`)
  }

  return {ok: true, qemuFormat: qemuFormatName(declared)}
}

/** A refused verdict as the error to throw (exit 4); undefined when the verdict is ok. */
export function verdictError(verdict: Verdict, image?: string): SafetyError | undefined {
  if (verdict.ok) return undefined
  return new SafetyError(verdict.code ?? 'IMAGE_REFUSED', verdict.reason ?? 'image refused', {
    image,
    suggestions: ['Check the image file and its disk_format in the image service; re-upload it if they disagree.'],
  })
}

/** An unsafe inspection result as the error to throw (exit 4); undefined when it is safe. */
export function inspectionError(result: InspectionResult, image?: string): SafetyError | undefined {
  if (result.safe) return undefined
  const first = result.failures[0]
  const checks = [...new Set(result.failures.map((f) => f.check))].join(', ')
  return new SafetyError(
    'IMAGE_UNSAFE',
    `Image does not pass safety check (${checks}): ${result.failures.map((f) => f.message).join('; ')}`,
    {
      image,
      suggestions: [
        first?.check === 'descriptor' || first?.check === 'footer'
          ? 'Convert the image to qcow2 or raw with qemu-img convert and upload it again.'
          : 'Rebuild the image as a self-contained qcow2 or raw file and upload it again.',
      ],
    },
  )
}
