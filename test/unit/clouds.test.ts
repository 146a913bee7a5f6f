import {existsSync} from 'node:fs'
import {mkdir, mkdtemp, rm, writeFile} from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import {afterEach, beforeEach, describe, expect, it} from 'vitest'
import {stringify} from 'yaml'

import {
  cloudsFileCandidates,
  configSearchDirs,
  findCloud,
  mergeClouds,
  normalizeCloud,
} from '../../src/lib/config/clouds.js'

let root: string
let cwd: string
let home: string
let xdgDirs: string

beforeEach(async () => {
  root = await mkdtemp(path.join(os.tmpdir(), 'imgcache-clouds-'))
  cwd = path.join(root, 'cwd')
  home = path.join(root, 'home')
  xdgDirs = path.join(root, 'xdg')
  await Promise.all([cwd, home, xdgDirs].map((d) => mkdir(d, {recursive: true})))
})

afterEach(async () => {
  await rm(root, {force: true, recursive: true})
})

/** A location that cannot see this machine's own clouds files (except /etc/openstack). */
function at(env: NodeJS.ProcessEnv = {}) {
  return {cwd, env: {XDG_CONFIG_DIRS: xdgDirs, ...env}, home}
}

async function put(file: string, data: unknown): Promise<string> {
  await mkdir(path.dirname(file), {recursive: true})
  await writeFile(file, file.endsWith('.json') ? JSON.stringify(data) : stringify(data))
  return file
}

const cloud = (username: string) => ({auth: {auth_url: 'http://ks:5000/v3', password: 'pw', username}})
const noSiteClouds = !existsSync('/etc/openstack/clouds.yaml') && !existsSync('/etc/openstack/clouds.yml')

describe('search path', () => {
  it("is openstacksdk's: cwd, user config dirs, site config dirs, /etc/openstack", () => {
    expect(configSearchDirs({cwd: '/w', env: {}, home: '/h'})).toEqual([
      '/w',
      '/h/.config/openstack',
      '/etc/xdg/openstack',
      '/etc/openstack',
    ])
    expect(configSearchDirs({cwd: '/w', env: {XDG_CONFIG_DIRS: '/a:/b', XDG_CONFIG_HOME: '/x'}, home: '/h'})).toEqual([
      '/w',
      '/x/openstack',
      '/h/.config/openstack',
      '/a/openstack',
      '/b/openstack',
      '/etc/openstack',
    ])
  })

  it('tries .yaml, .yml and .json in each directory, OS_CLIENT_CONFIG_FILE first', () => {
    const files = cloudsFileCandidates('clouds', {cwd: '/w', env: {OS_CLIENT_CONFIG_FILE: 'mine.yaml'}, home: '/h'})
    expect(files.slice(0, 5)).toEqual([
      '/w/mine.yaml',
      '/w/clouds.yaml',
      '/w/clouds.yml',
      '/w/clouds.json',
      '/h/.config/openstack/clouds.yaml',
    ])
    const secure = cloudsFileCandidates('secure', {cwd: '/w', env: {OS_CLIENT_SECURE_FILE: '/s.yaml'}, home: '/h'})
    expect(secure.slice(0, 2)).toEqual(['/s.yaml', '/w/secure.yaml'])
  })

  it('reads the current directory before ~/.config/openstack', async () => {
    await put(path.join(home, '.config/openstack/clouds.yaml'), {clouds: {c: cloud('from-home')}})
    await put(path.join(cwd, 'clouds.yaml'), {clouds: {c: cloud('from-cwd')}})
    expect((await findCloud('c', at()))?.auth.username).toBe('from-cwd')
  })

  it('reads ~/.config/openstack/clouds.yml when nothing is in the current directory', async () => {
    const file = await put(path.join(home, '.config/openstack/clouds.yml'), {clouds: {c: cloud('from-home')}})
    const found = await findCloud('c', at())
    expect(found).toMatchObject({file, name: 'c'})
    expect(found?.auth.username).toBe('from-home')
  })

  it('honours XDG_CONFIG_HOME and the site dirs of XDG_CONFIG_DIRS', async () => {
    await put(path.join(xdgDirs, 'openstack/clouds.json'), {clouds: {c: cloud('from-site')}})
    expect((await findCloud('c', at()))?.auth.username).toBe('from-site')
    const xdgHome = path.join(root, 'xdg-home')
    await put(path.join(xdgHome, 'openstack/clouds.yaml'), {clouds: {c: cloud('from-xdg-home')}})
    expect((await findCloud('c', at({XDG_CONFIG_HOME: xdgHome})))?.auth.username).toBe('from-xdg-home')
  })

  it('reads OS_CLIENT_CONFIG_FILE before the search path', async () => {
    await put(path.join(cwd, 'clouds.yaml'), {clouds: {c: cloud('from-cwd')}})
    const other = await put(path.join(root, 'other.yaml'), {clouds: {c: cloud('from-override')}})
    expect((await findCloud('c', at({OS_CLIENT_CONFIG_FILE: other})))?.auth.username).toBe('from-override')
  })

  it('falls back to the search path when OS_CLIENT_CONFIG_FILE does not exist, as openstacksdk', async () => {
    await put(path.join(cwd, 'clouds.yaml'), {clouds: {c: cloud('from-cwd')}})
    const found = await findCloud('c', at({OS_CLIENT_CONFIG_FILE: path.join(root, 'missing.yaml')}))
    expect(found?.auth.username).toBe('from-cwd')
  })

  it('reads only an explicit cloudsFile, and says so when it is missing', async () => {
    await put(path.join(cwd, 'clouds.yaml'), {clouds: {c: cloud('from-cwd')}})
    await expect(findCloud('c', {...at(), cloudsFile: 'nope.yaml'})).rejects.toMatchObject({
      code: 'CLOUDS_FILE_MISSING',
      subject: {field: 'imageService.cloudsFile', file: path.join(cwd, 'nope.yaml')},
    })
  })
})

