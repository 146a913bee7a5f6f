import got from 'got'
import {randomBytes} from 'node:crypto'
import {mkdir, mkdtemp, rm, writeFile} from 'node:fs/promises'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import {inspect} from 'node:util'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {stringify} from 'yaml'

import type {ImageServiceConfig} from '../../src/lib/config/schema.js'

import {ImgcacheError} from '../../src/lib/errors.js'
import {createImageSource, type GlanceSource} from '../../src/lib/image-source/index.js'
import {type GlanceHandle, type GlanceImageJson, startGlance} from '../helpers/glance.js'
import {type KeystoneHandle, startKeystone} from '../helpers/keystone.js'

// One keystone and one glance behind it for the whole file.
let keystone: KeystoneHandle
let glance: GlanceHandle
let work: string
let image: GlanceImageJson
let imageBytes: Buffer

async function source(
  config: ImageServiceConfig | undefined,
  env: NodeJS.ProcessEnv,
  dirs: {cwd?: string; home?: string} = {},
): Promise<GlanceSource> {
  const s = await createImageSource(config, env, {cwd: dirs.cwd ?? work, home: dirs.home ?? work, http: {retries: 0}})
  if (!s) throw new Error('no source')
  return s
}

async function readAll(stream: NodeJS.ReadableStream): Promise<Buffer> {
  const chunks: Buffer[] = []
  for await (const chunk of stream) chunks.push(chunk as Buffer)
  return Buffer.concat(chunks)
}

/** Everything an error could show: message, JSON, and a deep inspection (cause chain included). */
function everythingShown(error: unknown): string {
  return [String((error as Error)?.message), JSON.stringify(error), inspect(error, {depth: 20, showHidden: true})].join(
    '\n',
  )
}

async function failureOf(promise: Promise<unknown>): Promise<ImgcacheError> {
  const error = await promise.then(
    () => undefined,
    (error_: unknown) => error_,
  )
  expect(error).toBeInstanceOf(ImgcacheError)
  return error as ImgcacheError
}

async function closedPort(): Promise<number> {
  const server = net.createServer()
  await new Promise<void>((resolve) => {
    server.listen(0, '127.0.0.1', resolve)
  })
  const {port} = server.address() as net.AddressInfo
  await new Promise((resolve) => {
    server.close(resolve)
  })
  return port
}

function passwordEnv(overrides: Record<string, string> = {}): NodeJS.ProcessEnv {
  const e = keystone.env
  return {
    OS_AUTH_URL: e.auth_url,
    OS_PASSWORD: e.demo.password,
    OS_PROJECT_DOMAIN_NAME: 'Default',
    OS_PROJECT_NAME: 'demo',
    OS_REGION_NAME: 'RegionOne',
    OS_USER_DOMAIN_NAME: 'Default',
    OS_USERNAME: 'demo',
    ...overrides,
  }
}

beforeAll(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), 'imgcache-it-keystone-'))
  keystone = await startKeystone()
  glance = await startGlance({keystone})
  imageBytes = randomBytes(256 * 1024 + 3)
  image = await glance.uploadImage({data: imageBytes, diskFormat: 'raw', name: 'demo-image'})
})

afterAll(async () => {
  await glance?.stop()
  await keystone?.stop()
  if (work) await rm(work, {force: true, recursive: true})
})

describe('clouds.yaml', () => {
  it('authenticates with a password cloud (OS_CLIENT_CONFIG_FILE + OS_CLOUD) and downloads', async () => {
    const s = await source(undefined, {OS_CLIENT_CONFIG_FILE: keystone.cloudsYamlPath, OS_CLOUD: 'demo-password'})
    const record = await s.resolve('demo-image')
    expect(record.id).toBe(image.id)
    expect((await readAll((await s.open(record)).stream)).equals(imageBytes)).toBe(true)
    expect(s.description).toBe(`Glance at ${glance.url}`)
    const described = s.describeAuth()
    expect(described).toContain('clouds.yaml cloud "demo-password"')
    expect(described).toContain(keystone.cloudsYamlPath)
    expect(described).not.toContain(keystone.env.demo.password)
  })

  it('authenticates with an application-credential cloud named in the config', async () => {
    const s = await source({cloud: 'demo-appcred'}, {OS_CLIENT_CONFIG_FILE: keystone.cloudsYamlPath})
    expect((await s.resolve(image.id)).name).toBe('demo-image')
    expect(s.describeAuth()).toContain(`application credential ${keystone.env.application_credential.id}`)
  })

  it('finds clouds.yaml on the search path and merges the password from secure.yaml', async () => {
    const home = path.join(work, 'home-secure')
    await mkdir(path.join(home, '.config', 'openstack'), {recursive: true})
    const e = keystone.env
    const auth = {
      auth_url: e.auth_url,
      project_domain_name: 'Default',
      project_name: 'demo',
      user_domain_name: 'Default',
      username: 'demo',
    }
    await writeFile(
      path.join(home, '.config', 'openstack', 'clouds.yaml'),
      stringify({clouds: {lab: {auth, region_name: 'RegionOne'}}}),
    )
    await writeFile(
      path.join(home, '.config', 'openstack', 'secure.yaml'),
      stringify({clouds: {lab: {auth: {password: e.demo.password}}}}),
      {
        mode: 0o600,
      },
    )
    const s = await source(undefined, {OS_CLOUD: 'lab'}, {cwd: path.join(work, 'elsewhere'), home})
    expect((await s.resolve(image.id)).id).toBe(image.id)
    expect(s.describeAuth()).toContain('secure.yaml')
  })

  it('rejects a wrong application credential secret without showing it', async () => {
    const wrongSecret = 'not-the-secret-' + randomBytes(8).toString('hex')
    const file = path.join(work, 'bad-appcred.yaml')
    const e = keystone.env
    await writeFile(
      file,
      stringify({
        clouds: {
          bad: {
            auth: {
              application_credential_id: e.application_credential.id,
              application_credential_secret: wrongSecret,
              auth_url: e.auth_url,
            },
            auth_type: 'v3applicationcredential',
          },
        },
      }),
    )
    const s = await source(undefined, {OS_CLIENT_CONFIG_FILE: file, OS_CLOUD: 'bad'})
    const error = await failureOf(s.resolve(image.id))
    expect(error.code).toBe('AUTH_FAILED')
    expect(error.message).toContain('401')
    expect(everythingShown(error)).not.toContain(wrongSecret)
  })
})

