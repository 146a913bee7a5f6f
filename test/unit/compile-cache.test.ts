import {chmod, chown, mkdir, mkdtemp, rm, stat, symlink} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {compileCacheDir, isPrivateDir} from '../../src/compile-cache.js'

const home = () => '/home/op'

describe('compileCacheDir: where Node keeps the CLI’s compiled code', () => {
  it.each([
    {env: {}, expected: '/var/cache/imgcache/compile-cache', name: 'root', uid: 0},
    {env: {}, expected: '/home/op/.cache/imgcache/compile-cache', name: 'a user', uid: 1000},
    {env: {XDG_CACHE_HOME: '/xdg'}, expected: '/xdg/imgcache/compile-cache', name: 'XDG_CACHE_HOME', uid: 1000},
    {
      env: {XDG_CACHE_HOME: 'rel'},
      expected: '/home/op/.cache/imgcache/compile-cache',
      name: 'a relative XDG',
      uid: 1000,
    },
    {env: {XDG_CACHE_HOME: '/xdg'}, expected: '/var/cache/imgcache/compile-cache', name: 'root ignores XDG', uid: 0},
    {env: {IMGCACHE_COMPILE_CACHE: '/srv/cc'}, expected: '/srv/cc', name: 'the override', uid: 0},
    {env: {IMGCACHE_COMPILE_CACHE: 'off'}, expected: undefined, name: 'off', uid: 1000},
    {env: {IMGCACHE_COMPILE_CACHE: 'cc'}, expected: undefined, name: 'a relative override', uid: 0},
  ])('$name', ({env, expected, uid}) => {
    expect(compileCacheDir({env, home, uid})).toBe(expected)
  })

  it('a user whose home is not an absolute path gets none', () => {
    expect(compileCacheDir({env: {}, home: () => '', uid: 1000})).toBeUndefined()
  })
})

describe('isPrivateDir: only a directory nobody else can write holds code the CLI runs', () => {
  let root: string
  const uid = process.getuid!()
  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'imgcache-compile-cache-'))
  })
  afterAll(async () => {
    await rm(root, {force: true, recursive: true})
  })

  it('creates a missing directory, 0700, and accepts it', async () => {
    const dir = join(root, 'a', 'b')
    expect(isPrivateDir(dir, uid)).toBe(true)
    expect((await stat(dir)).mode & 0o777).toBe(0o700)
  })

  it('refuses a directory writable by group or others', async () => {
    const dir = join(root, 'open')
    await mkdir(dir)
    await chmod(dir, 0o777)
    expect(isPrivateDir(dir, uid)).toBe(false)
    await chmod(dir, 0o770)
    expect(isPrivateDir(dir, uid)).toBe(false)
    await chmod(dir, 0o755)
    expect(isPrivateDir(dir, uid)).toBe(true)
  })

  it('refuses a link, even to a private directory', async () => {
    const target = join(root, 'target')
    await mkdir(target, {mode: 0o700})
    await symlink(target, join(root, 'link'))
    expect(isPrivateDir(join(root, 'link'), uid)).toBe(false)
  })

  it('refuses a directory another user owns', async () => {
    const dir = join(root, 'theirs')
    await mkdir(dir, {mode: 0o700})
    await chown(dir, uid + 4242, uid + 4242)
    expect(isPrivateDir(dir, uid)).toBe(false)
  })

  it('refuses a file, and a path it cannot create', async () => {
    expect(isPrivateDir('/proc/version', uid)).toBe(false)
    expect(isPrivateDir('/proc/imgcache-no/such', uid)).toBe(false)
  })
})
