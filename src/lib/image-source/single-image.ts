import type {ExpectedHash, ImageRecord} from './types.js'

import {UsageError} from '../errors.js'
import {hashFields, parseChecksum} from './checksum.js'
import {imageNotFound} from './refs.js'

/** What a URL or a file source needs to know about its one image. */
export interface SingleImageOptions {
  /** `ALGO:HEX` or a parsed hash; without one the fetch is unverified (fetch.allowUnverified). */
  checksum?: ExpectedHash | string
  /** Where the checksum came from, for messages (default `--checksum`). */
  checksumField?: string
  /** The declared format (the fetch checks the bytes against it). */
  diskFormat?: string
  /** The Glance image id to cache it under (Nova names the cache file by its SHA-1). */
  id: string
  /** Where the id came from, for messages (default `--image-id`). */
  idField?: string
  name?: string
}

/** The record of a URL or file image, validated. */
export function singleImageRecord(options: SingleImageOptions, source: 'file' | 'url', where: string): ImageRecord {
  const id = options.id?.trim()
  if (!id) {
    throw new UsageError(
      'IMAGE_ID_REQUIRED',
      `${where} needs the Glance image id to cache it under (${options.idField ?? '--image-id'}).`,
      {
        field: options.idField,
        suggestions: [
          'Give the id of the Glance image these bytes are (Nova names the cache file by it), e.g. in the config: images: {NAME: {id: ID, url: URL, checksum: sha256:HEX}}.',
        ],
      },
    )
  }

  const hash =
    typeof options.checksum === 'string'
      ? parseChecksum(options.checksum, options.checksumField ?? '--checksum')
      : options.checksum
  return {
    checksumFrom: hash ? (options.checksumField ?? '--checksum') : undefined,
    diskFormat: options.diskFormat,
    id,
    name: options.name,
    source,
    status: 'active',
    ...hashFields(hash),
  }
}

/** A single-image source answers only to its own id, name or location. */
export function assertOwnRef(ref: string, record: ImageRecord, location: string, description: string): void {
  const wanted = ref.trim()
  if (wanted === record.id || wanted === location || (record.name !== undefined && wanted === record.name)) return
  throw imageNotFound(wanted, description, 'id or name')
}
