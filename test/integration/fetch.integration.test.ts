import {execa} from 'execa'
import {createHash} from 'node:crypto'
import {mkdir, mkdtemp, open, readdir, readFile, rm, stat, utimes, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import path from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import type {ImgcacheConfig} from '../../src/lib/config/schema.js'

import {type CacheSettings, resolveCacheSettings} from '../../src/lib/config/settings.js'
import {fetchIntoCache, type FetchOptions} from '../../src/lib/fetch/pipeline.js'
import {type ImageFlags, type ResolvedImage, resolveImages} from '../../src/lib/images.js'
import {LocalNode} from '../../src/lib/node/local.js'
import {populateNode} from '../../src/lib/populate.js'
import {parseQemuInfo, qemuInfoArgv} from '../../src/lib/qemu/index.js'
import {imageUuid, sha1} from '../fixtures/nova-host.js'
import {type GlanceHandle, type GlanceImageJson, startGlance} from '../helpers/glance.js'
import {
  type CorpusImage,
  type CorpusName,
  makeImageCorpus,
  vmdkDescriptor,
  vmdkSparse,
} from '../helpers/image-corpus.js'
import {type ImageServer, startImageServer} from '../helpers/image-server.js'
import {payload, sha256} from '../helpers/payload.js'

// Domain level: fetchIntoCache and populateNode on this host against one real glance-api (no
// Keystone, sqlite, file store), real qemu-img, a small HTTP server for the failure modes Glance
// cannot produce on demand, and a real tmpfs for a full disk.

const MiB = 1024 * 1024
let work: string
let glance: GlanceHandle
let corpus: Record<CorpusName, CorpusImage>
let server: ImageServer
let tmpfs: string | undefined
const node = new LocalNode()

beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), 'imgcache-it-fetch-'))
  ;[glance, corpus, server] = await Promise.all([
    startGlance(),
    makeImageCorpus(path.join(work, 'corpus')),
    startImageServer(),
  ])
})

afterAll(async () => {
  await node.close()
  await server?.close()
  await glance?.stop()
  if (tmpfs) await execa('umount', [tmpfs], {reject: false})
  if (work) await rm(work, {force: true, recursive: true})
})

function baseConfig(extra: Partial<ImgcacheConfig> = {}): ImgcacheConfig {
  return {imageService: {endpoint: glance.url}, ...extra}
}

/** A fresh instances path (under `root`, default the work dir) and its cache settings. */
async function host(name: string, config: ImgcacheConfig = baseConfig(), root = work): Promise<CacheSettings> {
  return resolveCacheSettings(node, config, undefined, {instancesPath: path.join(root, name, 'instances')})
}

async function resolveOne(
  ref: string,
  config: ImgcacheConfig = baseConfig(),
  flags: ImageFlags = {},
): Promise<ResolvedImage> {
  const [image] = await resolveImages([ref], {config, cwd: work, env: {}, flags})
  return image!
}

function fetch(image: ResolvedImage, settings: CacheSettings, options: Partial<FetchOptions> = {}) {
  return fetchIntoCache(
    {image: image.record, node, settings, source: image.source},
    {allowUnverified: false, force: false, lockTimeoutMs: 10_000, ...options},
  )
}

/** Everything in a cache dir, the metadata directory's content included. */
async function contents(dir: string): Promise<string[]> {
  const names = await readdir(dir).catch(() => [] as string[])
  const sidecars = await readdir(path.join(dir, '.imgcache')).catch(() => [] as string[])
  return [...names, ...sidecars.map((n) => `.imgcache/${n}`)].sort()
}

async function qemuInfo(file: string) {
  const [cmd, ...args] = qemuInfoArgv(file)
  return parseQemuInfo((await execa(cmd!, args)).stdout)
}

/** Downloads of an image's data that glance-api logged (its access log). */
async function glanceDownloads(id: string): Promise<number> {
  const log = await readFile(path.join(glance.dir, 'glance-api.log'), 'utf8')
  return log.split('\n').filter((line) => line.includes(`"GET /v2/images/${id}/file `)).length
}

async function waitForSize(file: string, atLeast: number, timeoutMs = 20_000): Promise<number> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const size = (await stat(file).catch(() => undefined))?.size ?? 0
    if (size >= atLeast) return size
    if (Date.now() > deadline) throw new Error(`${file} did not reach ${atLeast} bytes`)
    await new Promise((resolve) => {
      setTimeout(resolve, 10)
    })
  }
}

