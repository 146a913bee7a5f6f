import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {ImgcacheError} from '../../src/lib/errors.js'
import {createHttpClient, networkError} from '../../src/lib/image-source/http.js'
import {issueToken} from '../../src/lib/image-source/keystone.js'
import {followRedirect} from '../../src/lib/redirect.js'
import {type RedirectServers, startRedirectServers} from '../helpers/redirect-servers.js'

// The HTTP client's redirect rules (src/lib/redirect.ts) against two test servers: `front` on
// 127.0.0.1 redirects, `elsewhere` on 127.0.0.2 records what reaches it. The CLI-level cases (each
// mover) are in test/e2e/redirect.e2e.test.ts.

const TOKEN = 'gAAAAB-integration-token-0123456789'
let servers: RedirectServers

beforeAll(async () => {
  servers = await startRedirectServers()
  servers.image({data: Buffer.from('bytes'), id: 'img', json: {id: 'img', status: 'active'}})
})
afterAll(async () => {
  await servers?.close()
})

describe('got after a redirect', () => {
  it('keeps the token within the origin', async () => {
    const {client} = createHttpClient({retries: 0})
    const from = servers.front.requests.length
    await client.get(`${servers.front.url}/loop/1`, {headers: {'X-Auth-Token': TOKEN}, maxRedirects: 3}).catch(() => {})
    const hops = servers.front.requests.slice(from)
    expect(hops.map((r) => r.url)).toEqual(['/loop/1', '/loop/2', '/loop/3', '/loop/4'])
    expect(hops.every((r) => r.headers['x-auth-token'] === TOKEN)).toBe(true)
  })

  it('drops every credential header on the way to another origin', async () => {
    const {client} = createHttpClient({retries: 0})
    const from = servers.elsewhere.requests.length
    const body = await client
      .get(`${servers.front.url}/v2/images/img/file`, {
        headers: {authorization: 'Basic dXNlcjpwYXNz', 'X-Auth-Token': TOKEN, 'x-subject-token': TOKEN},
      })
      .text()
    expect(body).toBe('bytes')
    const [reached] = servers.elsewhere.requests.slice(from)
    expect(reached?.url).toBe('/bytes/img')
    expect(reached?.headers).not.toHaveProperty('x-auth-token')
    expect(reached?.headers).not.toHaveProperty('x-subject-token')
    expect(reached?.headers).not.toHaveProperty('authorization')
  })

  it('ends a redirect loop with REDIRECT_LOOP naming the service and the image', async () => {
    const {client} = createHttpClient({retries: 0})
    const error = await client.get(`${servers.front.url}/loop/1`).catch((error_: unknown) => error_)
    const mapped = networkError(error, {image: 'img-1', service: 'Glance at http://front'})
    expect(mapped).toBeInstanceOf(ImgcacheError)
    expect(mapped.code).toBe('REDIRECT_LOOP')
    expect(mapped.message).toContain('img-1')
    expect(mapped.message).toContain('Glance at http://front')
  })

  it("never re-posts Keystone's password body to another origin: REDIRECT_REFUSED names both hosts", async () => {
    const http = createHttpClient({retries: 0})
    const from = servers.elsewhere.requests.length
    // `front` answers /signed/… with a redirect to `elsewhere`, whatever the method.
    const error = await issueToken(
      http,
      `${servers.front.url}/signed/v3`,
      {kind: 'password', password: 'pw-secret', user: {domainName: 'Default', name: 'u'}},
      [],
    ).catch((error_: unknown) => error_)
    expect(servers.elsewhere.requests.slice(from)).toEqual([])
    expect(error).toBeInstanceOf(ImgcacheError)
    expect((error as ImgcacheError).code).toBe('REDIRECT_REFUSED')
    expect((error as ImgcacheError).message).toContain(servers.front.url)
    expect((error as ImgcacheError).message).toContain(servers.elsewhere.url)
    expect((error as ImgcacheError).message).not.toContain('pw-secret')
  })
})

describe('followRedirect (a hop imgcache re-issues itself: an SSH node’s curl)', () => {
  const hop = {headers: {'X-Auth-Token': TOKEN}, url: 'https://glance.example:9292/v2/images/i/file'}

  it('keeps the token to the same origin, drops it to another host, port or scheme', () => {
    expect(followRedirect(hop, '/v2/images/i/file?x=1', 'i').headers).toEqual(hop.headers)
    expect(followRedirect(hop, 'https://store.example:9292/o', 'i').headers).toEqual({})
    expect(followRedirect(hop, 'https://glance.example:9393/o', 'i').headers).toEqual({})
    expect(followRedirect(hop, 'http://glance.example:9292/o', 'i').headers).toEqual({})
  })

  it('refuses a target that is not http(s)', () => {
    expect(() => followRedirect(hop, 'file:///etc/passwd', 'i')).toThrow(/only http and https/)
  })
})
