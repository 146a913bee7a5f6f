import {createHash} from 'node:crypto'
import {mkdir, mkdtemp, readFile, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import path from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {imageUuid, sha1} from '../fixtures/nova-host.js'
import {type CliResult, runCli} from '../helpers/cli.js'
import {nodeConfigEntry, startNodes, type TestNodes} from '../helpers/nodes.js'
import {payload, sha256} from '../helpers/payload.js'
import {type RecordedRequest, type RedirectServers, startRedirectServers} from '../helpers/redirect-servers.js'

// A token never follows a redirect to another origin (README "Redirects"). An image endpoint that
// redirects (hostile, misconfigured, or a proxy in front of Glance) to another host must not learn
// the X-Auth-Token, whichever mover fetches: the local curl, got (a resume, metadata, --via relay),
// or the curl of an SSH node (--via node). Two test servers (helpers/redirect-servers.ts): `front`
// on 127.0.0.1 redirects, `elsewhere` on 127.0.0.2 records what reaches it. Files are compared by
// digest: vitest's toEqual walks a Buffer byte by byte (about 10 s per MiB on a busy machine).

const TOKEN = 'gAAAAB-redirect-test-token-0123456789'
const SIGNATURE = 'sig-0123456789abcdef'
const MiB = 1024 * 1024
let work: string
let servers: RedirectServers
let fleet: TestNodes
let tokenFile: string

function glanceImage(name: string, data: Buffer) {
  const id = imageUuid(name)
  servers.image({
    data,
    id,
    json: {
      checksum: createHash('md5').update(data).digest('hex'),
      container_format: 'bare',
      disk_format: 'raw',
      id,
      name,
      os_hash_algo: 'sha512',
      os_hash_value: createHash('sha512').update(data).digest('hex'),
      size: data.length,
      status: 'active',
    },
  })
  return id
}

/** Every request `elsewhere` got since `from`, and the proof that none carried a secret. */
function assertNoSecretReached(from: number): RecordedRequest[] {
  const seen = servers.elsewhere.requests.slice(from)
  for (const request of seen) {
    const text = JSON.stringify(request)
    expect(request.headers['x-auth-token'], `${request.method} ${request.url}`).toBeUndefined()
    expect(request.headers.authorization, `${request.method} ${request.url}`).toBeUndefined()
    expect(text).not.toContain(TOKEN)
    expect(text).not.toContain(SIGNATURE)
  }

  return seen
}

async function writeConfig(sub: string, extra: Record<string, unknown> = {}): Promise<{file: string; root: string}> {
  const root = path.join(work, sub)
  const nodes: Record<string, Record<string, number | string>> = {}
  for (const n of fleet.nodes) nodes[n.name] = nodeConfigEntry(n, path.join(n.instancesPath, sub))

  const file = path.join(work, `${sub}.json`)
  await writeFile(
    file,
    JSON.stringify({
      aggregates: {agg: {nodes: fleet.nodes.map((n) => n.name)}},
      imageService: {endpoint: servers.front.url, tokenFile},
      nodes,
      ...extra,
    }),
  )
  return {file, root}
}

function populate(sub: {file: string; root: string}, args: string[]): Promise<CliResult> {
  return runCli(['populate', ...args, '--instances-path', sub.root, '--config', sub.file, '--json'])
}

beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), 'imgcache-e2e-redirect-'))
  tokenFile = path.join(work, 'token')
  await writeFile(tokenFile, `${TOKEN}\n`, {mode: 0o600})
  ;[servers, fleet] = await Promise.all([startRedirectServers(), startNodes(1)])
})

afterAll(async () => {
  await Promise.allSettled([servers?.close(), fleet?.stop()])
  if (work) await rm(work, {force: true, recursive: true})
})