describe('secure.yaml', () => {
  it('is deep-merged over clouds.yaml', async () => {
    await put(path.join(cwd, 'clouds.yaml'), {
      clouds: {c: {auth: {auth_url: 'http://ks/v3', username: 'u'}, region_name: 'R1'}},
    })
    const secure = await put(path.join(home, '.config/openstack/secure.yaml'), {
      clouds: {c: {auth: {password: 'from-secure'}}},
    })
    const found = await findCloud('c', at())
    expect(found?.auth).toEqual({auth_url: 'http://ks/v3', password: 'from-secure', username: 'u'})
    expect(found?.regions).toEqual(['R1'])
    expect(found?.secureFile).toBe(secure)
  })

  it('is found through OS_CLIENT_SECURE_FILE and wins over clouds.yaml', async () => {
    await put(path.join(cwd, 'clouds.yaml'), {clouds: {c: cloud('u')}})
    const secure = await put(path.join(root, 's.yaml'), {clouds: {c: {auth: {password: 'secure-wins'}}}})
    expect((await findCloud('c', at({OS_CLIENT_SECURE_FILE: secure})))?.auth.password).toBe('secure-wins')
  })

  it('mergeClouds replaces scalars and lists, merges mappings', () => {
    expect(mergeClouds({a: {b: 1, c: [1]}, d: 1}, {a: {c: [2], e: 3}, d: {x: 1}})).toEqual({
      a: {b: 1, c: [2], e: 3},
      d: {x: 1},
    })
  })
})

