import type {ImageRecord} from './types.js'

import {UsageError} from '../errors.js'

/** Glance's image states other than `active`: what they mean and what to do. */
const notActive: Record<string, {meaning: string; next: string[]}> = {
  deactivated: {
    meaning: 'has been deactivated by an administrator, so its data cannot be downloaded',
    next: ['Ask a cloud administrator to reactivate it (openstack image set --activate IMAGE) or use another image.'],
  },
  deleted: {
    meaning: 'has been deleted',
    next: ['Use another image (openstack image list).'],
  },
  importing: {
    meaning: 'is being imported and has no data yet',
    next: ['Wait for the import to finish (openstack image show IMAGE) and try again.'],
  },
  killed: {
    meaning: 'failed to upload (status killed) and will never have data',
    next: ['Upload the image again as a new image, then use the new id.'],
  },

  pending_delete: {
    meaning: 'is about to be deleted (status pending_delete)',
    next: ['Use another image (openstack image list).'],
  },
  queued: {
    meaning: 'has no data yet (status queued: created, never uploaded)',
    next: ['Upload its data (openstack image set --file FILE IMAGE) or wait for the uploader, then try again.'],
  },
  saving: {
    meaning: 'is still being uploaded (status saving)',
    next: ['Wait for the upload to finish (openstack image show IMAGE) and try again.'],
  },
  uploading: {
    meaning: 'has staged data that has not been imported yet (status uploading)',
    next: ['Run or wait for the image import (openstack image import IMAGE), then try again.'],
  },
}

export const inactiveStatuses: readonly string[] = Object.keys(notActive)

/** Only `active` images have data to fetch: anything else → UsageError IMAGE_NOT_ACTIVE. */
export function assertFetchable(image: ImageRecord): void {
  if (image.status === 'active') return
  const label = image.name ? `Image "${image.name}" (${image.id})` : `Image ${image.id}`
  const known = notActive[image.status]
  throw new UsageError(
    'IMAGE_NOT_ACTIVE',
    known
      ? `${label} ${known.meaning}; only active images can be fetched.`
      : `${label} is in state "${image.status}", not active; only active images can be fetched.`,
    {image: image.id, suggestions: known?.next ?? ['Check the image with openstack image show IMAGE.']},
  )
}
