import {mkdtemp, readdir, readFile, rm, stat, symlink, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import path from 'node:path'
import {Readable} from 'node:stream'
import {afterEach, beforeEach, describe, expect, it} from 'vitest'

import {SpoolSet} from '../../src/lib/fetch/spool.js'

let dir: string
beforeEach(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'imgcache-spool-test-'))
})
afterEach(async () => {
  await rm(dir, {force: true, recursive: true})
})

const image = {id: '0d5e6b61-0000-4000-8000-000000000000', size: 4, source: 'file' as const, status: 'active'}
const open = async () => ({offset: 0, stream: Readable.from([Buffer.from('abcd')]), totalSize: 4})

describe('the relay spool (DESIGN §10: nothing predictable in a shared /tmp)', () => {
  it('lives in a private directory of its own, made with mkdtemp, 0700, with files 0600; dispose removes it', async () => {
    // Links planted at every name the old scheme used (imgcache-spool-<pid>-<id>) steer nothing.
    const victim = path.join(dir, 'victim')
    await writeFile(victim, 'root-only')
    await symlink(victim, path.join(dir, `imgcache-spool-${process.pid}-${image.id}`))
    const spools = new SpoolSet(dir)
    const spool = spools.get(image, open, undefined, [])
    expect((await spool.result()).bytes).toBe(4)
    const privateDir = path.dirname(spool.path)
    expect(path.dirname(privateDir)).toBe(dir)
    expect(path.basename(privateDir)).toMatch(/^imgcache-spool-\w{6}$/)
    expect((await stat(privateDir)).mode & 0o777).toBe(0o700)
    expect((await stat(spool.path)).mode & 0o777).toBe(0o600)
    await spools.dispose()
    expect((await readdir(dir)).sort()).toEqual([`imgcache-spool-${process.pid}-${image.id}`, 'victim'])
    expect(await readFile(victim, 'utf8')).toBe('root-only')
  })
})
