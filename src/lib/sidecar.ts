/**
 * What imgcache records about a cache entry it wrote, in `<cache dir>/.imgcache/<name>.json`
 * (Nova ignores the directory): what a SHA-1 file name cannot give back.
 */
export interface Sidecar {
  /** Hash of the bytes as downloaded, as the image source declared it. */
  downloadHash?: {algorithm: string; value: string}
  fetchedAt?: string
  /** Format of the cached file (raw after conversion). */
  format?: string
  imageId: string
  imageName?: string
  /** Size of the cached file in bytes. */
  size?: number
  /** Where it came from, without credentials: `glance:<endpoint>`, a URL, a path. */
  source?: string
  /** Format the image source declared. */
  sourceFormat?: string
  version: 1
}

/** Parse a sidecar's text; undefined when absent or not one of ours. */
export function parseSidecar(text: string | undefined): Sidecar | undefined {
  if (!text) return undefined
  try {
    const value = JSON.parse(text) as Partial<Sidecar>
    if (value && typeof value === 'object' && typeof value.imageId === 'string') return value as Sidecar
  } catch {
    // A damaged sidecar is treated as absent: it only carries what the file name cannot.
  }

  return undefined
}
