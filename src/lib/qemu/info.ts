import {ImgcacheError} from '../errors.js'

/** What `qemu-img info --output=json` says about one image. */
export interface QemuInfo {
  actualSize?: number
  backingFilename?: string
  backingFormat?: string
  clusterSize?: number
  corrupt?: boolean
  /** qcow2 external data file (format-specific data). */
  dataFile?: string
  dirty?: boolean
  encrypted?: boolean
  extendedL2?: boolean
  filename?: string
  /** qemu's format name (`qcow2`, `raw`, `vpc`, `vmdk`...); undefined when qemu reports none. */
  format?: string
  fullBackingFilename?: string
  /** qcow2 `compat` (`0.10` for v2, `1.1` for v3). */
  qcow2Compat?: string
  virtualSize: number
  /** VMDK create type (format-specific data). */
  vmdkCreateType?: string
  /** File names of a VMDK's extents. */
  vmdkExtents?: string[]
}

/** Parses the JSON of `qemu-img info --output=json` (one image). */
export function parseQemuInfo(stdout: string): QemuInfo {
  const value = parseJson(stdout)
  if (Array.isArray(value)) {
    throw malformed('an array (use parseQemuInfoChain for --backing-chain output)', stdout)
  }

  return toInfo(value, stdout)
}

/** Parses `qemu-img info --output=json --backing-chain`: the top image first. */
export function parseQemuInfoChain(stdout: string): QemuInfo[] {
  const value = parseJson(stdout)
  const items = Array.isArray(value) ? value : [value]
  if (items.length === 0) throw malformed('an empty list', stdout)
  return items.map((item) => toInfo(item, stdout))
}

function parseJson(stdout: string): unknown {
  try {
    return JSON.parse(stdout) as unknown
  } catch (error) {
    throw malformed('not valid JSON', stdout, error)
  }
}

function toInfo(value: unknown, stdout: string): QemuInfo {
  if (!isRecord(value)) throw malformed('not a JSON object', stdout)
  const virtualSize = value['virtual-size']
  if (typeof virtualSize !== 'number') throw malformed('without a numeric "virtual-size"', stdout)
  const info: QemuInfo = {virtualSize}
  const set = <K extends keyof QemuInfo>(key: K, field: unknown, type: 'boolean' | 'number' | 'string') => {
    if (typeof field === type) info[key] = field as QemuInfo[K]
  }

  set('format', value.format, 'string')
  set('filename', value.filename, 'string')
  set('actualSize', value['actual-size'], 'number')
  set('clusterSize', value['cluster-size'], 'number')
  set('dirty', value['dirty-flag'], 'boolean')
  set('encrypted', value.encrypted, 'boolean')
  set('backingFilename', value['backing-filename'], 'string')
  set('fullBackingFilename', value['full-backing-filename'], 'string')
  set('backingFormat', value['backing-filename-format'], 'string')
  const specific = value['format-specific']
  const data = isRecord(specific) && isRecord(specific.data) ? specific.data : {}
  set('dataFile', data['data-file'], 'string')
  set('corrupt', data.corrupt, 'boolean')
  set('extendedL2', data['extended-l2'], 'boolean')
  set('qcow2Compat', data.compat, 'string')
  set('vmdkCreateType', data['create-type'], 'string')
  if (Array.isArray(data.extents)) {
    info.vmdkExtents = data.extents.flatMap((extent) =>
      isRecord(extent) && typeof extent.filename === 'string' ? [extent.filename] : [],
    )
  }

  return info
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

function malformed(what: string, stdout: string, cause?: unknown): ImgcacheError {
  const excerpt = stdout.trim().slice(0, 200)
  return new ImgcacheError(
    'QEMU_INFO_MALFORMED',
    `qemu-img info printed output that is ${what}: ${excerpt === '' ? '(nothing)' : JSON.stringify(excerpt)}`,
    {
      cause,
      suggestions: ['Check that qemu-img on that node works: run `qemu-img info -U --output=json <file>` by hand.'],
    },
  )
}
