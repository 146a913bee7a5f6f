import {execa, type ResultPromise} from 'execa'
import {mkdir, mkdtemp, open, readdir, readFile, readlink, rename, rm, stat, utimes, writeFile} from 'node:fs/promises'
import {type AddressInfo, createServer, type Socket} from 'node:net'
import {tmpdir} from 'node:os'
import path from 'node:path'
import {afterAll, beforeAll, describe, expect, it, onTestFinished} from 'vitest'

import type {InspectReport} from '../../src/commands/inspect.js'
import type {PopulateReport} from '../../src/commands/populate.js'

import {shellCommand} from '../../src/lib/node/quote.js'
import {overlayTemporary} from '../../src/lib/overlay.js'
import {imageUuid, libvirtXml, sha1} from '../fixtures/nova-host.js'
import {watchArgvs} from '../helpers/argv-watch.js'
import {BIN, type CliResult, runCli, spawnCli} from '../helpers/cli.js'
import {contents, exists, sizeOf, until} from '../helpers/files.js'
import {type GlanceHandle, type GlanceImageJson, startGlance} from '../helpers/glance.js'
import {type CorpusName, makeImageCorpus} from '../helpers/image-corpus.js'
import {type ImageServer, startImageServer} from '../helpers/image-server.js'
import {holdOsloLock, osloSees} from '../helpers/oslo-lock.js'
import {payload, sha256, sparsePayload} from '../helpers/payload.js'

// bin/run.js populate / overlay as an operator runs them: exit codes, --json, files on disk. One
// glance-api for the file (its data dir is ours, so that it can be killed and started again), a
// small HTTP server for slow downloads, and real oslo.concurrency locks.

const MiB = 1024 * 1024
/** Image ids of config aliases whose bases the tests plant by hand. */
const ALIAS_ID = imageUuid('e2e-alias-image')
const BIG_ID = imageUuid('e2e-big')
let work: string
let glanceDir: string
let glance: GlanceHandle
let server: ImageServer
let config: string
const aliases: Record<string, {checksum: string; diskFormat: string; id: string; url: string}> = {}

interface ErrorJson {
  error: {code: string; message: string; suggestions: string[]}
  status: number
}

async function writeConfig(): Promise<void> {
  await writeFile(config, JSON.stringify({images: aliases, imageService: {endpoint: glance.url}}))
}

/** Serve `data` at /<name> and name it in the config (images: alias with url, checksum and id). */
async function alias(name: string, data: Buffer, options: {ranges?: boolean; rate?: number} = {}): Promise<string> {
  server.serve(`/${name}`, {data, ...options})
  aliases[name] = {
    checksum: `sha256:${sha256(data)}`,
    diskFormat: 'raw',
    id: imageUuid(name),
    url: server.url(`/${name}`),
  }
  await writeConfig()
  return aliases[name].id
}

function instances(name: string) {
  const root = path.join(work, name)
  const cacheDir = path.join(root, '_base')
  return {
    cacheDir,
    final: (id: string) => path.join(cacheDir, sha1(id)),
    lock: (id: string) => path.join(root, 'locks', `nova-${sha1(id)}`),
    lockDir: path.join(root, 'locks'),
    part: (id: string) => path.join(cacheDir, `${sha1(id)}.part`),
    root,
  }
}

function cli(command: 'overlay' | 'populate', root: string, args: string[]): Promise<CliResult> {
  return runCli([command, ...args, '--instances-path', root, '--config', config, '--json'])
}

/** The CLI as a process of its own group (what a terminal's Ctrl-C reaches), not awaited; killed when the test ends. */
function spawnPopulate(root: string, args: string[], json = true): ResultPromise {
  return spawnCli(['populate', ...args, '--instances-path', root, '--config', config, ...(json ? ['--json'] : [])], {
    detached: true,
  })
}

function parse<T>(stdout: unknown): T {
  return JSON.parse(String(stdout)) as T
}

async function glanceDownloads(id: string): Promise<number> {
  const log = await readFile(path.join(glanceDir, 'glance-api.log'), 'utf8')
  return log.split('\n').filter((line) => line.includes(`"GET /v2/images/${id}/file `)).length
}

async function qemuInfo(file: string): Promise<Record<string, unknown>> {
  return JSON.parse((await execa('qemu-img', ['info', '-U', '--output=json', file])).stdout) as Record<string, unknown>
}

let corpusIds: Record<string, string>
let qcow2: GlanceImageJson
let raw: GlanceImageJson
const rawContent = payload(11, 2 * MiB + 512)

const UNSAFE: Array<{code: string; fragment: string; name: CorpusName}> = [
  {code: 'IMAGE_UNSAFE', fragment: 'backing_file', name: 'qcow2-backing-file'},
  {code: 'IMAGE_UNSAFE', fragment: 'external data file', name: 'qcow2-data-file'},
  {code: 'IMAGE_UNSAFE', fragment: 'extended_l2', name: 'qcow2-extended-l2'},
  {code: 'IMAGE_UNSAFE', fragment: 'QED images are never allowed', name: 'qed'},
  {code: 'IMAGE_UNSAFE', fragment: '"monolithicFlat"', name: 'vmdk-monolithic-flat'},
  {code: 'IMAGE_UNSAFE', fragment: '"twoGbMaxExtentSparse"', name: 'vmdk-two-gb-max-extent-sparse'},
  {code: 'IMAGE_UNSAFE', fragment: 'Unsupported subformat', name: 'vmdk-extent-etc-hosts'},
  {code: 'IMAGE_UNSAFE', fragment: 'Multiple formats detected', name: 'iso-with-qcow2-header'},
  {code: 'FORMAT_MISMATCH', fragment: 'declared qcow2 but the content is raw', name: 'raw-declared-qcow2'},
  {code: 'FORMAT_MISMATCH', fragment: 'declared raw but the content is qcow2', name: 'qcow2-declared-raw'},
]
const SAFE: CorpusName[] = [
  'qcow2-v3',
  'qcow2-v2',
  'vmdk-monolithic-sparse',
  'vmdk-stream-optimized',
  'vhd',
  'vhdx',
  'vdi',
  'raw',
  'iso',
  'gpt',
]

beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), 'imgcache-e2e-populate-'))
  glanceDir = path.join(work, 'glance')
  config = path.join(work, 'imgcache.yaml')
  let corpus: Awaited<ReturnType<typeof makeImageCorpus>>
  ;[glance, server, corpus] = await Promise.all([
    startGlance({dir: glanceDir}),
    startImageServer(),
    makeImageCorpus(path.join(work, 'corpus')),
  ])
  await writeConfig()
  const qcow2File = path.join(work, 'content.qcow2')
  await writeFile(path.join(work, 'content.raw'), payload(10, 3 * MiB))
  await execa('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', path.join(work, 'content.raw'), qcow2File])
  const ids: Record<string, string> = {}
  await Promise.all([
    glance.uploadImage({diskFormat: 'qcow2', file: qcow2File, name: 'e2e-qcow2'}).then((image) => {
      qcow2 = image
    }),
    glance.uploadImage({data: rawContent, diskFormat: 'raw', name: 'e2e-raw'}).then((image) => {
      raw = image
    }),
    ...[...UNSAFE.map((u) => u.name), ...SAFE].map(async (name) => {
      // Glance has no qed disk_format; the inspector refuses QED whatever it is declared as.
      const declared = name === 'qed' ? 'qcow2' : corpus[name].declared
      ids[name] = (await glance.uploadImage({diskFormat: declared, file: corpus[name].path, name})).id
    }),
  ])
  corpusIds = ids
})

afterAll(async () => {
  await server?.close()
  await glance?.stop()
  if (work) await rm(work, {force: true, recursive: true})
})