describe('choosing a cloud', () => {
  it('names the file and its clouds when the cloud is not there', async () => {
    const file = await put(path.join(cwd, 'clouds.yaml'), {clouds: {a: cloud('a'), b: cloud('b')}})
    await expect(findCloud('prod', {...at(), nameOrigin: 'OS_CLOUD'})).rejects.toMatchObject({
      code: 'CLOUD_NOT_FOUND',
      message: `Cloud "prod" (from OS_CLOUD) is not defined in ${file} (it defines "a", "b").`,
    })
  })

  it.skipIf(!noSiteClouds)('lists where it looked when there is no clouds file at all', async () => {
    const error = await findCloud('prod', at()).catch((error_: unknown) => error_ as Error)
    expect(error).toMatchObject({code: 'CLOUD_NOT_FOUND'})
    expect((error as Error).message).toContain(path.join(cwd, 'clouds.yaml'))
    expect((error as Error).message).toContain(path.join(home, '.config/openstack/clouds.yaml'))
  })

  it('takes the only cloud when none is named, as openstacksdk', async () => {
    await put(path.join(cwd, 'clouds.yaml'), {clouds: {only: cloud('u')}})
    expect(await findCloud(undefined, at())).toMatchObject({implicit: true, name: 'only'})
  })

  it('takes none when several clouds exist and none is named', async () => {
    await put(path.join(cwd, 'clouds.yaml'), {clouds: {a: cloud('a'), b: cloud('b')}})
    expect(await findCloud(undefined, at())).toBeUndefined()
  })

  it('names the file when it is not YAML', async () => {
    const file = path.join(cwd, 'clouds.yaml')
    await writeFile(file, 'clouds: [unclosed\n')
    await expect(findCloud('c', at())).rejects.toMatchObject({
      code: 'CLOUDS_FILE_INVALID',
      message: expect.stringContaining(file),
    })
  })

  it.each([
    ['clouds.json', '{"clouds": {"c": {"auth": {"password": hunter2sec}}}}', 'JSON: a syntax error'],
    ['clouds.json', '{"clouds": {"c": {"auth": {"password": "hunter2sec",}}}}', 'JSON: a syntax error at position 52'],
    ['clouds.yaml', 'clouds:\n  c:\n    auth:\n      password: *hunter2sec\n', 'YAML: a syntax error'],
    [
      'clouds.yaml',
      'clouds:\n  c:\n    auth:\n      password: "\\xhunter2sec"\n',
      'YAML: a syntax error at line 4, column 18',
    ],
  ])('says where a %s is broken, never what it holds there: %s', async (name, text, where) => {
    // The parsers quote the text around an error (JSON.parse a snippet, yaml an alias or an escape): here, a password.
    const file = path.join(cwd, name)
    await writeFile(file, text)
    const error = (await findCloud('c', at()).catch((error_: unknown) => error_)) as Error
    expect(error).toMatchObject({code: 'CLOUDS_FILE_INVALID', message: `${file} is not valid ${where}`})
    expect(error.message).not.toContain('hunter2')
  })
})

describe('normalizeCloud', () => {
  const files = {file: '/f'}

  it('accepts dashes, old aliases, top-level auth keys and endpoint_type', () => {
    const c = normalizeCloud(
      'x',
      {
        auth: {'auth-url': 'http://ks/v3', 'tenant-name': 'proj'},
        auth_plugin: 'v3password',
        endpoint_type: 'internalURL',
        password: 'pw',
        'region-name': 'R1,R2',
        'user-domain-name': 'D',
        username: 'u',
      },
      files,
    )
    expect(c).toMatchObject({
      auth: {auth_url: 'http://ks/v3', password: 'pw', project_name: 'proj', user_domain_name: 'D', username: 'u'},
      authType: 'v3password',
      interface: 'internal',
      regions: ['R1', 'R2'],
      verify: true,
    })
  })

  it('spreads domain_name over user and project domains for a project-scoped cloud', () => {
    const c = normalizeCloud('x', {auth: {domain_name: 'D', project_name: 'p', user_domain_name: 'U'}}, files)
    expect(c.auth).toEqual({project_domain_name: 'D', project_name: 'p', user_domain_name: 'U'})
  })

  it('reads regions lists, verify and insecure, and defaults auth_type to password', () => {
    expect(normalizeCloud('x', {regions: ['A', {name: 'B'}], verify: false}, files)).toMatchObject({
      authType: 'password',
      regions: ['A', 'B'],
      verify: false,
    })
    expect(normalizeCloud('x', {insecure: true}, files).verify).toBe(false)
    expect(normalizeCloud('x', {auth: {project_id: 42}, cacert: '/ca.pem'}, files)).toMatchObject({
      auth: {project_id: '42'},
      cacert: '/ca.pem',
    })
  })
})
