import {describe, expect, it} from 'vitest'

import {assertFetchable, inactiveStatuses} from '../../src/lib/image-source/status.js'

const image = (status: string) => ({
  id: 'c1d2e3f4-0000-4000-8000-000000000001',
  name: 'ubuntu',
  source: 'glance' as const,
  status,
})

describe('assertFetchable', () => {
  it('lets an active image through', () => {
    expect(() => assertFetchable(image('active'))).not.toThrow()
  })

  it('knows every state of Glance v2', () => {
    expect([...inactiveStatuses].sort()).toEqual(
      ['deactivated', 'deleted', 'importing', 'killed', 'pending_delete', 'queued', 'saving', 'uploading'].sort(),
    )
  })

  it.each([
    ['queued', /has no data yet \(status queued/, /openstack image set --file/],
    ['saving', /still being uploaded/, /Wait for the upload/],
    ['uploading', /staged data that has not been imported/, /openstack image import/],
    ['importing', /being imported/, /Wait for the import/],
    ['deactivated', /deactivated by an administrator/, /--activate/],
    ['killed', /failed to upload/, /Upload the image again/],
    ['deleted', /has been deleted/, /another image/],
    ['pending_delete', /about to be deleted/, /another image/],
    ['frozen', /in state "frozen"/, /openstack image show/],
  ])('refuses %s: says what it means and what to do', (status, meaning, next) => {
    let error: unknown
    try {
      assertFetchable(image(status))
    } catch (error_) {
      error = error_
    }

    expect(error).toMatchObject({code: 'IMAGE_NOT_ACTIVE', exitCode: 2, subject: {image: image(status).id}})
    const {message, suggestions} = error as {message: string; suggestions: string[]}
    expect(message).toMatch(meaning)
    expect(message).toContain('Image "ubuntu" (c1d2e3f4-0000-4000-8000-000000000001)')
    expect(suggestions.join(' ')).toMatch(next)
  })
})
