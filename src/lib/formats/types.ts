/** Every format the inspector recognises, in the order used to pick one when several match. */
export const DISK_FORMATS = ['qcow2', 'qed', 'vmdk', 'vhd', 'vhdx', 'vdi', 'luks', 'iso', 'gpt', 'raw'] as const

export type DiskFormat = (typeof DISK_FORMATS)[number]

/** Nova's `[compute] vmdk_allowed_types` default. */
export const DEFAULT_VMDK_ALLOWED_TYPES: readonly string[] = ['streamOptimized', 'monolithicSparse']

export interface InspectOptions {
  /** VMDK create types accepted (case-insensitive); an empty list refuses every VMDK. */
  vmdkAllowedTypes?: readonly string[]
}

/**
 * One failed check. `check` is stable: the oslo.utils names (`backing_file`, `data_file`,
 * `unknown_features`, `banned`, `descriptor`, `footer`, `mbr`, `version`), plus `multiple_formats`,
 * `format` (a recognised header whose structure is broken) and `incomplete` (a region the checks
 * need could not be read).
 */
export interface SafetyFailure {
  check: string
  message: string
}

/** What the header says, for reports. Only the fields that apply to the detected format are set. */
export interface FormatDetails {
  backingFile?: string
  backingFormat?: string
  /** LUKS cipher, e.g. `aes-xts-plain64`. */
  cipher?: string
  clusterSize?: number
  corrupt?: boolean
  /** VMDK create type as written in the descriptor. */
  createType?: string
  dataFile?: string
  dirty?: boolean
  encrypted?: boolean
  extendedL2?: boolean
  /** VMDK extent file names, in descriptor order. */
  extents?: string[]
  /** Non-empty MBR partition entries (gpt/mbr). */
  partitions?: number
  /** The MBR is a GPT protective MBR (one 0xEE entry). */
  protectiveMbr?: boolean
  /** Header format version (qcow2, vmdk sparse, luks). */
  version?: number
  /** ISO 9660/UDF descriptor identifier (`CD001`, `NSR02`, `NSR03`). */
  volumeDescriptor?: string
  /** Size the ISO primary volume descriptor declares. */
  volumeSize?: number
}

export interface InspectionResult {
  /** Bytes seen: the whole stream, or the size of the inspected file. */
  actualSize: number
  /** Every format that matched (just `raw` when none did). */
  candidates: DiskFormat[]
  details: FormatDetails
  failures: SafetyFailure[]
  /**
   * The detected format; `raw` when nothing else matched. When several formats match (a failure
   * `multiple_formats`), the first of them in DISK_FORMATS order.
   */
  format: DiskFormat
  safe: boolean
  virtualSize?: number
}