describe('OS_* variables', () => {
  it('authenticates with a password', async () => {
    const s = await source(undefined, passwordEnv())
    expect((await s.resolve('demo-image')).id).toBe(image.id)
    expect(s.describeAuth()).toContain('the environment')
  })

  it('authenticates with an application credential', async () => {
    const e = keystone.env
    const s = await source(undefined, {
      OS_APPLICATION_CREDENTIAL_ID: e.application_credential.id,
      OS_APPLICATION_CREDENTIAL_SECRET: e.application_credential.secret,
      OS_AUTH_TYPE: 'v3applicationcredential',
      OS_AUTH_URL: e.auth_url,
    })
    expect((await s.resolve(image.id)).id).toBe(image.id)
  })

  it('says clearly that a wrong password was refused, without showing it', async () => {
    const wrong = 'Wrong-Password-' + randomBytes(6).toString('hex')
    const error = await failureOf((await source(undefined, passwordEnv({OS_PASSWORD: wrong}))).resolve(image.id))
    expect(error).toMatchObject({code: 'AUTH_FAILED', exitCode: 2})
    expect(error.message).toMatch(/Keystone at http:\/\/127\.0\.0\.1:\d+\/v3 refused the password of user "demo"/)
    expect(error.message).toContain('HTTP 401')
    expect(error.suggestions.join(' ')).toContain('the environment')
    expect(everythingShown(error)).not.toContain(wrong)
  })

  it('uses a pre-issued token at an explicit endpoint (OS_TOKEN + imageService.endpoint)', async () => {
    const token = await keystone.token('demo')
    const s = await source({endpoint: glance.url}, {OS_TOKEN: token})
    expect((await s.resolve(image.id)).id).toBe(image.id)
    const request = await s.downloadRequest(await s.resolve(image.id))
    expect(request.headers).toEqual({'X-Auth-Token': token})
    expect(request.url).not.toContain(token)
  })

  it('reads the password from imageService.passwordFile', async () => {
    const file = path.join(work, 'password')
    await writeFile(file, keystone.env.demo.password + '\n', {mode: 0o600})
    const config: ImageServiceConfig = {
      authUrl: keystone.env.auth_url,
      passwordFile: file,
      projectDomainName: 'Default',
      projectName: 'demo',
      userDomainName: 'Default',
      username: 'demo',
    }
    const s = await source(config, {})
    expect((await s.resolve(image.id)).id).toBe(image.id)
  })
})