describe('imgcache populate', () => {
  it('fetches a qcow2 from Glance by name into raw; existing (touched) on the next run; --force fetches again', async () => {
    const host = instances('happy')
    const first = await cli('populate', host.root, ['e2e-qcow2'])
    expect(first.exitCode).toBe(0)
    const report = parse<PopulateReport>(first.stdout)
    expect(report.items).toMatchObject([
      {
        converted: true,
        image: {id: qcow2.id, name: 'e2e-qcow2', ref: 'e2e-qcow2'},
        path: host.final(qcow2.id),
        status: 'cached',
      },
    ])
    expect(report.totals).toMatchObject({cached: 1, errors: 0, existing: 0})
    expect(await qemuInfo(host.final(qcow2.id))).toMatchObject({format: 'raw', 'virtual-size': 3 * MiB})
    expect(await contents(host.cacheDir)).toEqual(['.imgcache', sha1(qcow2.id)])

    const old = new Date(Date.now() - 3 * 86_400_000)
    await utimes(host.final(qcow2.id), old, old)
    const downloads = await glanceDownloads(qcow2.id)
    const second = await cli('populate', host.root, [qcow2.id])
    expect(second.exitCode).toBe(0)
    expect(parse<PopulateReport>(second.stdout).items).toMatchObject([{downloadedBytes: 0, status: 'existing'}])
    expect((await stat(host.final(qcow2.id))).mtimeMs).toBeGreaterThan(Date.now() - 60_000)
    expect(await glanceDownloads(qcow2.id)).toBe(downloads)

    const forced = await cli('populate', host.root, [qcow2.id, '--force'])
    expect(forced.exitCode).toBe(0)
    expect(parse<PopulateReport>(forced.stdout).items).toMatchObject([{downloadedBytes: qcow2.size, status: 'cached'}])
    expect(await glanceDownloads(qcow2.id)).toBe(downloads + 1)
    expect(await contents(host.cacheDir)).toEqual(['.imgcache', sha1(qcow2.id)])
  })

  it('refuses every unsafe image of the corpus with its own reason (exit 4) and caches none of them', async () => {
    const host = instances('unsafe')
    const result = await cli(
      'populate',
      host.root,
      UNSAFE.map((u) => corpusIds[u.name]!),
    )
    expect(result.exitCode).toBe(4)
    const {items, totals} = parse<PopulateReport>(result.stdout)
    expect(totals).toMatchObject({cached: 0, errors: UNSAFE.length, existing: 0})
    for (const {code, fragment, name} of UNSAFE) {
      const item = items.find((i) => i.image.id === corpusIds[name])
      expect(item, name).toMatchObject({code, exitCode: 4, status: 'error'})
      expect(item?.message, name).toContain(fragment)
    }

    expect(await contents(host.cacheDir)).toEqual([])
  })

  it('accepts every safe image of the corpus (exit 0)', async () => {
    const host = instances('safe')
    const result = await cli(
      'populate',
      host.root,
      SAFE.map((name) => corpusIds[name]!),
    )
    expect(result.exitCode).toBe(0)
    const {items, totals} = parse<PopulateReport>(result.stdout)
    expect(totals).toMatchObject({cached: SAFE.length, errors: 0})
    // Converted to raw unless they are raw to qemu already (raw, an ISO, a partitioned disk).
    for (const name of SAFE) {
      const item = items.find((i) => i.image.id === corpusIds[name])
      expect(item, name).toMatchObject({converted: !['gpt', 'iso', 'raw'].includes(name), status: 'cached'})
    }

    const names = SAFE.map((name) => sha1(corpusIds[name]!))
    expect(await contents(host.cacheDir)).toEqual(['.imgcache', ...names].sort())
  })

  it('resolves every image before touching the node: unknown, not active, one missing among several (exit 2)', async () => {
    const host = instances('unresolved')
    const unknown = await cli('populate', host.root, ['no-such-image', 'no-such-image-either'])
    expect(unknown.exitCode).toBe(2)
    const listed = parse<ErrorJson>(unknown.stdout).error
    expect(listed.code).toBe('IMAGES_UNRESOLVED')
    expect(listed.message).toMatch(/^2 of 2 images cannot be fetched:/)
    expect(listed.message).toContain('"no-such-image"')
    expect(listed.message).toContain('"no-such-image-either"')

    const queued = await glance.createImage({name: 'e2e-queued'})
    const notActive = await cli('populate', host.root, ['e2e-queued'])
    expect(notActive.exitCode).toBe(2)
    expect(parse<ErrorJson>(notActive.stdout).error).toMatchObject({
      code: 'IMAGE_NOT_ACTIVE',
      message: expect.stringContaining(`(${queued.id}) has no data yet (status queued`),
    })

    const downloads = [await glanceDownloads(raw.id), await glanceDownloads(qcow2.id)]
    const several = await cli('populate', host.root, [raw.id, 'missing-one', 'e2e-qcow2'])
    expect(several.exitCode).toBe(2)
    expect(parse<ErrorJson>(several.stdout).error).toMatchObject({
      code: 'IMAGE_NOT_FOUND',
      message: expect.stringContaining('"missing-one"'),
    })
    expect([await glanceDownloads(raw.id), await glanceDownloads(qcow2.id)]).toEqual(downloads)
    expect(await exists(host.root)).toBe(false)

    // A URL of another scheme is named for what it is, not taken for a Glance name.
    const ftp = await cli('populate', host.root, [
      'ftp://mirror.example.net/jammy.img',
      '--image-id',
      imageUuid('ftp-image'),
    ])
    expect(ftp.exitCode).toBe(2)
    expect(parse<ErrorJson>(ftp.stdout).error).toMatchObject({
      code: 'UNSUPPORTED_SCHEME',
      message: expect.stringContaining('does not fetch ftp:// URLs'),
    })
    expect(await exists(host.root)).toBe(false)
  })

  it('after a SIGKILL mid-download only the .part is left, and the next run resumes it with a Range request', async () => {
    const content = payload(12, 3 * MiB)
    const id = await alias('killed', content, {rate: MiB})
    const host = instances('killed')
    const child = spawnPopulate(host.root, ['killed'])
    await until('the .part to grow', async () => (await sizeOf(host.part(id))) >= 256 * 1024)
    child.kill('SIGKILL')
    await child
    const kept = await sizeOf(host.part(id))
    expect(kept).toBeGreaterThan(0)
    expect(kept).toBeLessThan(content.length)
    expect(await exists(host.final(id))).toBe(false)
    // The lock dies with the process that held it (its helper sees its stdin close).
    await until('the lock to be free', async () => (await osloSees(host.lock(id))) === 'FREE', 5000)

    server.serve('/killed', {data: content})
    const again = await cli('populate', host.root, ['killed'])
    expect(again.exitCode).toBe(0)
    expect(parse<PopulateReport>(again.stdout).items).toMatchObject([
      {downloadedBytes: content.length - kept, resumedFrom: kept, status: 'cached'},
    ])
    expect(server.gets('/killed').at(-1)).toMatchObject({range: `bytes=${kept}-`, status: 206})
    expect((await readFile(host.final(id))).equals(content)).toBe(true)
    expect(await contents(host.cacheDir)).toEqual(['.imgcache', sha1(id)])
  })

  it('the local download is curl writing the .part: the URL (its signed query) and the credentials reach curl on its stdin, never an argv', async () => {
    const content = payload(17, 3 * MiB)
    const password = 'argv-watch-password-5d1f'
    const signature = 'argv-watch-signature-9c3e'
    server.serve('/signed', {data: content, rate: 2 * MiB})
    const url = new URL(server.url('/signed'))
    url.username = 'demo'
    url.password = password
    url.search = `?sig=${signature}`
    aliases.signed = {
      checksum: `sha256:${sha256(content)}`,
      diskFormat: 'raw',
      id: imageUuid('signed'),
      url: url.toString(),
    }
    await writeConfig()
    const host = instances('signed')
    const basic = Buffer.from(`demo:${password}`).toString('base64')
    const leaks = (text: string): string[] =>
      [password, signature, basic].filter((secret) => text.includes(secret)).map((secret) => `"${secret}"`)
    const child = spawnPopulate(host.root, ['signed'])
    const {found, samples, seen} = await watchArgvs(child, leaks, {curl: /^curl .*--config - $/})
    const result = await child
    expect(found).toEqual([])
    expect(samples).toBeGreaterThan(10)
    expect([...seen]).toEqual(['curl'])
    expect(result.exitCode).toBe(0)
    expect(leaks(`${result.stdout}\n${result.stderr}`)).toEqual([])
    // curl got them all: the query, the credentials, one request.
    expect(server.gets('/signed')).toMatchObject([
      {authorization: `Basic ${basic}`, query: `?sig=${signature}`, status: 200},
    ])
    expect((await readFile(host.final(imageUuid('signed')))).equals(content)).toBe(true)
    expect(await contents(host.cacheDir)).toEqual(['.imgcache', sha1(imageUuid('signed'))])
  })

  it('starts over, and still verifies, when the server ignores the Range request', async () => {
    const content = payload(13, 3 * MiB)
    const id = await alias('no-range', content, {ranges: false, rate: MiB})
    const host = instances('no-range')
    const child = spawnPopulate(host.root, ['no-range'])
    await until('the .part to grow', async () => (await sizeOf(host.part(id))) >= 256 * 1024)
    child.kill('SIGKILL')
    await child
    const kept = await sizeOf(host.part(id))

    server.serve('/no-range', {data: content, ranges: false})
    const again = await cli('populate', host.root, ['no-range'])
    expect(again.exitCode).toBe(0)
    const [item] = parse<PopulateReport>(again.stdout).items
    expect(item).toMatchObject({downloadedBytes: content.length, status: 'cached'})
    expect(item?.resumedFrom).toBeUndefined()
    expect(server.gets('/no-range').at(-1)).toMatchObject({range: `bytes=${kept}-`, status: 200})
    expect((await readFile(host.final(id))).equals(content)).toBe(true)
    expect(await contents(host.cacheDir)).toEqual(['.imgcache', sha1(id)])
  })

  it('on Ctrl-C (SIGINT) mid-download exits 130, removes the .part and releases the lock', async () => {
    const content = payload(14, 3 * MiB)
    const id = await alias('interrupted', content, {rate: MiB})
    const host = instances('interrupted')
    const child = spawnPopulate(host.root, ['interrupted'])
    await until('the .part to grow', async () => (await sizeOf(host.part(id))) >= 256 * 1024)
    expect(await osloSees(host.lock(id))).toBe('BUSY')
    process.kill(-child.pid!, 'SIGINT')
    const result = await child
    expect(result.exitCode).toBe(130)
    expect(parse<PopulateReport>(result.stdout).items).toMatchObject([{code: 'INTERRUPTED', status: 'error'}])
    expect(await contents(host.cacheDir)).toEqual([])
    expect(await osloSees(host.lock(id))).toBe('FREE')
  })

  it('two populates of the same image at once: one download, one cached and one existing, both exit 0', async () => {
    const content = payload(15, 2 * MiB)
    const id = await alias('twice', content, {rate: MiB})
    const host = instances('twice')
    const results = await Promise.all([spawnPopulate(host.root, ['twice']), spawnPopulate(host.root, ['twice'])])
    expect(results.map((r) => r.exitCode)).toEqual([0, 0])
    const statuses = results.map((r) => parse<PopulateReport>(r.stdout).items[0]?.status).sort()
    expect(statuses).toEqual(['cached', 'existing'])
    expect(server.gets('/twice')).toHaveLength(1)
    expect((await readFile(host.final(id))).equals(content)).toBe(true)
    expect(await contents(host.cacheDir)).toEqual(['.imgcache', sha1(id)])
  })

  it('two populates while nova-compute (a real oslo lock) holds the image: both wait, one download, both succeed, one intact file', async () => {
    const content = payload(16, 2 * MiB)
    const id = await alias('contended', content, {rate: 4 * MiB})
    const host = instances('contended')
    await mkdir(host.lockDir, {recursive: true})
    const holder = await holdOsloLock(host.lockDir, sha1(id))
    onTestFinished(() => holder.kill())
    const first = spawnPopulate(host.root, ['contended', '--lock-timeout', '60'])
    const second = spawnPopulate(host.root, ['contended', '--lock-timeout', '60'])
    // While nova-compute holds the lock, neither writes a byte into the cache.
    await new Promise((resolve) => {
      setTimeout(resolve, 1500)
    })
    expect(first.exitCode).toBeNull()
    expect(second.exitCode).toBeNull()
    expect(await contents(host.cacheDir)).toEqual([])
    expect(server.gets('/contended')).toHaveLength(0)
    await holder.release()
    const results = await Promise.all([first, second])
    expect(results.map((r) => r.exitCode)).toEqual([0, 0])
    expect(results.map((r) => parse<PopulateReport>(r.stdout).items[0]?.status).sort()).toEqual(['cached', 'existing'])
    expect(server.gets('/contended')).toHaveLength(1)
    expect(sha256(await readFile(host.final(id)))).toBe(sha256(content))
    expect(await contents(host.cacheDir)).toEqual(['.imgcache', sha1(id)])
    expect(await osloSees(host.lock(id))).toBe('FREE')
  })

  it('on a terminal, one image: a cli-progress bar on stderr that reaches 100 %, then the table', async () => {
    const content = payload(17, 4 * MiB)
    await alias('tty-bar', content, {rate: 4 * MiB})
    const host = instances('tty-bar')
    const argv = ['node', BIN, 'populate', 'tty-bar', '--instances-path', host.root, '--config', config]
    // script(1) gives the CLI a pseudo-terminal (stdout and stderr both); CI=true would choose log lines.
    const result = await execa('script', ['-qfec', `stty cols 200 rows 50; exec ${shellCommand(argv)}`, '/dev/null'], {
      env: {CI: '', IMGCACHE_CONFIG: '', NODE_ENV: 'production', TERM: 'xterm'},
      reject: false,
      timeout: 60_000,
    })
    expect(result.exitCode).toBe(0)
    // eslint-disable-next-line no-control-regex -- ANSI escape sequences start with ESC
    const text = result.stdout.replaceAll(/\u001B\[[\d;?]*[A-Za-z]/g, '')
    // Redrawn in place as the bytes arrive: a part-way frame with a speed, then the full one.
    expect(text).toMatch(
      /tty-bar \[=+-+\] [1-9]\d?% \| [\d.]+ [KM]iB of 4\.0 MiB \| [\d.]+ [KM]iB\/s \| ETA \d+s \| downloading/,
    )
    expect(text).toMatch(/tty-bar \[=+\] 100% \| 4\.0 MiB of 4\.0 MiB .* \| done/)
    expect(text).toMatch(/local\s+tty-bar\s+cached/)
  })

  it('waits for nova-compute (a real oslo.concurrency lock) and fetches once it lets go; LOCK_BUSY after --lock-timeout', async () => {
    const host = instances('oslo')
    await mkdir(host.lockDir, {recursive: true})
    const holder = await holdOsloLock(host.lockDir, sha1(raw.id))
    onTestFinished(() => holder.kill())
    const child = spawnPopulate(host.root, [raw.id, '--lock-timeout', '60'], false)
    let stderr = ''
    child.stderr?.on('data', (chunk: Buffer) => {
      stderr += chunk.toString()
    })
    await until('populate to wait for the lock', async () => stderr.includes('waiting-for-lock'))
    await new Promise((resolve) => {
      setTimeout(resolve, 500)
    })
    expect(child.exitCode).toBeNull()
    expect(await contents(host.cacheDir)).toEqual([])
    await holder.release()
    const waited = await child
    expect(waited.exitCode).toBe(0)
    expect(String(waited.stdout)).toMatch(/local\s+e2e-raw\s+cached/)
    expect((await readFile(host.final(raw.id))).equals(rawContent)).toBe(true)

    const busy = instances('oslo-busy')
    await mkdir(busy.lockDir, {recursive: true})
    const again = await holdOsloLock(busy.lockDir, sha1(raw.id))
    try {
      const result = await cli('populate', busy.root, [raw.id, '--lock-timeout', '1'])
      expect(result.exitCode).toBe(1)
      const [item] = parse<PopulateReport>(result.stdout).items
      expect(item).toMatchObject({code: 'LOCK_BUSY', status: 'error'})
      expect(item?.message).toContain(`${busy.lock(raw.id)} is locked by another process`)
      expect(await contents(busy.cacheDir)).toEqual([])
    } finally {
      await again.release()
    }
  })
})

describe('populate --force and the format of a base', () => {
  it('never swaps a base for another format under its instances: kept qcow2, then force_raw_images on: refused (exit 4), unchanged', async () => {
    const host = instances('force-format')
    const keepQcow2 = path.join(work, 'keep-qcow2.json')
    await writeFile(
      keepQcow2,
      JSON.stringify({fetch: {forceRaw: false}, images: aliases, imageService: {endpoint: glance.url}}),
    )
    const populate = async (configFile: string) =>
      runCli(['populate', 'e2e-qcow2', '--force', '--instances-path', host.root, '--config', configFile, '--json'])
    expect((await populate(keepQcow2)).exitCode).toBe(0)
    const before = await readFile(host.final(qcow2.id))
    expect(before.subarray(0, 4).toString('latin1')).toBe('QFI\u00FB')

    // The default converts to raw: the instances' disks on this base say backing_fmt=qcow2.
    const forced = await populate(config)
    expect(forced.exitCode).toBe(4)
    expect(parse<PopulateReport>(forced.stdout).items).toMatchObject([
      {
        code: 'BASE_FORMAT_CHANGE',
        message: expect.stringContaining(
          `holds image e2e-qcow2 (${qcow2.id}) as qcow2; --force would replace it with a raw copy`,
        ),
        status: 'error',
      },
    ])
    expect((await readFile(host.final(qcow2.id))).equals(before)).toBe(true)
    expect(await contents(host.cacheDir)).toEqual(['.imgcache', sha1(qcow2.id)])
    expect(await osloSees(host.lock(qcow2.id))).toBe('FREE')

    // The same format: --force replaces it.
    expect((await populate(keepQcow2)).exitCode).toBe(0)
  })
})

describe('imgcache overlay', () => {
  it('creates a qcow2 over the absolute base path (backing_fmt raw) with --size', async () => {
    const host = instances('overlay')
    await mkdir(path.join(host.root, 'vm-1'), {recursive: true})
    const dest = path.join(host.root, 'vm-1', 'disk')
    const result = await cli('overlay', host.root, ['e2e-raw', dest, '--size', '64M'])
    expect(result.exitCode).toBe(0)
    expect(parse<{base: {status: string}; overlay: Record<string, unknown>}>(result.stdout)).toMatchObject({
      base: {status: 'cached'},
      overlay: {backingFile: host.final(raw.id), backingFormat: 'raw', path: dest, virtualSize: 64 * MiB},
    })
    expect(await qemuInfo(dest)).toMatchObject({
      'backing-filename': host.final(raw.id),
      'backing-filename-format': 'raw',
      format: 'qcow2',
      'virtual-size': 64 * MiB,
    })
  })

  it('never overwrites DEST and never makes a disk smaller than the image (exit 2)', async () => {
    const host = instances('overlay-usage')
    await mkdir(path.join(host.root, 'vm-1'), {recursive: true})
    const taken = path.join(host.root, 'vm-1', 'disk')
    await writeFile(taken, 'an instance disk in use')
    const before = await stat(taken)
    const exists1 = await cli('overlay', host.root, ['e2e-raw', taken])
    expect(exists1.exitCode).toBe(2)
    expect(parse<ErrorJson>(exists1.stdout).error).toMatchObject({code: 'DEST_EXISTS'})
    expect(await readFile(taken, 'utf8')).toBe('an instance disk in use')
    expect((await stat(taken)).mtimeMs).toBe(before.mtimeMs)

    const small = path.join(host.root, 'vm-1', 'small')
    const tooSmall = await cli('overlay', host.root, ['e2e-raw', small, '--size', '1M'])
    expect(tooSmall.exitCode).toBe(2)
    expect(parse<ErrorJson>(tooSmall.stdout).error).toMatchObject({
      code: 'OVERLAY_TOO_SMALL',
      message: expect.stringContaining(`virtual size 2.0 MiB (${rawContent.length} bytes)`),
    })
    expect(await exists(small)).toBe(false)
  })

  it('refuses a cached base that became unsafe (a qcow2 with a backing file now): exit 4, no overlay', async () => {
    const host = instances('overlay-unsafe')
    expect((await cli('populate', host.root, ['e2e-raw'])).exitCode).toBe(0)
    await rm(host.final(raw.id))
    await execa('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', '/etc/hosts', '-F', 'raw', host.final(raw.id)])
    await mkdir(path.join(host.root, 'vm-1'), {recursive: true})
    const dest = path.join(host.root, 'vm-1', 'disk')
    const result = await cli('overlay', host.root, ['e2e-raw', dest])
    expect(result.exitCode).toBe(4)
    expect(parse<ErrorJson>(result.stdout).error).toMatchObject({
      code: 'BASE_UNSAFE',
      message: expect.stringContaining('backing file'),
    })
    expect(await exists(dest)).toBe(false)
  })
})

