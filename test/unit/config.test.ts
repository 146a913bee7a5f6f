import {mkdtemp, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterEach, beforeEach, describe, expect, it} from 'vitest'

import {loadConfig} from '../../src/lib/config/load.js'
import {UsageError} from '../../src/lib/errors.js'
import {selectNodes} from '../../src/lib/nodes.js'

describe('config loading and validation', () => {
  let dir: string
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'imgc-conf-'))
  })
  afterEach(async () => {
    await rm(dir, {force: true, recursive: true})
  })

  const env = () => ({HOME: dir, XDG_CONFIG_HOME: join(dir, 'xdg')})

  it('loads the design card example from an explicit path, with durations in seconds', async () => {
    const file = join(dir, 'imgcache.yaml')
    await writeFile(
      file,
      `imageService: { cloud: prod }
defaults: { instancesPath: /var/lib/nova/instances, ssh: { user: root }, lockTimeout: 90s }
nodes:
  cmp-01: { host: 10.0.0.11 }
  cmp-02: { host: cmp-02.example.net, port: 2222 }
aggregates:
  prod-web: { nodes: [cmp-01, cmp-02], images: [ubuntu-24.04] }
prune: { minAge: 12h }
`,
    )
    const {config, filepath} = await loadConfig({cwd: dir, env: env(), path: file})
    expect(filepath).toBe(file)
    expect(config.defaults?.lockTimeout).toBe(90)
    expect(config.prune?.minAge).toBe(43_200)
    expect(config.nodes?.['cmp-02']).toEqual({host: 'cmp-02.example.net', port: 2222})
  })

  it('finds .imgcacherc in the current directory, then the user config dir', async () => {
    expect((await loadConfig({cwd: dir, env: env()})).filepath).toBeUndefined()
    await writeFile(join(dir, '.imgcacherc'), 'prune: {minAge: 60}\n')
    expect((await loadConfig({cwd: dir, env: env()})).config.prune?.minAge).toBe(60)
    const other = await mkdtemp(join(tmpdir(), 'imgc-cwd-'))
    try {
      const {mkdir} = await import('node:fs/promises')
      await mkdir(join(dir, 'xdg', 'imgcache'), {recursive: true})
      await writeFile(join(dir, 'xdg', 'imgcache', 'config.yaml'), 'prune: {minAge: 120}\n')
      expect((await loadConfig({cwd: other, env: env()})).config.prune?.minAge).toBe(120)
    } finally {
      await rm(other, {force: true, recursive: true})
    }
  })

  it('IMGCACHE_CONFIG names the file when --config does not', async () => {
    const file = join(dir, 'x.yaml')
    await writeFile(file, 'prune: {resizedMinAge: 5m}\n')
    expect((await loadConfig({cwd: dir, env: {...env(), IMGCACHE_CONFIG: file}})).config.prune?.resizedMinAge).toBe(300)
  })

  it('names the file, every key path and what was expected', async () => {
    const file = join(dir, 'bad.yaml')
    await writeFile(file, 'nodes:\n  cmp-01: { host: a, port: "22x" }\nprune: { minAge: soon }\nbogus: 1\n')
    const error = await loadConfig({env: env(), path: file}).catch((error_: unknown) => error_)
    expect(error).toBeInstanceOf(UsageError)
    const e = error as UsageError
    expect(e.exitCode).toBe(2)
    expect(e.code).toBe('CONFIG_INVALID')
    expect(e.subject.file).toBe(file)
    expect(e.message).toContain(`invalid configuration in ${file}`)
    expect(e.message).toContain('nodes.cmp-01.port: expected number, got string')
    expect(e.message).toContain('prune.minAge: expected a duration')
    expect(e.message).toContain('(top level): unknown key bogus')
  })

  it('refuses an alias whose id is not a Glance image id (a UUID), unless fetch.imageIds is any', async () => {
    const file = join(dir, 'ids.yaml')
    const aliases = `images:
  good: { id: 3C1E2F4A-5B6C-4D7E-8F90-A1B2C3D4E5F6, path: /srv/good.raw }
  bad: { id: ubuntu-jammy, path: /srv/bad.raw }
`
    await writeFile(file, aliases)
    const error = await loadConfig({env: env(), path: file}).catch((error_: unknown) => error_)
    expect(error).toMatchObject({code: 'CONFIG_INVALID', exitCode: 2, subject: {field: 'images.bad.id', file}})
    expect((error as UsageError).message).toContain('images.bad.id: "ubuntu-jammy" is not a Glance image id')
    expect((error as UsageError).message).toContain('fetch.imageIds: any')
    expect((error as UsageError).message).not.toContain('images.good')

    await writeFile(file, `fetch: { imageIds: any }\n${aliases}`)
    expect((await loadConfig({env: env(), path: file})).config.images?.bad?.id).toBe('ubuntu-jammy')
    await writeFile(file, 'fetch: { imageIds: some }\n')
    await expect(loadConfig({env: env(), path: file})).rejects.toMatchObject({code: 'CONFIG_INVALID'})
  })

  it('refuses to turn host-key checking off from the config', async () => {
    const file = join(dir, 'ssh.yaml')
    await writeFile(file, 'defaults: { ssh: { strictHostKeyChecking: "no" } }\n')
    await expect(loadConfig({env: env(), path: file})).rejects.toThrow(
      /defaults.ssh.strictHostKeyChecking: expected "yes" or "accept-new"/,
    )
  })

  it('an explicit config file that does not exist is an error', async () => {
    await expect(loadConfig({env: env(), path: join(dir, 'nope.yaml')})).rejects.toThrow(
      /config file .*nope.yaml does not exist/,
    )
  })

  it('YAML that does not parse names the file', async () => {
    const file = join(dir, 'broken.yaml')
    await writeFile(file, 'nodes: [unclosed\n')
    await expect(loadConfig({env: env(), path: file})).rejects.toThrow(new RegExp(`config file ${file}`))
  })
})

