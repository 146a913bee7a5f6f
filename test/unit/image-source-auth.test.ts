import {mkdir, mkdtemp, rm, writeFile} from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import {afterEach, beforeEach, describe, expect, it} from 'vitest'
import {stringify} from 'yaml'

import type {ImageServiceConfig} from '../../src/lib/config/schema.js'

import {type AuthSettings, describeAuth, resolveAuth} from '../../src/lib/image-source/auth.js'

let root: string
let cwd: string
let home: string

beforeEach(async () => {
  root = await mkdtemp(path.join(os.tmpdir(), 'imgcache-auth-'))
  cwd = path.join(root, 'cwd')
  home = path.join(root, 'home')
  await mkdir(cwd, {recursive: true})
  await mkdir(home, {recursive: true})
})

afterEach(async () => {
  await rm(root, {force: true, recursive: true})
})

const SECRET = 'Sup3r-Secret-Password'
const AC_SECRET = 'app-cred-secret-value'
const TOKEN = 'gAAAAAB-token-value-xyz'

/** No clouds file of this machine can be seen: XDG_CONFIG_DIRS points into the temp dir. */
async function resolve(
  config: ImageServiceConfig | undefined,
  env: NodeJS.ProcessEnv = {},
): Promise<AuthSettings | undefined> {
  return resolveAuth(config, {XDG_CONFIG_DIRS: path.join(root, 'xdg'), ...env}, {cwd, home})
}

async function cloudsFile(clouds: Record<string, unknown>, where = path.join(cwd, 'clouds.yaml')): Promise<string> {
  await mkdir(path.dirname(where), {recursive: true})
  await writeFile(where, stringify({clouds}))
  return where
}

const passwordCloud = {
  auth: {
    auth_url: 'http://ks:5000',
    password: SECRET,
    project_domain_name: 'Default',
    project_name: 'p1',
    user_domain_name: 'Default',
    username: 'alice',
  },
  region_name: 'R1',
}

const passwordEnv = {
  OS_AUTH_URL: 'http://env-ks:5000/v3',
  OS_PASSWORD: SECRET,
  OS_PROJECT_NAME: 'envproject',
  OS_USERNAME: 'bob',
}

function keystoneMethod(settings: AuthSettings | undefined) {
  if (settings?.credentials.kind !== 'keystone') throw new Error(`not keystone: ${settings?.credentials.kind}`)
  return settings.credentials.keystone
}

describe('what is configured', () => {
  it('is nothing when there is no config, no OS_* and no clouds.yaml', async () => {
    expect(await resolve(undefined, {})).toBeUndefined()
    expect(await resolve({}, {OS_REGION_NAME: 'R1'})).toBeUndefined()
  })

  it('is a Glance without Keystone when only an endpoint is set', async () => {
    const s = await resolve({endpoint: 'http://glance:9292'})
    expect(s).toMatchObject({credentials: {kind: 'none'}, endpoint: 'http://glance:9292', interface: 'public'})
    expect(describeAuth(s as AuthSettings)).toBe(
      'Image service credentials: none (only imageService.endpoint is set: a Glance without Keystone).\n' +
        'Image endpoint: http://glance:9292 (from imageService.endpoint).',
    )
  })
})