/** Each entry's --verify verdict by image id (or name, when no image is known). */
function verdicts(stdout: string) {
  return Object.fromEntries(
    (parse<InspectReport>(stdout).nodes[0]?.entries ?? []).map((e) => [e.imageId ?? e.name, e.verify]),
  )
}

async function verify(root: string, args: string[] = [], configFile = config): Promise<CliResult> {
  return runCli(['inspect', '--verify', '--instances-path', root, '--config', configFile, ...args])
}

/** An instance directory whose libvirt.xml names the image. */
async function instance(root: string, dir: string, imageId: string): Promise<void> {
  await mkdir(path.join(root, dir), {recursive: true})
  await writeFile(path.join(root, dir, 'libvirt.xml'), libvirtXml({imageId}, dir))
}

/** inspect --verify --json as a process of its own, not awaited (Ctrl-C tests); killed when the test ends. */
function spawnVerify(root: string, configFile: string): ResultPromise {
  return spawnCli(['inspect', '--verify', '--instances-path', root, '--config', configFile, '--json'])
}

/** Ctrl-C once `ready`: the run must end within 3 s, interrupted (exit 130). Its stdout. */
async function interruptWhen(
  child: ResultPromise,
  what: string,
  ready: () => Promise<boolean>,
): Promise<{stdout: string}> {
  await until(what, ready)
  const started = Date.now()
  child.kill('SIGINT')
  const result = await child
  expect(Date.now() - started).toBeLessThan(3000)
  expect(result.exitCode).toBe(130)
  return {stdout: String(result.stdout)}
}

