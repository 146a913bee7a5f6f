/**
 * Messages that blame the right thing (issue 13, point 6): the built CLI on local hosts made of real
 * directories, real qemu-img images, a real oslo.concurrency lock standing in for nova-compute.
 */
import {execa} from 'execa'
import {createHash} from 'node:crypto'
import {mkdtemp, readFile, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {imageUuid, sha1} from '../fixtures/nova-host.js'
import {flat, runCli} from '../helpers/cli.js'
import {contents, exists} from '../helpers/files.js'

let work: string
let image: string
let checksum: string
let counter = 0

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'imgc-e2e-messages-'))
  image = join(work, 'cirros.qcow2')
  await execa('qemu-img', ['create', '-q', '-f', 'qcow2', image, '16M'])
  checksum = `sha256:${createHash('sha256')
    .update(await readFile(image))
    .digest('hex')}`
})
afterAll(async () => {
  await rm(work, {force: true, recursive: true})
})

/** A fresh instances path (not created yet) under the work dir. */
function instancesPath(): string {
  return join(work, `host-${++counter}`, 'instances')
}

async function writeConfig(text: string): Promise<string> {
  const file = join(work, `config-${++counter}.yaml`)
  await writeFile(file, text)
  return file
}

describe('image ids given as ids are Glance image ids (UUIDs)', () => {
  it('--image-id not-a-uuid is exit 2 naming the id and what an id looks like; nothing is created', async () => {
    const root = instancesPath()
    const result = await runCli([
      'populate',
      image,
      '--image-id',
      'not-a-uuid',
      '--checksum',
      checksum,
      '--instances-path',
      root,
    ])
    expect(result.exitCode).toBe(2)
    const stderr = flat(result.stderr)
    expect(stderr).toContain('--image-id: "not-a-uuid" is not a Glance image id')
    expect(stderr).toContain('UUIDs (8-4-4-4-12 hex digits')
    expect(stderr).toContain('fetch.imageIds: any')
    expect(result.stdout).toBe('')
    expect(await exists(root)).toBe(false)
  })

  it('a UUID is taken, and fetch.imageIds: any in the config lets any id through', async () => {
    const root = instancesPath()
    const id = imageUuid('cirros')
    const ok = await runCli(['populate', image, '--image-id', id, '--checksum', checksum, '--instances-path', root])
    expect(ok.exitCode, ok.stderr).toBe(0)
    expect(await contents(join(root, '_base'))).toContain(sha1(id))

    const config = await writeConfig('fetch: {imageIds: any}\n')
    const any = await runCli([
      'populate',
      image,
      '--image-id',
      'not-a-uuid',
      '--checksum',
      checksum,
      '--instances-path',
      root,
      '--config',
      config,
    ])
    expect(any.exitCode, any.stderr).toBe(0)
    expect(await contents(join(root, '_base'))).toContain(sha1('not-a-uuid'))
  })

  it("a config alias's id is checked when the config is read: exit 2 naming the file and key", async () => {
    const config = await writeConfig(`images:\n  cirros: {id: cirros-0.6, path: ${image}, checksum: "${checksum}"}\n`)
    const root = instancesPath()
    const result = await runCli(['populate', 'cirros', '--instances-path', root, '--config', config])
    expect(result.exitCode).toBe(2)
    expect(flat(result.stderr)).toContain(`invalid configuration in ${config}`)
    expect(flat(result.stderr)).toContain('images.cirros.id: "cirros-0.6" is not a Glance image id')
    expect(await exists(root)).toBe(false)
  })
})
