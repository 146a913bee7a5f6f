import {describe, expect, it} from 'vitest'

import type {ImageRecord} from '../../src/lib/image-source/types.js'

import {bodySummary, displayUrl, parseContentRange, redact} from '../../src/lib/image-source/http.js'
import {
  authRequestBody,
  type CatalogService,
  identityV3Url,
  imageApiRoot,
  selectImageEndpoint,
} from '../../src/lib/image-source/keystone.js'
import {assertImageId, looksLikeImageId, lookupOrder, pickByName} from '../../src/lib/image-source/refs.js'

function rec(id: string, name: string, status = 'active'): ImageRecord {
  return {id, name, source: 'glance', status}
}

describe('id or name', () => {
  it.each([
    ['c1d2e3f4-aaaa-4bbb-8ccc-0123456789ab', true],
    ['C1D2E3F4-AAAA-4BBB-8CCC-0123456789AB', true],
    ['c1d2e3f4aaaa4bbb8ccc0123456789ab', false],
    ['c1d2e3f4-aaaa-4bbb-8ccc-0123456789a', false],
    ['ubuntu-24.04', false],
    ['', false],
  ])('%j looks like an image id: %s', (ref, expected) => {
    expect(looksLikeImageId(ref)).toBe(expected)
    expect(lookupOrder(ref)).toEqual(expected ? ['id', 'name'] : ['name'])
  })

  it('an id given as an id must be a UUID: the error names the field and the id and shows what an id looks like', () => {
    expect(() => assertImageId('not-a-uuid', '--image-id')).toThrow(
      expect.objectContaining({
        code: 'IMAGE_ID_INVALID',
        exitCode: 2,
        message: expect.stringMatching(/^--image-id: "not-a-uuid" is not a Glance image id: .*UUIDs \(8-4-4-4-12 hex/),
        subject: {field: '--image-id', image: 'not-a-uuid'},
        suggestions: expect.arrayContaining([expect.stringContaining('fetch.imageIds: any')]),
      }),
    )
    expect(() => assertImageId('c1d2e3f4-aaaa-4bbb-8ccc-0123456789ab', '--image-id')).not.toThrow()
    expect(() => assertImageId('not-a-uuid', '--image-id', 'any')).not.toThrow()
  })

  it('picks the one exact match', () => {
    expect(pickByName('u', [rec('1', 'u'), rec('2', 'U')], 'Glance').id).toBe('1')
  })

  it('lists every candidate of an ambiguous name with its status', () => {
    expect(() => pickByName('u', [rec('1', 'u'), rec('2', 'u', 'deactivated')], 'Glance at http://g/')).toThrow(
      expect.objectContaining({
        code: 'IMAGE_AMBIGUOUS',
        message:
          '2 images are named "u" in Glance at http://g/: 1 (active), 2 (deactivated). Name the image by its id.',
      }),
    )
  })

  it('says how it looked when nothing matches', () => {
    expect(() => pickByName('u', [], 'Glance', true)).toThrow(
      expect.objectContaining({code: 'IMAGE_NOT_FOUND', message: 'No image with id or name "u" in Glance.'}),
    )
    expect(() => pickByName('u', [], 'Glance')).toThrow(/No image with name "u"/)
  })
})

describe('URLs of Keystone and Glance', () => {
  it.each([
    ['http://ks:5000', 'http://ks:5000/v3'],
    ['http://ks:5000/', 'http://ks:5000/v3'],
    ['http://ks:5000/v3/', 'http://ks:5000/v3'],
    ['https://cloud/identity/v3', 'https://cloud/identity/v3'],
    ['http://ks:5000/v2.0', 'http://ks:5000/v3'],
  ])('identity %s → %s', (url, v3) => {
    expect(identityV3Url(url)).toBe(v3)
  })

  it.each([
    ['http://g:9292', 'http://g:9292'],
    ['http://g:9292/', 'http://g:9292'],
    ['http://g:9292/v2', 'http://g:9292'],
    ['http://g:9292/v2.1/', 'http://g:9292'],
    ['https://cloud/image/v2', 'https://cloud/image'],
    ['https://cloud/image', 'https://cloud/image'],
  ])('image %s → %s', (url, root) => {
    expect(imageApiRoot(url)).toBe(root)
  })
})

describe('selectImageEndpoint', () => {
  const catalog: CatalogService[] = [
    {endpoints: [{interface: 'public', region_id: 'R1', url: 'http://ks/v3'}], type: 'identity'},
    {
      endpoints: [
        {interface: 'public', region_id: 'R1', url: 'http://pub1'},
        {interface: 'internal', region_id: 'R1', url: 'http://int1'},
        {interface: 'public', region: 'R2', url: 'http://pub2'},
      ],
      type: 'image',
    },
  ]

  it('honours interface and region', () => {
    expect(selectImageEndpoint(catalog, {interface: 'internal', region: 'R1'}, 'K')).toBe('http://int1')
    expect(selectImageEndpoint(catalog, {interface: 'public', region: 'R2'}, 'K')).toBe('http://pub2')
    expect(selectImageEndpoint(catalog, {interface: 'internal'}, 'K')).toBe('http://int1')
  })

  it('refuses to pick between regions', () => {
    expect(() => selectImageEndpoint(catalog, {interface: 'public'}, 'K')).toThrow(
      expect.objectContaining({code: 'IMAGE_REGION_AMBIGUOUS', message: expect.stringContaining('R1, R2')}),
    )
  })

  it('lists what exists when nothing matches', () => {
    expect(() => selectImageEndpoint(catalog, {interface: 'admin', region: 'R1'}, 'K')).toThrow(
      'The catalog from K has no admin image endpoint in region R1; it has: public in R1, internal in R1, public in R2.',
    )
  })

  it('explains an empty catalog and a catalog without Glance', () => {
    expect(() => selectImageEndpoint([], {interface: 'public'}, 'K')).toThrow(
      /empty catalog \(is it scoped to a project\?\)/,
    )
    expect(() => selectImageEndpoint(catalog.slice(0, 1), {interface: 'public'}, 'K')).toThrow(
      /no image service \(types: identity\)/,
    )
  })
})

describe('authRequestBody', () => {
  it('scopes a password to a project by name and domain', () => {
    expect(
      authRequestBody({
        kind: 'password',
        password: 'pw',
        project: {domainName: 'Default', name: 'demo'},
        user: {domainId: 'default', name: 'demo'},
      }),
    ).toEqual({
      auth: {
        identity: {methods: ['password'], password: {user: {domain: {id: 'default'}, name: 'demo', password: 'pw'}}},
        scope: {project: {domain: {name: 'Default'}, name: 'demo'}},
      },
    })
  })

  it('sends an application credential by id without scope, or by name with its user', () => {
    expect(authRequestBody({applicationCredential: {id: 'a', secret: 's'}, kind: 'application_credential'})).toEqual({
      auth: {identity: {application_credential: {id: 'a', secret: 's'}, methods: ['application_credential']}},
    })
    expect(
      authRequestBody({
        applicationCredential: {name: 'n', secret: 's', user: {domainName: 'D', name: 'u'}},
        kind: 'application_credential',
      }),
    ).toEqual({
      auth: {
        identity: {
          application_credential: {name: 'n', secret: 's', user: {domain: {name: 'D'}, name: 'u'}},
          methods: ['application_credential'],
        },
      },
    })
  })
})

describe('what messages show', () => {
  it('drops user info and query strings from URLs', () => {
    expect(displayUrl('https://user:pw@h.example/img.qcow2?X-Amz-Signature=abc')).toBe('https://h.example/img.qcow2?…')
    expect(displayUrl('http://g:9292/')).toBe('http://g:9292')
    expect(displayUrl('http://g:9292/v2/')).toBe('http://g:9292/v2/')
    expect(displayUrl('not a url')).toBe('(an invalid URL)')
  })

  it('scrubs secrets and boils error bodies down to one line', () => {
    expect(redact('token abcd1234 here', ['abcd1234', undefined, 'x'])).toBe('token *** here')
    expect(
      bodySummary(
        '{"error": {"code": 401, "message": "The request you have made requires authentication.", "title": "Unauthorized"}}',
      ),
    ).toBe('The request you have made requires authentication.')
    expect(
      bodySummary(
        '<html><head><title>404 Not Found</title></head><body><h1>404 Not Found</h1>No image found with ID x<br/></body></html>',
      ),
    ).toBe('404 Not Found No image found with ID x')
    expect(bodySummary(Buffer.from('secret-token-1 leaked'), ['secret-token-1'])).toBe('*** leaked')
  })

  it('parses Content-Range', () => {
    expect(parseContentRange('bytes 100-999/1000')).toEqual({end: 999, start: 100, total: 1000})
    expect(parseContentRange('bytes 0-9/*')).toEqual({end: 9, start: 0, total: undefined})
    expect(parseContentRange('items 1-2/3')).toBeUndefined()
    expect(parseContentRange(undefined)).toBeUndefined()
  })
})
