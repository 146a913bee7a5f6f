import type {Readable} from 'node:stream'

/** What an image source knows about one image, whatever the source. */
export interface ImageRecord {
  /** MD5 hex digest (Glance's legacy `checksum`). */
  checksum?: string
  /** URL and file images: where the operator gave the checksum (`--checksum`, `images.NAME.checksum`), for messages. */
  checksumFrom?: string
  containerFormat?: string
  diskFormat?: string
  /** The Glance image id: the cache file is named by its SHA-1. */
  id: string
  /** Where the image service stores the bytes (Glance's `direct_url` and `locations` URLs, when shown). */
  locations?: string[]
  name?: string
  /** Algorithm of `osHashValue` (Glance's multihash, usually sha512). */
  osHashAlgo?: string
  osHashValue?: string
  size?: number
  source: 'file' | 'glance' | 'url'
  /** Glance's status; `active` for URLs and files. */
  status: string
  virtualSize?: number
}

export const hashAlgorithms = ['md5', 'sha1', 'sha256', 'sha384', 'sha512'] as const
export type HashAlgorithm = (typeof hashAlgorithms)[number]

/** The digest a download must match: the strongest one the source declares. */
export interface ExpectedHash {
  algorithm: HashAlgorithm
  /** Lowercase hex. */
  value: string
}

export interface OpenOptions {
  /** Start reading here (HTTP Range / file position), to resume a partial download. */
  offset?: number
  signal?: AbortSignal
}

export interface OpenedImage {
  /** Where the stream starts: the requested offset when the source honoured it, else 0. */
  offset: number
  /** Errors it emits are ImgcacheErrors (never carrying request headers), or an AbortError. */
  stream: Readable
  /** Size of the whole image when the source said so. */
  totalSize?: number
}

/** What a node needs to fetch the image itself (curl). */
export interface DownloadRequest {
  /**
   * May hold `X-Auth-Token` or `Authorization`: pass them to curl on stdin or in a 0600 file
   * (`curl -H @file`), never in an argv.
   */
  headers: Record<string, string>
  url: string
}

export interface ImageSource {
  /** Obtain a token now (sources with credentials): refused credentials are a UsageError. */
  authenticate?(): Promise<void>
  /** Where credentials came from, for --verbose; never a secret. */
  describeAuth?(): string
  /** For messages; never holds a secret. */
  readonly description: string
  downloadRequest(image: ImageRecord): Promise<DownloadRequest>
  /** An image by id only (never by name); undefined when there is none. */
  get?(id: string, options?: {signal?: AbortSignal}): Promise<ImageRecord | undefined>
  /** Every image the credentials can see (all pages). */
  list(): Promise<ImageRecord[]>
  open(image: ImageRecord, options?: OpenOptions): Promise<OpenedImage>
  /** An image id or name. Unknown → UsageError IMAGE_NOT_FOUND; ambiguous name → IMAGE_AMBIGUOUS. */
  resolve(ref: string): Promise<ImageRecord>
}
