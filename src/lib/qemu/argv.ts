import {ImgcacheError} from '../errors.js'

export type CacheMode = 'none' | 'writeback'

const FORMAT_NAME = /^[a-z][\d_a-z-]*$/

/**
 * A path as a qemu-img argument. Relative paths get a `./` prefix, so that a name starting with
 * `-` is not read as an option and one like `json:{...}` or `nbd:...` is not read as a protocol.
 */
export function qemuPath(path: string): string {
  if (path === '') throw new ImgcacheError('QEMU_BAD_ARGUMENT', 'qemu-img was given an empty path')
  return path.startsWith('/') ? path : `./${path}`
}

/** Escapes a value inside a qemu `-o` option string: a comma is written as two. */
export function escapeQemuOptionValue(value: string): string {
  return value.replaceAll(',', ',,')
}

/** `qemu-img info -U --output=json [--backing-chain] [-f fmt] path`; -U so a running VM's disk can be read. */
export function qemuInfoArgv(path: string, options: {backingChain?: boolean; format?: string} = {}): string[] {
  return [
    'qemu-img',
    'info',
    '-U',
    '--output=json',
    ...(options.backingChain ? ['--backing-chain'] : []),
    ...(options.format === undefined ? [] : ['-f', formatName(options.format)]),
    qemuPath(path),
  ]
}

export interface ConvertOptions {
  /** `none` (O_DIRECT) when the destination file system supports it, else `writeback`, as Nova does. */
  cacheMode: CacheMode
  dst: string
  /** Output format; raw is what Nova's force_raw_images produces. */
  dstFormat?: string
  src: string
  /** Always given: qemu-img must never probe the format of an untrusted image. */
  srcFormat: string
}

/** `qemu-img convert -t <mode> -O <out> -f <in> <src> <dst>`, Nova's argument order. */
export function qemuConvertArgv(options: ConvertOptions): string[] {
  return [
    'qemu-img',
    'convert',
    '-t',
    options.cacheMode,
    '-O',
    formatName(options.dstFormat ?? 'raw'),
    '-f',
    formatName(options.srcFormat),
    qemuPath(options.src),
    qemuPath(options.dst),
  ]
}

export interface OverlayOptions {
  /** Absolute path of the base: qemu resolves a relative one against the overlay's directory. */
  backingFile: string
  /** qemu's name for the base's format (`raw`, `qcow2`, `vpc`...). */
  backingFormat: string
  /** The base's cluster size, when it is a qcow2 (Nova copies it). */
  clusterSize?: number
  path: string
  /** Virtual size in bytes; omitted or 0 gives the overlay the base's size (Nova's root_gb = 0). */
  size?: number
}

/**
 * `qemu-img create -f qcow2 -o backing_file=<b>,backing_fmt=<fmt>[,cluster_size=<cs>] <path> [<size>]`,
 * how Nova creates an instance disk over a cached base.
 */
export function qemuCreateOverlayArgv(options: OverlayOptions): string[] {
  const {backingFile, clusterSize, size} = options
  if (!backingFile.startsWith('/')) {
    throw new ImgcacheError(
      'QEMU_BAD_ARGUMENT',
      `The backing file of an overlay must be an absolute path, not ${JSON.stringify(backingFile)}`,
    )
  }

  const settings = [
    `backing_file=${escapeQemuOptionValue(backingFile)}`,
    `backing_fmt=${formatName(options.backingFormat)}`,
  ]
  if (clusterSize !== undefined) {
    if (!Number.isSafeInteger(clusterSize) || clusterSize < 512) {
      throw new ImgcacheError('QEMU_BAD_ARGUMENT', `Invalid qcow2 cluster size ${clusterSize}`)
    }

    settings.push(`cluster_size=${clusterSize}`)
  }

  if (size !== undefined && (!Number.isSafeInteger(size) || size < 0)) {
    throw new ImgcacheError('QEMU_BAD_ARGUMENT', `Invalid overlay size ${size}`)
  }

  return [
    'qemu-img',
    'create',
    '-f',
    'qcow2',
    '-o',
    settings.join(','),
    qemuPath(options.path),
    ...(size ? [String(size)] : []),
  ]
}

function formatName(format: string): string {
  if (!FORMAT_NAME.test(format)) {
    throw new ImgcacheError('QEMU_BAD_ARGUMENT', `${JSON.stringify(format)} is not a qemu format name`)
  }

  return format
}