describe('from a real glance-api', () => {
  const qcow2Content = payload(1, 3 * MiB + 4096)
  const rawContent = payload(2, 2 * MiB + 512)
  let qcow2: GlanceImageJson
  let raw: GlanceImageJson

  beforeAll(async () => {
    const source = path.join(work, 'content.raw')
    const file = path.join(work, 'content.qcow2')
    await writeFile(source, qcow2Content)
    await execa('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', source, file])
    ;[qcow2, raw] = await Promise.all([
      glance.uploadImage({diskFormat: 'qcow2', file, name: 'happy-qcow2'}),
      glance.uploadImage({data: rawContent, diskFormat: 'raw', name: 'happy-raw'}),
    ])
  })

  it('converts a qcow2 (resolved by name) to raw under sha1(id), with its sidecar, and leaves no temporary', async () => {
    const settings = await host('qcow2')
    const image = await resolveOne('happy-qcow2')
    expect(image.record.id).toBe(qcow2.id)
    const result = await fetch(image, settings)
    const name = sha1(qcow2.id)
    expect(result).toMatchObject({
      bytes: qcow2Content.length,
      converted: true,
      downloadedBytes: qcow2.size,
      format: 'raw',
      hash: {algorithm: 'sha512', value: qcow2.os_hash_value, verified: true},
      path: path.join(settings.cacheDir, name),
      sourceFormat: 'qcow2',
      status: 'cached',
    })
    expect(result.resumedFrom).toBeUndefined()
    expect((await readFile(result.path)).equals(qcow2Content)).toBe(true)
    expect((await qemuInfo(result.path)).format).toBe('raw')
    expect(await contents(settings.cacheDir)).toEqual([`.imgcache`, `.imgcache/${name}.json`, name])
    const sidecar = JSON.parse(await readFile(path.join(settings.cacheDir, '.imgcache', `${name}.json`), 'utf8'))
    expect(sidecar).toEqual({
      downloadHash: {algorithm: 'sha512', value: qcow2.os_hash_value},
      fetchedAt: expect.any(String),
      format: 'raw',
      imageId: qcow2.id,
      imageName: 'happy-qcow2',
      size: qcow2Content.length,
      source: `Glance at ${glance.url}`,
      sourceFormat: 'qcow2',
      version: 1,
    })
    expect(Math.abs(Date.parse(sidecar.fetchedAt) - Date.now())).toBeLessThan(60_000)
  })

  it('keeps a raw image (resolved by id) raw, byte for byte, without converting it', async () => {
    const settings = await host('raw')
    const result = await fetch(await resolveOne(raw.id), settings)
    expect(result).toMatchObject({converted: false, format: 'raw', sourceFormat: 'raw', status: 'cached'})
    expect(result.hash).toEqual({algorithm: 'sha512', value: raw.os_hash_value, verified: true})
    expect((await readFile(result.path)).equals(rawContent)).toBe(true)
    expect(await contents(settings.cacheDir)).toEqual([`.imgcache`, `.imgcache/${sha1(raw.id)}.json`, sha1(raw.id)])
  })

  it('reports a sound cached copy as existing and touches it, without downloading; --force fetches it again', async () => {
    const settings = await host('existing')
    const image = await resolveOne(qcow2.id)
    const first = await fetch(image, settings)
    const old = new Date(Date.now() - 2 * 86_400_000)
    await utimes(first.path, old, old)
    const downloads = await glanceDownloads(qcow2.id)

    const again = await fetch(image, settings)
    // This run converted nothing: the entry was converted when it was cached, and says so apart.
    expect(again).toMatchObject({
      converted: false,
      convertedWhenCached: true,
      downloadedBytes: 0,
      format: 'raw',
      status: 'existing',
    })
    expect((await stat(first.path)).mtimeMs).toBeGreaterThan(Date.now() - 60_000)
    expect(await glanceDownloads(qcow2.id)).toBe(downloads)

    await utimes(first.path, old, old)
    const forced = await fetch(image, settings, {force: true})
    expect(forced).toMatchObject({downloadedBytes: qcow2.size, status: 'cached'})
    expect(await glanceDownloads(qcow2.id)).toBe(downloads + 1)
    expect((await stat(first.path)).mtimeMs).toBeGreaterThan(Date.now() - 60_000)
    expect((await readFile(first.path)).equals(qcow2Content)).toBe(true)
    expect(await contents(settings.cacheDir)).toEqual([`.imgcache`, `.imgcache/${sha1(qcow2.id)}.json`, sha1(qcow2.id)])
  })

  it('keeps a qcow2 as qcow2 when force_raw_images is off', async () => {
    const config = baseConfig({fetch: {forceRaw: false}})
    const result = await fetch(await resolveOne(qcow2.id, config), await host('no-force-raw', config))
    expect(result).toMatchObject({converted: false, format: 'qcow2', status: 'cached'})
    expect((await qemuInfo(result.path)).format).toBe('qcow2')
    expect(
      createHash('sha512')
        .update(await readFile(result.path))
        .digest('hex'),
    ).toBe(qcow2.os_hash_value)
  })

  it('resumes a .part left by a killed run with a Range request to Glance', async () => {
    const settings = await host('resume')
    const part = path.join(settings.cacheDir, `${sha1(raw.id)}.part`)
    await mkdir(settings.cacheDir, {recursive: true})
    const kept = MiB + 5
    await writeFile(part, rawContent.subarray(0, kept))
    const result = await fetch(await resolveOne(raw.id), settings)
    expect(result).toMatchObject({downloadedBytes: rawContent.length - kept, resumedFrom: kept, status: 'cached'})
    expect((await readFile(result.path)).equals(rawContent)).toBe(true)
    expect(await contents(settings.cacheDir)).not.toContain(`${sha1(raw.id)}.part`)
  })

  it('refuses a resumed .part whose bytes were damaged, removes it, and the next run starts over', async () => {
    const settings = await host('resume-damaged')
    const part = path.join(settings.cacheDir, `${sha1(raw.id)}.part`)
    await mkdir(settings.cacheDir, {recursive: true})
    const damaged = Buffer.from(rawContent.subarray(0, MiB))
    damaged.writeUInt8(damaged.readUInt8(100_000) ^ 0xff, 100_000)
    await writeFile(part, damaged)
    const image = await resolveOne(raw.id)
    await expect(fetch(image, settings)).rejects.toMatchObject({
      code: 'HASH_MISMATCH',
      message: expect.stringContaining(`the image service says ${raw.os_hash_value}`),
    })
    expect(await contents(settings.cacheDir)).toEqual([])
    const result = await fetch(image, settings)
    expect(result.resumedFrom).toBeUndefined()
    expect((await readFile(result.path)).equals(rawContent)).toBe(true)
  })

  it('hashes a large image off the receiving thread: the same sha512 as Glance, resumed or not; a damaged resume is refused', async () => {
    // 72 MiB: past the size from which the hash runs on a worker thread.
    const content = payload(9, 72 * MiB)
    const large = await glance.uploadImage({data: content, diskFormat: 'raw', name: 'large'})
    expect(large.os_hash_algo).toBe('sha512')
    const image = await resolveOne(large.id)
    const whole = await fetch(image, await host('large'))
    expect(whole).toMatchObject({hash: {algorithm: 'sha512', value: large.os_hash_value, verified: true}})
    expect(
      createHash('sha512')
        .update(await readFile(whole.path))
        .digest('hex'),
    ).toBe(large.os_hash_value)

    const settings = await host('large-resume')
    const part = path.join(settings.cacheDir, `${sha1(large.id)}.part`)
    await mkdir(settings.cacheDir, {recursive: true})
    await writeFile(part, content.subarray(0, 40 * MiB + 3))
    expect(await fetch(image, settings)).toMatchObject({resumedFrom: 40 * MiB + 3, status: 'cached'})

    const damagedAt = await host('large-damaged')
    const damagedPart = path.join(damagedAt.cacheDir, `${sha1(large.id)}.part`)
    await mkdir(damagedAt.cacheDir, {recursive: true})
    const damaged = Buffer.from(content.subarray(0, 40 * MiB))
    damaged.writeUInt8(damaged.readUInt8(30 * MiB) ^ 0xff, 30 * MiB)
    await writeFile(damagedPart, damaged)
    await expect(fetch(image, damagedAt)).rejects.toMatchObject({code: 'HASH_MISMATCH'})
    expect(await contents(damagedAt.cacheDir)).toEqual([])
  })

  it('collects every outcome of several images on one node; one refusal does not stop the others', async () => {
    const bad = await glance.uploadImage({diskFormat: 'qcow2', file: corpus['qcow2-backing-file'].path, name: 'bad'})
    const images = await resolveImages([raw.id, bad.id], {config: baseConfig(), cwd: work, env: {}, flags: {}})
    const settings = await host('several')
    const items = await populateNode(node, settings, images, {
      allowUnverified: false,
      force: false,
      imageConcurrency: 2,
      lockTimeoutMs: 10_000,
    })
    expect(items).toMatchObject([
      {image: {id: raw.id}, status: 'cached'},
      {code: 'IMAGE_UNSAFE', exitCode: 4, image: {id: bad.id}, status: 'error'},
    ])
    expect(await contents(settings.cacheDir)).toEqual([`.imgcache`, `.imgcache/${sha1(raw.id)}.json`, sha1(raw.id)])
  })
})