describe('node selection', () => {
  const config = {
    aggregates: {broken: {nodes: ['cmp-01', 'ghost']}, web: {nodes: ['cmp-01', 'cmp-02']}},
    nodes: {'cmp-01': {host: '10.0.0.11'}, 'cmp-02': {host: 'cmp-02', port: 2222}, here: {instancesPath: '/x'}},
  }

  it('defaults to the local host', () => {
    expect(selectNodes({}, {})).toEqual([{kind: 'local', name: 'local'}])
  })

  it('takes config names, local, ssh:// URLs and aggregates, without duplicates', () => {
    expect(
      selectNodes(config, {aggregate: 'web', nodes: ['cmp-01', 'local', 'ssh://admin@10.1.2.3:2200', 'here']}).map(
        (s) => [s.name, s.kind],
      ),
    ).toEqual([
      ['cmp-01', 'ssh'],
      ['local', 'local'],
      ['ssh://admin@10.1.2.3:2200', 'ssh'],
      ['here', 'local'],
      ['cmp-02', 'ssh'],
    ])
    expect(selectNodes(config, {nodes: ['ssh://admin@10.1.2.3:2200']})[0]?.config).toEqual({
      host: '10.1.2.3',
      port: 2200,
      user: 'admin',
    })
  })

  it('an unknown node or aggregate is a usage error listing the known ones', () => {
    expect(() => selectNodes(config, {nodes: ['cmp-09']})).toThrow(
      'unknown node "cmp-09"; known nodes: local, cmp-01, cmp-02, here',
    )
    expect(() => selectNodes(config, {aggregate: 'db'})).toThrow(
      'unknown aggregate "db"; known aggregates: broken, web',
    )
    expect(() => selectNodes(config, {aggregate: 'broken'})).toThrow(/aggregate broken names node "ghost"/)
    expect(() => selectNodes(config, {nodes: ['ssh://host:99999']})).toThrow(UsageError)
  })
})