/** Whether process `pid` has `file` open. */
async function holdsOpen(pid: number, file: string): Promise<boolean> {
  const fds = await readdir(`/proc/${pid}/fd`).catch(() => [])
  const targets = await Promise.all(fds.map(async (fd) => readlink(`/proc/${pid}/fd/${fd}`).catch(() => '')))
  return targets.includes(file)
}

describe('imgcache inspect --verify', () => {
  it("matches each cached image against Glance's digest, says why others cannot be, and names a changed base (exit 4)", async () => {
    const host = instances('verify')
    const [iso, vhd] = [corpusIds.iso!, corpusIds.vhd!]
    expect((await cli('populate', host.root, ['e2e-raw', 'e2e-qcow2', iso, vhd])).exitCode).toBe(0)
    // A base Nova cached itself: no imgcache record; its image is known from an instance's libvirt.xml.
    const novaBytes = payload(12, MiB + 512)
    const novaImage = await glance.uploadImage({data: novaBytes, diskFormat: 'raw', name: 'e2e-verify-nova'})
    await writeFile(host.final(novaImage.id), novaBytes)
    await instance(host.root, 'vm-nova', novaImage.id)
    // And one of an image Glance no longer has.
    await writeFile(host.final('e2e-verify-gone'), payload(13, 4096))
    await instance(host.root, 'vm-gone', 'e2e-verify-gone')

    const clean = await verify(host.root, ['--json'])
    expect(clean.exitCode).toBe(0)
    const match = (image: GlanceImageJson) =>
      expect.objectContaining({actual: image.os_hash_value, algorithm: 'sha512', outcome: 'match'})
    expect(verdicts(clean.stdout)).toEqual({
      'e2e-verify-gone': {
        outcome: 'unverifiable',
        reason: expect.stringMatching(/^image e2e-verify-gone is not in .*\(deleted\?\)$/),
      },
      // An iso is raw to qemu: cached as it came, and verified.
      [iso]: match(await glance.getImage(iso)),
      [novaImage.id]: match(novaImage),
      [qcow2.id]: {
        outcome: 'unverifiable',
        reason: 'converted from qcow2 to raw when cached: the declared digest is of the qcow2 bytes',
      },
      [raw.id]: match(raw),
      [vhd]: {
        outcome: 'unverifiable',
        reason: 'converted from vhd to raw when cached: the declared digest is of the vhd bytes',
      },
    })

    // One byte of the raw base changed (same size), and the Nova base cut short.
    const changed = await readFile(host.final(raw.id))
    changed.writeUInt8(changed.readUInt8(1000) ^ 0xff, 1000)
    await writeFile(host.final(raw.id), changed)
    await writeFile(host.final(novaImage.id), novaBytes.subarray(0, MiB))
    const dirty = await verify(host.root, ['--json'])
    expect(dirty.exitCode).toBe(4)
    const byId = verdicts(dirty.stdout)
    expect(byId[raw.id]).toMatchObject({
      expected: raw.os_hash_value,
      outcome: 'mismatch',
      reason: `its sha512 is not image ${raw.id}'s (${byId[raw.id]?.actual?.slice(0, 12)}… for ${raw.os_hash_value?.slice(0, 12)}…)`,
    })
    expect(byId[raw.id]?.actual).not.toBe(raw.os_hash_value)
    expect(byId[novaImage.id]).toMatchObject({
      outcome: 'mismatch',
      reason: `it holds ${MiB} bytes, image ${novaImage.id} has ${novaBytes.length}`,
    })
    const rawEntry = parse<InspectReport>(dirty.stdout).nodes[0]?.entries.find((e) => e.imageId === raw.id)
    expect(rawEntry).toMatchObject({
      problems: [expect.stringContaining("not the image's bytes: its sha512")],
      sound: false,
    })

    // As a person reads it: what is wrong, and what to do for a base in use and for one that is not.
    const text = await verify(host.root)
    expect(text.exitCode).toBe(4)
    expect(text.stdout).toContain('MISMATCH')
    expect(text.stdout).toContain(
      'checked 6 cached images against the declared digests: 1 match, 2 mismatch, 3 not verifiable',
    )
    expect(text.stdout).toContain(
      `→ ${sha1(novaImage.id)} is in use (1 instance) and is not image ${novaImage.id}'s bytes`,
    )
    expect(text.stdout).toContain(
      `→ ${sha1(raw.id)} is unused and is not image ${raw.id}'s bytes: imgcache populate ${raw.id} --force --node local --instances-path ${host.root}`,
    )
    expect(text.stderr).toContain(`local: verifying ${sha1(raw.id)} (e2e-raw, 2.0 MiB)`)
    expect((await readFile(host.final(raw.id))).equals(changed)).toBe(true)
  })

  it('with the image service out of reach: each check says why, later images are not asked (exit 1); with none, exit 2', async () => {
    const host = instances('verify-unreachable')
    expect((await cli('populate', host.root, ['e2e-raw'])).exitCode).toBe(0)
    await writeFile(host.final('e2e-verify-other'), payload(14, 4096))
    await instance(host.root, 'vm-other', 'e2e-verify-other')
    const unreachable = path.join(work, 'verify-unreachable.json')
    await writeFile(unreachable, JSON.stringify({imageService: {endpoint: 'http://127.0.0.1:9'}}))
    const down = await verify(host.root, ['--json'], unreachable)
    expect(down.exitCode).toBe(1)
    const [first, second] = (parse<InspectReport>(down.stdout).nodes[0]?.entries ?? []).map((e) => e.verify)
    expect(first).toMatchObject({failed: true, outcome: 'unverifiable', reason: expect.stringContaining('127.0.0.1:9')})
    expect(second).toMatchObject({failed: true, outcome: 'unverifiable', reason: expect.stringMatching(/^not asked: /)})

    const none = path.join(work, 'verify-none.json')
    await writeFile(none, '{}')
    const unconfigured = await runCli(
      ['inspect', '--verify', '--instances-path', host.root, '--config', none, '--json'],
      {env: {OS_CLOUD: '', OS_AUTH_URL: '', OS_CLIENT_CONFIG_FILE: path.join(work, 'no-clouds.yaml')}},
    )
    expect(unconfigured.exitCode).toBe(2)
    expect(parse<ErrorJson>(unconfigured.stdout).error).toMatchObject({
      code: 'NO_IMAGE_SERVICE',
      suggestions: [expect.stringContaining('OS_CLOUD'), expect.stringContaining('checksum')],
    })
  })

  it("against a config alias's checksum: a mismatch names the alias to fetch again; a malformed checksum is exit 2 before any node is read", async () => {
    const host = instances('verify-alias')
    const cached = payload(15, 64 * 1024)
    const aliasConfig = async (checksum: string) => {
      const file = path.join(work, 'verify-alias.json')
      const alias = {checksum, diskFormat: 'raw', id: ALIAS_ID, url: 'http://127.0.0.1:9/a'}
      await writeFile(file, JSON.stringify({images: {'web-base': alias}}))
      return file
    }

    await mkdir(host.cacheDir, {recursive: true})
    await writeFile(host.final(ALIAS_ID), cached)
    await instance(host.root, 'vm-alias', ALIAS_ID)
    expect((await verify(host.root, ['--json'], await aliasConfig(`sha256:${sha256(cached)}`))).exitCode).toBe(0)

    const other = await verify(host.root, [], await aliasConfig(`sha256:${sha256(payload(16, 10))}`))
    expect(other.exitCode).toBe(4)
    expect(other.stdout).toContain(`${sha1(ALIAS_ID)} is in use (1 instance)`)
    // Unused, its image known from imgcache's own record of it.
    await rm(path.join(host.root, 'vm-alias'), {recursive: true})
    await mkdir(path.join(host.cacheDir, '.imgcache'), {recursive: true})
    const record = {format: 'raw', imageId: ALIAS_ID, sourceFormat: 'raw', version: 1}
    await writeFile(path.join(host.cacheDir, '.imgcache', `${sha1(ALIAS_ID)}.json`), JSON.stringify(record))
    const unused = await verify(host.root, [], await aliasConfig(`sha256:${sha256(payload(16, 10))}`))
    expect(unused.stdout).toContain('imgcache populate web-base --force --node local')

    const malformed = await verify(host.root, ['--json'], await aliasConfig('sha256:abc'))
    expect(malformed.exitCode).toBe(2)
    expect(parse<ErrorJson>(malformed.stdout).error).toMatchObject({
      code: 'CHECKSUM_INVALID',
      message: expect.stringContaining('images.web-base.checksum'),
    })
    expect(malformed.stderr).not.toContain('verifying')
  })

  it('Ctrl-C while Glance hangs on a lookup: the request ends at once (exit 130)', async () => {
    const host = instances('verify-hung')
    // A Glance that takes the connection and never answers.
    const sockets: Socket[] = []
    const hung = createServer((socket) => sockets.push(socket))
    await new Promise<void>((resolve) => {
      hung.listen(0, '127.0.0.1', resolve)
    })
    onTestFinished(() => {
      for (const socket of sockets) socket.destroy()
      hung.close()
    })
    const hungConfig = path.join(work, 'verify-hung.json')
    const {port} = hung.address() as AddressInfo
    await writeFile(hungConfig, JSON.stringify({imageService: {endpoint: `http://127.0.0.1:${port}`}}))
    await mkdir(host.cacheDir, {recursive: true})
    await writeFile(host.final('e2e-hung'), payload(17, 4096))
    await instance(host.root, 'vm-hung', 'e2e-hung')
    const child = spawnVerify(host.root, hungConfig)
    const result = await interruptWhen(child, 'the lookup to reach the hung Glance', async () => sockets.length > 0)
    expect(verdicts(result.stdout)['e2e-hung']).toMatchObject({
      interrupted: true,
      reason: 'not checked: interrupted',
    })
  })

  it('Ctrl-C while a base is hashed: stops at once, keeps what was found, says what was not checked (exit 130)', async () => {
    const host = instances('verify-interrupted')
    // An image known by a config alias (no size to refuse a file by): 4 GiB of zeros to hash.
    const big = path.join(work, 'verify-big.json')
    await writeFile(
      big,
      JSON.stringify({
        images: {
          big: {checksum: `sha256:${'0'.repeat(64)}`, diskFormat: 'raw', id: BIG_ID, url: 'http://127.0.0.1:9/big'},
        },
      }),
    )
    await mkdir(host.cacheDir, {recursive: true})
    await writeFile(host.final(BIG_ID), '')
    await execa('truncate', ['-s', '4G', host.final(BIG_ID)])
    await instance(host.root, 'vm-big', BIG_ID)
    const child = spawnVerify(host.root, big)
    // --json prints no progress: wait for the hash to be under way (the file being read).
    const result = await interruptWhen(child, 'the hash to start', async () =>
      holdsOpen(child.pid!, host.final(BIG_ID)),
    )
    expect(verdicts(result.stdout)[BIG_ID]).toEqual({
      interrupted: true,
      outcome: 'unverifiable',
      reason: 'not checked: interrupted',
    })
  })
})