describe('the crafted corpus, uploaded to Glance with its declared disk_format', () => {
  // Glance (Zed) only takes its configured disk_formats: no qed and no luks. QED is refused by the
  // inspector whatever it is declared as; LUKS goes through a file source below.
  const refused: Array<{code: string; declared: string; fragment: string; name: string}> = [
    {code: 'IMAGE_UNSAFE', declared: 'qcow2', fragment: 'backing_file', name: 'qcow2-backing-file'},
    {code: 'IMAGE_UNSAFE', declared: 'qcow2', fragment: 'external data file', name: 'qcow2-data-file'},
    {code: 'IMAGE_UNSAFE', declared: 'qcow2', fragment: 'feature bit 4 (extended_l2)', name: 'qcow2-extended-l2'},
    {code: 'IMAGE_UNSAFE', declared: 'qcow2', fragment: 'QED images are never allowed', name: 'qed'},
    {code: 'IMAGE_UNSAFE', declared: 'vmdk', fragment: 'create type "monolithicFlat"', name: 'vmdk-monolithic-flat'},
    {
      code: 'IMAGE_UNSAFE',
      declared: 'vmdk',
      fragment: 'create type "twoGbMaxExtentSparse"',
      name: 'vmdk-two-gb-max-extent-sparse',
    },
    {code: 'IMAGE_UNSAFE', declared: 'vmdk', fragment: 'Unsupported subformat', name: 'vmdk-extent-etc-hosts'},
    {
      code: 'IMAGE_UNSAFE',
      declared: 'vmdk',
      fragment: 'Invalid extent filenames found',
      name: 'vmdk-sparse-extent-etc-hosts',
    },
    {
      code: 'IMAGE_UNSAFE',
      declared: 'iso',
      fragment: 'Multiple formats detected: qcow2, iso',
      name: 'iso-with-qcow2-header',
    },
    {
      code: 'FORMAT_MISMATCH',
      declared: 'qcow2',
      fragment: 'declared qcow2 but the content is raw',
      name: 'raw-declared-qcow2',
    },
    {
      code: 'FORMAT_MISMATCH',
      declared: 'raw',
      fragment: 'declared raw but the content is qcow2',
      name: 'qcow2-declared-raw',
    },
  ]
  const accepted: Array<{converted: boolean; name: CorpusName}> = [
    {converted: true, name: 'qcow2-v3'},
    {converted: true, name: 'qcow2-v2'},
    {converted: true, name: 'vmdk-monolithic-sparse'},
    {converted: true, name: 'vmdk-stream-optimized'},
    {converted: true, name: 'vhd'},
    {converted: true, name: 'vhdx'},
    {converted: true, name: 'vdi'},
    {converted: false, name: 'raw'},
    {converted: false, name: 'iso'},
    {converted: false, name: 'gpt'},
  ]
  const ids = new Map<string, string>()

  beforeAll(async () => {
    // A sparse VMDK whose embedded descriptor is of an allowed type but names /etc/hosts (CVE-2022-47951).
    const etcHosts = path.join(work, 'sparse-etc-hosts.vmdk')
    await writeFile(
      etcHosts,
      vmdkSparse({descriptor: vmdkDescriptor('monolithicSparse', ['RW 2048 SPARSE "/etc/hosts"'])}),
    )
    const file = (name: string) =>
      name === 'vmdk-sparse-extent-etc-hosts' ? etcHosts : corpus[name as CorpusName].path
    const uploads = [
      ...refused.map((r) => ({declared: r.declared, name: r.name})),
      ...accepted.map((a) => ({declared: corpus[a.name].declared, name: a.name})),
    ]
    await Promise.all(
      uploads.map(async ({declared, name}) => {
        const image = await glance.uploadImage({diskFormat: declared, file: file(name), name: `corpus-${name}`})
        ids.set(name, image.id)
      }),
    )
  })

  it.each(refused)('refuses $name (declared $declared): $code, and leaves nothing', async ({code, fragment, name}) => {
    const settings = await host(`refused-${name}`)
    const image = await resolveOne(ids.get(name)!)
    await expect(fetch(image, settings)).rejects.toMatchObject({
      code,
      exitCode: 4,
      message: expect.stringContaining(fragment),
    })
    expect(await contents(settings.cacheDir)).toEqual([])
  })

  it.each(accepted)('accepts $name and caches it as raw', async ({converted, name}) => {
    const settings = await host(`accepted-${name}`)
    const result = await fetch(await resolveOne(ids.get(name)!), settings)
    expect(result).toMatchObject({converted, format: 'raw', status: 'cached'})
    expect((await qemuInfo(result.path)).format).toBe('raw')
    expect(await contents(settings.cacheDir)).toEqual([
      '.imgcache',
      `.imgcache/${sha1(ids.get(name)!)}.json`,
      sha1(ids.get(name)!),
    ])
  })

  it('takes a local file given by a path relative to the working directory', async () => {
    const data = await readFile(corpus.raw.path)
    const flags = {checksum: `sha256:${sha256(data)}`, diskFormat: 'raw', imageId: imageUuid('relative-file')}
    const image = await resolveOne(`./${path.relative(work, corpus.raw.path)}`, baseConfig(), flags)
    const result = await fetch(image, await host('relative'))
    expect(result).toMatchObject({converted: false, status: 'cached'})
    expect((await readFile(result.path)).equals(data)).toBe(true)
  })

  it('Glance itself takes neither luks nor qed as a disk_format', async () => {
    await expect(glance.createImage({diskFormat: 'luks'})).rejects.toThrow(/400/)
    await expect(glance.createImage({diskFormat: 'qed'})).rejects.toThrow(/400/)
  })

  it('refuses LUKS when force_raw_images must convert it (no key, as Nova), and caches it as is otherwise', async () => {
    // The inspector passes LUKS and `qemu-img info` reads its header without a key, but
    // `qemu-img convert` needs the key: Nova's fetch_to_raw fails with "Unable to convert image to raw".
    const data = await readFile(corpus.luks.path)
    const flags = {checksum: `sha256:${sha256(data)}`, diskFormat: 'luks', imageId: imageUuid('luks-image')}
    const settings = await host('luks')
    await expect(fetch(await resolveOne(corpus.luks.path, baseConfig(), flags), settings)).rejects.toMatchObject({
      code: 'IMAGE_ENCRYPTED',
      exitCode: 4,
      message: expect.stringContaining('encrypted'),
    })
    expect(await contents(settings.cacheDir)).toEqual([])

    const config = baseConfig({fetch: {forceRaw: false}})
    const kept = await fetch(await resolveOne(corpus.luks.path, config, flags), await host('luks-kept', config))
    expect(kept).toMatchObject({converted: false, format: 'luks', status: 'cached'})
    expect(await qemuInfo(kept.path)).toMatchObject({encrypted: true, format: 'luks'})
  })
})