describe('tokens', () => {
  it('re-authenticates once when Glance refuses a token that was revoked', async () => {
    const s = await source(undefined, passwordEnv())
    const first = await s.session.access()
    // revoke exactly this token (glance has never validated it, so it asks keystone)
    await got.delete(`${keystone.env.auth_url}/auth/tokens`, {
      headers: {'x-auth-token': await keystone.token('admin'), 'x-subject-token': first.token as string},
    })
    expect((await s.resolve(image.id)).id).toBe(image.id)
    const second = await s.session.access()
    expect(second.token).not.toBe(first.token)
  })

  it('refuses a revoked pre-issued token with a clear 401, never showing it', async () => {
    const token = await keystone.token('demo', {fresh: true})
    await got.delete(`${keystone.env.auth_url}/auth/tokens`, {
      headers: {'x-auth-token': await keystone.token('admin'), 'x-subject-token': token},
    })
    const error = await failureOf((await source({endpoint: glance.url}, {OS_TOKEN: token})).resolve(image.id))
    expect(error.code).toBe('AUTH_FAILED')
    expect(error.message).toContain('refused the token (HTTP 401)')
    expect(everythingShown(error)).not.toContain(token)
  })

  it('never shows the token in errors of any kind', async () => {
    const s = await source(undefined, passwordEnv())
    const {token} = await s.session.access()
    expect(token).toBeTruthy()
    const deactivated = await glance.uploadImage({data: 'x', diskFormat: 'raw', name: 'deactivated'})
    await glance.deactivate(deactivated.id)
    const nowhere = await source({endpoint: `http://127.0.0.1:${await closedPort()}`}, {OS_TOKEN: token as string})
    const errors = [
      await failureOf(nowhere.resolve(image.id)),
      await failureOf(s.resolve('no-such-image')),
      await failureOf(s.open(await s.resolve(image.id), {offset: imageBytes.length + 1})),
      // Glance forbids a non-admin to download a deactivated image (a record that claims active)
      await failureOf(s.open({id: deactivated.id, source: 'glance', status: 'active'})),
    ]
    expect(errors.map((e) => e.code)).toEqual([
      'IMAGE_SERVICE_UNREACHABLE',
      'IMAGE_NOT_FOUND',
      'IMAGE_SERVICE_BAD_RANGE',
      'FORBIDDEN',
    ])
    for (const error of errors) expect(everythingShown(error)).not.toContain(token as string)
  })

  it('does not show images of another project', async () => {
    const adminToken = await keystone.token('admin')
    const hidden = await glance.uploadImage({
      data: 'admin only',
      diskFormat: 'raw',
      name: 'admin-private',
      token: adminToken,
      visibility: 'private',
    })
    const s = await source(undefined, passwordEnv())
    await expect(s.resolve(hidden.id)).rejects.toMatchObject({code: 'IMAGE_NOT_FOUND'})
  })
})

describe('the catalog', () => {
  let deadPort: number
  const added: string[] = []

  beforeAll(async () => {
    deadPort = await closedPort()
    const serviceId = keystone.env.service_ids.image
    await keystone.admin('POST', '/regions', {region: {id: 'RegionTwo'}})
    const endpoints = [
      {interface: 'internal', region_id: 'RegionOne', url: `http://127.0.0.1:${deadPort}`},
      {interface: 'public', region_id: 'RegionTwo', url: `${glance.url}/v2/`},
    ]
    for (const endpoint of endpoints) {
      const created = await keystone.admin<{endpoint: {id: string}}>('POST', '/endpoints', {
        endpoint: {...endpoint, service_id: serviceId},
      })
      added.push(created.endpoint.id)
    }

    // the harness made internal endpoints at glance's URL too: drop RegionOne's, so ours is the one
    const all = await keystone.admin<{
      endpoints: Array<{id: string; interface: string; region_id: string; url: string}>
    }>('GET', `/endpoints?service_id=${serviceId}&interface=internal`)
    for (const endpoint of all.endpoints.filter((e) => e.region_id === 'RegionOne' && !added.includes(e.id))) {
      await keystone.admin('DELETE', `/endpoints/${endpoint.id}`)
    }
  })

  it('uses the endpoint of the interface asked for', async () => {
    const s = await source(undefined, passwordEnv({OS_INTERFACE: 'internal'}))
    await expect(s.resolve(image.id)).rejects.toMatchObject({
      code: 'IMAGE_SERVICE_UNREACHABLE',
      message: expect.stringContaining(`http://127.0.0.1:${deadPort}`),
    })
  })

  it('uses the endpoint of the region asked for, with or without a version in its URL', async () => {
    const s = await source(undefined, passwordEnv({OS_REGION_NAME: 'RegionTwo'}))
    expect((await s.resolve(image.id)).id).toBe(image.id)
    expect(s.description).toBe(`Glance at ${glance.url}`)
    expect(s.describeAuth()).toContain('region RegionTwo')
  })

  it('refuses a region that the cloud does not list, as openstacksdk does', async () => {
    await expect(
      source({cloud: 'demo-password', region: 'RegionTwo'}, {OS_CLIENT_CONFIG_FILE: keystone.cloudsYamlPath}),
    ).rejects.toMatchObject({code: 'AUTH_CONFIG_INVALID', message: expect.stringContaining('RegionOne')})
  })

  it('lists what the catalog has when no endpoint matches', async () => {
    const s = await source(undefined, passwordEnv({OS_INTERFACE: 'admin', OS_REGION_NAME: 'RegionTwo'}))
    const error = await failureOf(s.resolve(image.id))
    expect(error.code).toBe('NO_IMAGE_ENDPOINT')
    expect(error.message).toContain('public in RegionTwo')
  })

  it('refuses to guess between regions', async () => {
    const env = passwordEnv()
    delete env.OS_REGION_NAME
    await expect((await source(undefined, env)).resolve(image.id)).rejects.toMatchObject({
      code: 'IMAGE_REGION_AMBIGUOUS',
    })
  })
})