describe('an overlay killed before its rename', () => {
  it("leaves a temporary that no scan takes for a disk, which inspect lists: prune goes on (exit 0); under a disk's name it would stop it (exit 4)", async () => {
    const host = instances('overlay-leftover')
    await mkdir(path.join(host.root, 'vm-1'), {recursive: true})
    const dest = path.join(host.root, 'vm-1', 'disk')
    expect((await cli('overlay', host.root, ['e2e-raw', dest])).exitCode).toBe(0)
    // What SIGKILL during qemu-img create leaves: the start of a qcow2, under the temporary's name.
    const leftover = overlayTemporary(path.join(host.root, 'vm-1', 'disk.local'))
    expect(path.dirname(leftover)).toBe(path.join(host.root, 'vm-1'))
    await writeFile(leftover, (await readFile(dest)).subarray(0, 16))
    const scan = async () => {
      const args = ['--instances-path', host.root, '--config', config, '--json']
      const inspect = await runCli(['inspect', ...args])
      const prune = await runCli(['prune', ...args])
      const [view] = parse<InspectReport>(inspect.stdout).nodes
      return {guard: view?.guard, leftovers: view?.overlayTemporaries.map((t) => t.path), prune: prune.exitCode}
    }

    expect(await scan()).toEqual({guard: [], leftovers: [leftover], prune: 0})
    expect(await exists(host.final(raw.id))).toBe(true)
    // Listed for the operator, with what to do; never removed by imgcache.
    const text = await runCli(['inspect', '--instances-path', host.root, '--config', config])
    expect(text.stdout).toContain(`! ${leftover} (16 B, `)
    expect(text.stdout).toContain('left by an imgcache overlay that did not finish; nothing uses it')
    expect(text.stdout).toContain('→ Remove it (rm) once no imgcache overlay is running on this node')
    expect(await exists(leftover)).toBe(true)

    // The control: the same bytes where a disk.* name would have put them.
    const asDisk = path.join(host.root, 'vm-1', 'disk.local.imgcache-0123abcd.tmp')
    await rename(leftover, asDisk)
    expect(await scan()).toEqual({
      guard: [expect.objectContaining({path: asDisk, reason: expect.stringContaining('truncated')})],
      leftovers: [],
      prune: 4,
    })
  })
})