describe('transfers that go wrong (an HTTP server in front of the bytes)', () => {
  const content = payload(3, 2 * MiB)

  /** A config images: alias for a URL of the fixture server. */
  function alias(name: string, extra: Record<string, unknown> = {}): ImgcacheConfig {
    return baseConfig({
      images: {
        [name]: {
          checksum: `sha256:${sha256(content)}`,
          diskFormat: 'raw',
          id: imageUuid(name),
          url: server.url(`/${name}`),
          ...extra,
        },
      },
    })
  }

  async function fetchAlias(name: string, options: Partial<FetchOptions> = {}) {
    const config = alias(name)
    const settings = await host(`http-${name}`, config)
    return {promise: fetch(await resolveOne(name, config), settings, options), settings}
  }

  it('refuses bytes whose hash is not the declared one', async () => {
    const other = Buffer.from(content)
    other.writeUInt8(other.readUInt8(MiB) ^ 1, MiB)
    server.serve('/wrong-hash', {data: other})
    const {promise, settings} = await fetchAlias('wrong-hash')
    await expect(promise).rejects.toMatchObject({
      code: 'HASH_MISMATCH',
      exitCode: 1,
      message: expect.stringContaining(
        `sha256 of the bytes is ${sha256(other)}, but the checksum given for it (images.wrong-hash.checksum) is ${sha256(content)}`,
      ),
      suggestions: [expect.stringContaining('Check the checksum you gave (images.wrong-hash.checksum)')],
    })
    expect(await contents(settings.cacheDir)).toEqual([])
  })

  it('fails a transfer the server cuts short, naming the image, and removes the .part', async () => {
    server.serve('/truncated', {cutAfter: MiB + 300, data: content})
    const {promise, settings} = await fetchAlias('truncated')
    const error = await promise.then(
      () => undefined,
      (error_: unknown) => error_ as Error & {code: string},
    )
    expect(error).toMatchObject({code: 'IMAGE_TRANSFER_FAILED'})
    expect(error?.message).toContain(`truncated (${imageUuid('truncated')})`)
    expect(error?.message).toMatch(/ended early|broke off/)
    expect(await contents(settings.cacheDir)).toEqual([])
  })

  it('refuses a download whose size is not the one the server announced', async () => {
    server.serve('/lying', {data: content, headLength: content.length + 4096})
    const {promise, settings} = await fetchAlias('lying')
    await expect(promise).rejects.toMatchObject({
      code: 'SIZE_MISMATCH',
      message: expect.stringContaining(
        `received ${content.length} bytes but the image service says ${content.length + 4096}`,
      ),
    })
    expect(await contents(settings.cacheDir)).toEqual([])
  })

  it('resumes with a Range request, and starts over when the server ignores Range', async () => {
    server.serve('/ranged', {data: content})
    const config = alias('ranged')
    const settings = await host('http-ranged', config)
    const part = path.join(settings.cacheDir, `${sha1(imageUuid('ranged'))}.part`)
    await mkdir(settings.cacheDir, {recursive: true})
    await writeFile(part, content.subarray(0, 777_777))
    const resumed = await fetch(await resolveOne('ranged', config), settings)
    expect(resumed).toMatchObject({downloadedBytes: content.length - 777_777, resumedFrom: 777_777, status: 'cached'})
    expect(server.gets('/ranged')).toMatchObject([{range: 'bytes=777777-', status: 206}])
    expect((await readFile(resumed.path)).equals(content)).toBe(true)

    server.serve('/no-ranges', {data: content, ranges: false})
    const config2 = alias('no-ranges')
    const settings2 = await host('http-no-ranges', config2)
    await mkdir(settings2.cacheDir, {recursive: true})
    await writeFile(path.join(settings2.cacheDir, `${sha1(imageUuid('no-ranges'))}.part`), content.subarray(0, 777_777))
    const restarted = await fetch(await resolveOne('no-ranges', config2), settings2)
    expect(restarted).toMatchObject({downloadedBytes: content.length, status: 'cached'})
    expect(restarted.resumedFrom).toBeUndefined()
    // One request: the 200 answer to the Range request is the whole image, used as it comes.
    expect(server.gets('/no-ranges')).toMatchObject([{range: 'bytes=777777-', status: 200}])
    expect((await readFile(restarted.path)).equals(content)).toBe(true)
  })
})