describe('a redirect to another origin', () => {
  it('populate (the local curl): the image is fetched from the other host without the token', async () => {
    const data = payload(61, MiB)
    const id = glanceImage('redirect-local', data)
    const sub = await writeConfig('local')
    const from = servers.elsewhere.requests.length
    const result = await populate(sub, [id])
    expect(result.stderr).toBe('')
    expect(result.exitCode).toBe(0)
    expect(sha256(await readFile(path.join(sub.root, '_base', sha1(id))))).toBe(sha256(data))
    // the redirect was followed, and the token went to the image endpoint only
    expect(assertNoSecretReached(from).filter((r) => r.url === `/bytes/${id}`).length).toBeGreaterThan(0)
    expect(servers.front.requests.some((r) => r.headers['x-auth-token'] === TOKEN)).toBe(true)
  })

  it('a resumed download (got, with Range) goes there without the token', async () => {
    const data = payload(62, MiB)
    const id = glanceImage('redirect-resume', data)
    const sub = await writeConfig('resume')
    await mkdir(path.join(sub.root, '_base'), {recursive: true})
    await writeFile(path.join(sub.root, '_base', `${sha1(id)}.part`), data.subarray(0, 300 * 1024))
    const from = servers.elsewhere.requests.length
    const result = await populate(sub, [id])
    expect(result.stderr).toBe('')
    expect(result.exitCode).toBe(0)
    expect(result.json).toMatchObject({items: [{resumedFrom: 300 * 1024, status: 'cached'}]})
    expect(sha256(await readFile(path.join(sub.root, '_base', sha1(id))))).toBe(sha256(data))
    const ranged = assertNoSecretReached(from).filter((r) => r.headers.range === `bytes=${300 * 1024}-`)
    expect(ranged.length).toBeGreaterThan(0)
  })

  it('image metadata (an API request with the token) is read there without the token', async () => {
    const data = payload(63, 256 * 1024)
    const id = glanceImage('redirect-metadata', data)
    const sub = await writeConfig('metadata')
    const from = servers.elsewhere.requests.length
    servers.mode.redirectMetadata = true
    try {
      const result = await populate(sub, [id])
      expect(result.stderr).toBe('')
      expect(result.exitCode).toBe(0)
    } finally {
      servers.mode.redirectMetadata = false
    }

    expect(assertNoSecretReached(from).some((r) => r.url === `/v2/images/${id}`)).toBe(true)
  })

  it('a URL source: neither its password nor its signed query reach the other host', async () => {
    const data = payload(64, 256 * 1024)
    const id = glanceImage('redirect-url', data)
    const front = new URL(servers.front.url)
    const url = `http://user:pass-${SIGNATURE}@${front.host}/signed/${id}?signature=${SIGNATURE}`
    const sub = await writeConfig('url', {
      images: {signed: {checksum: `sha256:${createHash('sha256').update(data).digest('hex')}`, id, url}},
    })
    const from = servers.elsewhere.requests.length
    const result = await populate(sub, ['signed'])
    expect(result.stderr).toBe('')
    expect(result.exitCode).toBe(0)
    expect(assertNoSecretReached(from).some((r) => r.url === `/bytes/${id}`)).toBe(true)
  })

  it.each(['node', 'relay'])('precache --via %s: the other host never sees the token', async (via) => {
    const data = payload(65, MiB)
    const id = glanceImage(`redirect-via-${via}`, data)
    const sub = await writeConfig(`via-${via}`)
    await mkdir(path.join(work, `spool-${via}`), {recursive: true})
    const from = servers.elsewhere.requests.length
    const result = await runCli([
      'precache',
      '--aggregate',
      'agg',
      '--via',
      via,
      '--config',
      sub.file,
      '--spool-dir',
      path.join(work, `spool-${via}`),
      '--json',
      id,
    ])
    expect(result.stderr).toBe('')
    expect(result.exitCode).toBe(0)
    const node = fleet.nodes[0]!
    expect(sha256(await readFile(path.join(node.instancesPath, `via-${via}`, '_base', sha1(id))))).toBe(sha256(data))
    expect(assertNoSecretReached(from).some((r) => r.url === `/bytes/${id}`)).toBe(true)
  })

  it('a redirect loop ends with a clear error naming the image, and leaves no file', async () => {
    const id = glanceImage('redirect-loop', payload(66, 64 * 1024))
    const sub = await writeConfig('loop')
    servers.mode.loop = true
    let result: CliResult
    try {
      result = await populate(sub, [id])
    } finally {
      servers.mode.loop = false
    }

    expect(result.exitCode).toBe(1)
    const error = JSON.stringify(result.json)
    expect(error).toContain(id)
    expect(error).toMatch(/redirect/i)
    expect(error).not.toContain(TOKEN)
    expect(await readFile(path.join(sub.root, '_base', sha1(id))).catch(() => undefined)).toBeUndefined()
  })
})