describe('precedence of the credential sources', () => {
  it('OS_CLOUD beats imageService.cloud, and says so', async () => {
    await cloudsFile({a: passwordCloud, b: {...passwordCloud, auth: {...passwordCloud.auth, username: 'carol'}}})
    const s = await resolve({cloud: 'a'}, {OS_CLOUD: 'b'})
    expect(keystoneMethod(s)).toMatchObject({kind: 'password', user: {name: 'carol'}})
    expect(s?.origin.ignored.join(',')).toContain('imageService.cloud "a"')
  })

  it('a selected cloud beats OS_* credentials (which are reported as ignored)', async () => {
    await cloudsFile({a: passwordCloud})
    const s = await resolve({cloud: 'a'}, passwordEnv)
    expect(keystoneMethod(s)).toMatchObject({user: {name: 'alice'}})
    expect(s?.authUrl).toBe('http://ks:5000')
    expect(s?.origin.ignored.join(',')).toContain('OS_PASSWORD')
  })

  it("OS_* credentials beat the config's own fields", async () => {
    await writeFile(path.join(cwd, 'pw'), 'file-password\n')
    const s = await resolve({authUrl: 'http://cfg-ks/v3', passwordFile: 'pw', username: 'cfg'}, passwordEnv)
    expect(keystoneMethod(s)).toMatchObject({kind: 'password', password: SECRET, user: {name: 'bob'}})
    expect(s?.origin.credentials).toContain('the environment')
  })

  it("uses the config's fields with secrets from files (final newline dropped)", async () => {
    await writeFile(path.join(cwd, 'pw'), `${SECRET}\n`)
    const s = await resolve({
      authUrl: 'http://cfg-ks/v3',
      passwordFile: 'pw',
      projectDomainName: 'PD',
      projectName: 'proj',
      userDomainName: 'UD',
      username: 'cfg',
    })
    expect(keystoneMethod(s)).toEqual({
      kind: 'password',
      password: SECRET,
      project: {domainId: undefined, domainName: 'PD', id: undefined, name: 'proj'},
      user: {domainId: undefined, domainName: 'UD', id: undefined, name: 'cfg'},
    })
  })

  it('takes the only cloud of clouds.yaml when nothing else is configured', async () => {
    await cloudsFile({solo: passwordCloud}, path.join(home, '.config/openstack/clouds.yaml'))
    const s = await resolve(undefined, {})
    expect(s?.origin.credentials).toContain('the only cloud there')
    expect(s?.region).toBe('R1')
  })

  it('does not take the only cloud when an endpoint is configured', async () => {
    await cloudsFile({solo: passwordCloud})
    expect((await resolve({endpoint: 'http://g:9292'}))?.credentials.kind).toBe('none')
  })
})

describe('tokens', () => {
  it('a pre-issued token from OS_TOKEN with the config endpoint is used as is', async () => {
    const s = await resolve({endpoint: 'http://g:9292'}, {OS_TOKEN: TOKEN})
    expect(s?.credentials).toEqual({kind: 'static-token', token: TOKEN})
  })

  it('OS_AUTH_TOKEN works like OS_TOKEN; tokenFile is read', async () => {
    expect((await resolve({endpoint: 'http://g'}, {OS_AUTH_TOKEN: TOKEN}))?.credentials).toEqual({
      kind: 'static-token',
      token: TOKEN,
    })
    await writeFile(path.join(cwd, 'tok'), `${TOKEN}\n`)
    expect((await resolve({endpoint: 'http://g', tokenFile: 'tok'}))?.credentials).toEqual({
      kind: 'static-token',
      token: TOKEN,
    })
  })

  it('a token with OS_AUTH_URL is validated at Keystone for the catalog', async () => {
    const s = await resolve(undefined, {OS_AUTH_URL: 'http://ks/v3', OS_TOKEN: TOKEN})
    expect(keystoneMethod(s)).toEqual({kind: 'token', project: undefined, token: TOKEN})
  })

  it('a token without Keystone or endpoint is incomplete', async () => {
    await expect(resolve(undefined, {OS_TOKEN: TOKEN})).rejects.toMatchObject({
      code: 'AUTH_CONFIG_INCOMPLETE',
      message: expect.stringContaining('OS_AUTH_URL'),
    })
  })
})