describe('glance-api killed mid-transfer', () => {
  it('fails naming the transfer (exit 1), removes the temporaries and releases the lock; works once Glance is back', async () => {
    // From 64 MiB on, the bytes are hashed on a worker thread (fetch/tap.ts), which must not outlive the run.
    const content = sparsePayload(16, 72 * MiB, 3 * MiB)
    const image = await glance.uploadImage({data: content, diskFormat: 'raw', name: 'e2e-fifo'})
    // Glance's file store reads the image file as it sends it: a FIFO in its place lets the test
    // decide how far the transfer gets before glance-api is killed.
    const stored = path.join(glanceDir, 'images', image.id)
    await rename(stored, `${stored}.kept`)
    await execa('mkfifo', [stored])
    const host = instances('glance-killed')
    const child = spawnPopulate(host.root, ['e2e-fifo'])
    const fifo = await open(stored, 'w')
    await fifo.write(content.subarray(0, 3 * MiB)).catch(() => undefined)
    await until('the .part to grow', async () => (await sizeOf(host.part(image.id))) >= 2 * MiB)
    glance.kill('SIGKILL')
    await fifo.close().catch(() => undefined)
    const result = await child
    expect(result.exitCode).toBe(1)
    const [item] = parse<PopulateReport>(result.stdout).items
    expect(item).toMatchObject({code: 'IMAGE_TRANSFER_FAILED', status: 'error'})
    expect(item?.message).toContain(`downloading image e2e-fifo (${image.id}) failed`)
    expect(item?.message).toContain(`Glance at ${glance.url}`)
    expect(await contents(host.cacheDir)).toEqual([])
    expect(await osloSees(host.lock(image.id))).toBe('FREE')

    await glance.stop()
    await rm(stored)
    await rename(`${stored}.kept`, stored)
    glance = await startGlance({dir: glanceDir})
    await writeConfig()
    const again = await cli('populate', host.root, ['e2e-fifo'])
    expect(again.exitCode).toBe(0)
    expect(parse<PopulateReport>(again.stdout).items).toMatchObject([{status: 'cached'}])
    expect((await readFile(host.final(image.id))).equals(content)).toBe(true)
  })
})
