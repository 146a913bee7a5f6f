import type {ImageRecord} from './types.js'

import {UsageError} from '../errors.js'

const uuid = /^[\da-f]{8}-[\da-f]{4}-[\da-f]{4}-[\da-f]{4}-[\da-f]{12}$/i

/** Glance ids are UUIDs: only such a ref is worth a GET by id before the name lookup. */
export function looksLikeImageId(ref: string): boolean {
  return uuid.test(ref)
}

/** Why an id is refused as a Glance image id, for the field (or config key) that gave it. */
export function imageIdRule(id: string): string {
  return (
    `${JSON.stringify(id)} is not a Glance image id: Glance image ids are UUIDs (8-4-4-4-12 hex digits, ` +
    `e.g. 3c1e2f4a-5b6c-4d7e-8f90-a1b2c3d4e5f6), and Nova names a base by the id of the instance's image, ` +
    `so nothing would ever use a base cached under this one`
  )
}

/**
 * An id given as an id (`--image-id`) must be a UUID, as Glance's image schema requires
 * (glance/api/v2/images.py, get_base_properties), unless the config's `fetch.imageIds` is `any`.
 * Names are not ids: an IMAGE looked up by name is never checked here.
 */
export function assertImageId(id: string, field: string, policy: 'any' | 'uuid' = 'uuid'): void {
  if (policy === 'any' || looksLikeImageId(id)) return
  throw new UsageError('IMAGE_ID_INVALID', `${field}: ${imageIdRule(id)}.`, {
    field,
    image: id,
    suggestions: [
      'Give the id of the Glance image these bytes are: openstack image show NAME -f value -c id.',
      'If your image service does not use UUIDs for its ids, set fetch.imageIds: any in the config file.',
    ],
  })
}

/** How to look a ref up: by id first (then by name), or by name only. */
export function lookupOrder(ref: string): Array<'id' | 'name'> {
  return looksLikeImageId(ref) ? ['id', 'name'] : ['name']
}

export function imageNotFound(ref: string, where: string, how: 'id' | 'id or name' | 'name'): UsageError {
  return new UsageError('IMAGE_NOT_FOUND', `No image with ${how} "${ref}" in ${where}.`, {
    image: ref,
    suggestions: [
      'Check the id or name with openstack image list (names are case-sensitive).',
      'Images of other projects are visible only when public, shared or community: check the project and region your credentials use (--verbose shows them).',
    ],
  })
}

/**
 * The one image a name lookup found. None → IMAGE_NOT_FOUND; several → IMAGE_AMBIGUOUS listing
 * every candidate (id, name, status) so the operator can pick an id.
 */
export function pickByName(ref: string, candidates: ImageRecord[], where: string, triedId = false): ImageRecord {
  const matches = candidates.filter((c) => c.name === ref)
  if (matches.length === 1) return matches[0] as ImageRecord
  if (matches.length === 0) throw imageNotFound(ref, where, triedId ? 'id or name' : 'name')
  const list = matches.map((c) => `${c.id} (${c.status})`).join(', ')
  throw new UsageError(
    'IMAGE_AMBIGUOUS',
    `${matches.length} images are named "${ref}" in ${where}: ${list}. Name the image by its id.`,
    {image: ref, suggestions: [`Use an id instead of the name, e.g. ${matches[0]?.id}.`]},
  )
}