describe('auth types', () => {
  it('detects an application credential from OS_APPLICATION_CREDENTIAL_SECRET', async () => {
    const s = await resolve(undefined, {
      OS_APPLICATION_CREDENTIAL_ID: 'acid',
      OS_APPLICATION_CREDENTIAL_SECRET: AC_SECRET,
      OS_AUTH_URL: 'http://ks/v3',
    })
    expect(keystoneMethod(s)).toEqual({
      applicationCredential: {id: 'acid', name: undefined, secret: AC_SECRET, user: undefined},
      kind: 'application_credential',
    })
  })

  it('says that an application credential id without its secret file is incomplete', async () => {
    await expect(resolve({applicationCredentialId: 'acid', authUrl: 'http://ks/v3'})).rejects.toMatchObject({
      code: 'AUTH_CONFIG_INCOMPLETE',
      message:
        'the imgcache config (imageService): auth type v3applicationcredential needs imageService.applicationCredentialSecretFile.',
    })
  })

  it('an application credential by name needs its user', async () => {
    await expect(
      resolve(undefined, {
        OS_APPLICATION_CREDENTIAL_NAME: 'n',
        OS_APPLICATION_CREDENTIAL_SECRET: AC_SECRET,
        OS_AUTH_TYPE: 'v3applicationcredential',
        OS_AUTH_URL: 'http://ks/v3',
      }),
    ).rejects.toMatchObject({code: 'AUTH_CONFIG_INCOMPLETE', message: expect.stringContaining('OS_USERNAME')})
    const s = await resolve(undefined, {
      OS_APPLICATION_CREDENTIAL_NAME: 'n',
      OS_APPLICATION_CREDENTIAL_SECRET: AC_SECRET,
      OS_AUTH_URL: 'http://ks/v3',
      OS_USERNAME: 'u',
    })
    expect(keystoneMethod(s)).toMatchObject({
      applicationCredential: {name: 'n', user: {domainId: 'default', name: 'u'}},
    })
  })

  it('names the missing settings, never the values present', async () => {
    await cloudsFile({c: {auth: {auth_url: 'http://ks', password: SECRET}}})
    const error = (await resolve({cloud: 'c'}).then(
      () => new Error('resolved'),
      (error_: unknown) => error_,
    )) as Error
    expect(error).toMatchObject({code: 'AUTH_CONFIG_INCOMPLETE'})
    expect(error.message).toContain('auth.username')
    expect(error.message).toContain('cloud "c"')
    expect(error.message).not.toContain(SECRET)
  })

  it('refuses an auth type it does not know', async () => {
    await cloudsFile({c: {auth: {auth_url: 'http://ks'}, auth_type: 'v3oidcpassword'}})
    await expect(resolve({cloud: 'c'})).rejects.toMatchObject({code: 'AUTH_TYPE_UNSUPPORTED'})
  })

  it('auth_type none needs an endpoint override', async () => {
    await cloudsFile({c: {auth_type: 'none'}, d: {auth_type: 'none', image_endpoint_override: 'http://g:9292/v2'}})
    await expect(resolve({cloud: 'c'})).rejects.toMatchObject({code: 'AUTH_CONFIG_INCOMPLETE'})
    expect(await resolve({cloud: 'd'})).toMatchObject({credentials: {kind: 'none'}, endpoint: 'http://g:9292/v2'})
  })

  it('puts users and projects named without a domain in the default domain (OS_DEFAULT_DOMAIN)', async () => {
    expect(keystoneMethod(await resolve(undefined, passwordEnv))).toMatchObject({
      project: {domainId: 'default', name: 'envproject'},
      user: {domainId: 'default', name: 'bob'},
    })
    expect(keystoneMethod(await resolve(undefined, {...passwordEnv, OS_DEFAULT_DOMAIN: 'corp'}))).toMatchObject({
      user: {domainId: 'corp'},
    })
  })
})