async function free(): Promise<number> {
  return (await node.statfs(tmpfs!)).available
}

/** Another writer: appends to `file` until the file system is full. */
async function fillUp(file: string): Promise<void> {
  const handle = await open(file, 'w')
  try {
    for (const size of [MiB, 4096]) {
      const chunk = Buffer.alloc(size, 1)
      for (;;) {
        const written = await handle.write(chunk).then(
          () => true,
          (error: unknown) => {
            if ((error as {code?: string}).code !== 'ENOSPC') throw error
            return false
          },
        )
        if (!written) break
      }
    }
  } finally {
    await handle.close()
  }
}

describe('a full disk (a real tmpfs as the instances path)', () => {
  // 72 MiB: the preflight keeps 64 MiB + 1 % free beyond what a write needs.
  const small = payload(4, 4 * MiB)
  let bigVirtual: GlanceImageJson
  let compressed: Buffer

  beforeAll(async () => {
    tmpfs = path.join(work, 'tmpfs')
    await mkdir(tmpfs)
    await execa('mount', ['-t', 'tmpfs', '-o', 'size=72M', 'tmpfs', tmpfs])
    const empty = path.join(work, 'big-virtual.qcow2')
    const dense = path.join(work, 'compressed.qcow2')
    await execa('qemu-img', ['create', '-q', '-f', 'qcow2', empty, '200M'])
    await execa('qemu-img', ['create', '-q', '-f', 'qcow2', dense, '80M'])
    // 80 MiB of non-zero data, compressed: a small download whose raw form cannot fit.
    await execa('qemu-io', ['-c', 'write -c -P 0xab 0 80M', dense])
    compressed = await readFile(dense)
    bigVirtual = await glance.uploadImage({diskFormat: 'qcow2', file: empty, name: 'big-virtual'})
  })

  it('refuses an image larger than the free space before downloading it, saying what is needed and free', async () => {
    server.serve('/too-big', {data: payload(5, 16 * MiB)})
    const config = baseConfig({
      images: {'too-big': {diskFormat: 'raw', id: imageUuid('too-big'), url: server.url('/too-big')}},
    })
    const settings = await host('too-big', config, tmpfs)
    await expect(fetch(await resolveOne('too-big', config), settings, {allowUnverified: true})).rejects.toMatchObject({
      code: 'NO_SPACE',
      message: expect.stringMatching(/it needs 80\.\d MiB in .*, 72\.0 MiB are free/),
    })
    expect(server.gets('/too-big')).toEqual([])
    expect(await contents(settings.cacheDir)).toEqual([])
  })

  it('counts the raw size of an image it will convert in the preflight (Glance virtual_size)', async () => {
    const settings = await host('big-virtual', baseConfig(), tmpfs)
    const downloads = await glanceDownloads(bigVirtual.id)
    await expect(fetch(await resolveOne(bigVirtual.id), settings)).rejects.toMatchObject({
      code: 'NO_SPACE',
      message: expect.stringMatching(/needs 2\d\d\.\d MiB/),
    })
    expect(await glanceDownloads(bigVirtual.id)).toBe(downloads)
    expect(await contents(settings.cacheDir)).toEqual([])
  })

  it('refuses to convert when the raw image cannot fit after the download, and removes the .part', async () => {
    // A URL source declares no virtual size, so only the download passes the preflight.
    server.serve('/compressed', {data: compressed})
    const config = baseConfig({
      images: {
        compressed: {
          checksum: `sha256:${sha256(compressed)}`,
          diskFormat: 'qcow2',
          id: imageUuid('compressed'),
          url: server.url('/compressed'),
        },
      },
    })
    const settings = await host('compressed', config, tmpfs)
    const before = await free()
    await expect(fetch(await resolveOne('compressed', config), settings)).rejects.toMatchObject({
      code: 'NO_SPACE',
      message: expect.stringContaining('raw'),
    })
    expect(server.gets('/compressed')).toHaveLength(1)
    expect(await contents(settings.cacheDir)).toEqual([])
    expect(await free()).toBe(before)
  })

  it('fails cleanly when another writer fills the disk during the download', async () => {
    server.serve('/filled', {data: small, rate: 4 * MiB})
    const config = baseConfig({
      images: {
        filled: {
          checksum: `sha256:${sha256(small)}`,
          diskFormat: 'raw',
          id: imageUuid('filled'),
          url: server.url('/filled'),
        },
      },
    })
    const settings = await host('filled', config, tmpfs)
    const filler = path.join(tmpfs!, 'filler')
    const pending = fetch(await resolveOne('filled', config), settings)
    pending.catch(() => {})
    await waitForSize(path.join(settings.cacheDir, `${sha1(imageUuid('filled'))}.part`), 256 * 1024)
    await fillUp(filler)
    try {
      await expect(pending).rejects.toMatchObject({
        code: 'NO_SPACE',
        message: expect.stringContaining(`no space left on local while writing image filled (${imageUuid('filled')})`),
      })
      expect(await contents(settings.cacheDir)).toEqual([])
    } finally {
      await rm(filler, {force: true})
    }
  })
})