describe('where to go: region, interface, endpoint', () => {
  it("region: OS_REGION_NAME > imageService.region > the cloud's first region", async () => {
    await cloudsFile({c: {...passwordCloud, region_name: undefined, regions: ['R1', 'R2', 'R3']}})
    expect((await resolve({cloud: 'c'}))?.region).toBe('R1')
    expect((await resolve({cloud: 'c', region: 'R2'}))?.region).toBe('R2')
    expect((await resolve({cloud: 'c', region: 'R2'}, {OS_REGION_NAME: 'R3'}))?.region).toBe('R3')
  })

  it('refuses a region the cloud does not list', async () => {
    await cloudsFile({c: passwordCloud})
    await expect(resolve({cloud: 'c'}, {OS_REGION_NAME: 'r1'})).rejects.toMatchObject({code: 'AUTH_CONFIG_INVALID'})
  })

  it("interface: OS_INTERFACE > imageService.interface > the cloud's > public", async () => {
    await cloudsFile({c: {...passwordCloud, interface: 'admin'}, d: passwordCloud})
    expect((await resolve({cloud: 'd'}))?.interface).toBe('public')
    expect((await resolve({cloud: 'c'}))?.interface).toBe('admin')
    expect((await resolve({cloud: 'c', interface: 'internal'}))?.interface).toBe('internal')
    expect((await resolve({cloud: 'c', interface: 'internal'}, {OS_INTERFACE: 'publicURL'}))?.interface).toBe('public')
    await expect(resolve({cloud: 'c'}, {OS_INTERFACE: 'private'})).rejects.toMatchObject({
      code: 'AUTH_CONFIG_INVALID',
      subject: {field: 'OS_INTERFACE'},
    })
  })

  it('endpoint: OS_IMAGE_ENDPOINT_OVERRIDE > imageService.endpoint > image_endpoint_override > catalog', async () => {
    await cloudsFile({c: {...passwordCloud, image_endpoint_override: 'http://cloud-override'}, d: passwordCloud})
    expect(await resolve({cloud: 'd'})).toMatchObject({endpoint: undefined})
    expect(await resolve({cloud: 'c'})).toMatchObject({endpoint: 'http://cloud-override'})
    expect(await resolve({cloud: 'c', endpoint: 'http://cfg'})).toMatchObject({endpoint: 'http://cfg'})
    expect(
      await resolve({cloud: 'c', endpoint: 'http://cfg'}, {OS_IMAGE_ENDPOINT_OVERRIDE: 'http://env'}),
    ).toMatchObject({
      endpoint: 'http://env',
      origin: {endpoint: 'OS_IMAGE_ENDPOINT_OVERRIDE'},
    })
  })

  it('TLS: OS_CACERT, caFile or cacert is read; verify: false and OS_INSECURE turn checks off', async () => {
    await writeFile(path.join(cwd, 'ca.pem'), 'PEM')
    await cloudsFile({c: {...passwordCloud, cacert: 'ca.pem', verify: false}})
    expect(await resolve({cloud: 'c'})).toMatchObject({ca: 'PEM', caFile: 'ca.pem', insecure: true})
    expect(await resolve({endpoint: 'http://g'}, {OS_INSECURE: 'True'})).toMatchObject({insecure: true})
    await expect(resolve({caFile: 'missing.pem', endpoint: 'http://g'})).rejects.toMatchObject({
      code: 'FS_ENOENT',
      subject: {field: 'imageService.caFile'},
    })
  })
})

describe('secret files', () => {
  it('a missing passwordFile names the field and the path', async () => {
    await expect(resolve({authUrl: 'http://ks', passwordFile: 'nope', username: 'u'})).rejects.toMatchObject({
      code: 'FS_ENOENT',
      message: expect.stringContaining(path.join(cwd, 'nope')),
      subject: {field: 'imageService.passwordFile'},
    })
  })

  it('an empty secret file is refused', async () => {
    await writeFile(path.join(cwd, 'empty'), '\n')
    await expect(
      resolve({applicationCredentialId: 'x', applicationCredentialSecretFile: 'empty', authUrl: 'http://ks'}),
    ).rejects.toMatchObject({code: 'SECRET_FILE_EMPTY'})
  })
})

describe('describeAuth', () => {
  it('says where everything came from and never shows a secret', async () => {
    await cloudsFile({c: passwordCloud, t: {auth: {auth_url: 'http://ks', token: TOKEN}, auth_type: 'token'}})
    const withPassword = describeAuth((await resolve({cloud: 'c'}, passwordEnv)) as AuthSettings)
    expect(withPassword).toContain('password of user "alice" (domain Default), project "p1" (domain Default)')
    expect(withPassword).toContain('at Keystone http://ks:5000/v3')
    expect(withPassword).toContain(`clouds.yaml cloud "c" (${path.join(cwd, 'clouds.yaml')})`)
    expect(withPassword).toContain('from the Keystone catalog (interface public, region R1)')
    expect(withPassword).toContain('Ignored: OS_AUTH_URL, OS_PASSWORD, OS_USERNAME (a cloud is selected)')
    const withToken = describeAuth((await resolve({cloud: 't'})) as AuthSettings)
    const withAppCred = describeAuth(
      (await resolve(undefined, {
        OS_APPLICATION_CREDENTIAL_ID: 'acid',
        OS_APPLICATION_CREDENTIAL_SECRET: AC_SECRET,
        OS_AUTH_URL: 'http://ks/v3',
      })) as AuthSettings,
    )
    expect(withAppCred).toContain('application credential acid')
    for (const text of [withPassword, withToken, withAppCred]) {
      expect(text).not.toContain(SECRET)
      expect(text).not.toContain(TOKEN)
      expect(text).not.toContain(AC_SECRET)
    }
  })
})
