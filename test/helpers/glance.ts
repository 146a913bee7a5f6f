import got from 'got'
import {execFile} from 'node:child_process'
import {createReadStream} from 'node:fs'
import {mkdtemp, rm, stat, writeFile} from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import {promisify} from 'node:util'

import {
  type KeystoneHandle,
  readPid,
  runHarness,
  signalIfOurs,
  templateDir,
  trackProcess,
  untrackProcess,
} from './keystone.js'

/**
 * A throwaway glance-api (test/harness/glance.sh): sqlite, file store, no Keystone by default or
 * behind a KeystoneHandle. Start it in beforeAll (about 3.5 s with the template cache, 6 s cold).
 */

/** An image as Glance v2 returns it. */
export interface GlanceImageJson {
  checksum: null | string
  container_format: null | string
  disk_format: null | string
  id: string
  name: null | string
  os_hash_algo: null | string
  os_hash_value: null | string
  owner: null | string
  size: null | number
  status: string
  virtual_size: null | number
  visibility: string
}

export interface ImageData {
  /** Bytes in memory (small images). */
  data?: Buffer | string
  /** A file, streamed (big images). */
  file?: string
}

export interface CreateImageOptions {
  containerFormat?: string
  diskFormat?: string
  name?: string
  /** Token to act with (keystone mode); default: demo's. */
  token?: string
  visibility?: 'community' | 'private' | 'public' | 'shared'
}

export interface StartGlanceOptions {
  auth?: 'keystone' | 'noauth'
  /** Runs the harness under this prefix, e.g. [testnet.sh, exec, NET, glance] (a network namespace). */
  commandPrefix?: string[]
  /** Data directory (default: a new temp dir, removed by stop()). */
  dir?: string
  /** Bind address (GLANCE_HOST); requests from this process go there. */
  host?: string
  /** Required with auth: 'keystone'; its catalog is repointed at this glance. */
  keystone?: KeystoneHandle
  port?: number
  /** show_image_direct_url and show_multiple_locations: records carry direct_url and locations. */
  showLocations?: boolean
}

export interface GlanceHandle {
  /**
   * Add a location row to the image in glance's sqlite database. Stand-in for a Ceph store, which
   * cannot run here: glance-api refuses an rbd:// location through the API when no rbd store is
   * configured, but shows the row as it would show one its rbd store wrote (direct_url, locations).
   */
  addLocationRow(id: string, url: string): Promise<void>
  createImage(options?: CreateImageOptions): Promise<GlanceImageJson>
  /** Admin-only in Glance's default policy: uses admin's token in keystone mode. */
  deactivate(id: string): Promise<void>
  deleteImage(id: string, token?: string): Promise<void>
  dir: string
  getImage(id: string, token?: string): Promise<GlanceImageJson>
  /** Signal glance-api itself (its process group), e.g. SIGKILL mid-transfer. stop() still cleans up. */
  kill(signal?: NodeJS.Signals): void
  pid: number
  reactivate(id: string): Promise<void>
  /** PUT /stage: the image goes to `uploading` (data staged, not imported). */
  stageImage(id: string, data: ImageData, token?: string): Promise<void>
  stop(): Promise<void>
  /** PATCH properties (JSON patch `replace`, or `add` for ones not set), e.g. {os_hidden: true}. */
  updateImage(id: string, changes: Record<string, unknown>, token?: string): Promise<GlanceImageJson>
  /** Create and upload (status active); returns the record Glance has after the upload. */
  uploadImage(options: CreateImageOptions & ImageData & {diskFormat: string; name: string}): Promise<GlanceImageJson>
  /** Base URL without version, e.g. http://127.0.0.1:40123 */
  url: string
}

async function body(data: ImageData): Promise<{body: Buffer | NodeJS.ReadableStream; length: number}> {
  if (data.file !== undefined) return {body: createReadStream(data.file), length: (await stat(data.file)).size}
  if (data.data !== undefined) {
    const buffer = Buffer.isBuffer(data.data) ? data.data : Buffer.from(data.data)
    return {body: buffer, length: buffer.length}
  }

  throw new Error('give file or data')
}

export async function startGlance(options: StartGlanceOptions = {}): Promise<GlanceHandle> {
  const auth = options.auth ?? (options.keystone ? 'keystone' : 'noauth')
  if (auth === 'keystone' && !options.keystone) throw new Error("startGlance: auth 'keystone' needs a keystone handle")
  const ownDir = options.dir === undefined
  const dir = options.dir ?? (await mkdtemp(path.join(os.tmpdir(), 'imgcache-glance-')))
  const url = await runHarness(
    'glance.sh',
    ['start', String(options.port ?? 0), dir],
    {
      GLANCE_AUTH: auth,
      GLANCE_HOST: options.host,
      GLANCE_SHOW_LOCATIONS: options.showLocations ? 'true' : undefined,
      GLANCE_TEMPLATE_DIR: templateDir,
      KEYSTONE_DATA_DIR: options.keystone?.dir,
    },
    options.commandPrefix,
  )
  const pid = await readPid(path.join(dir, 'glance-api.pid'))
  const marker = `--config-file ${dir}/etc/`
  trackProcess(pid, marker)
  if (options.keystone) await options.keystone.setImageUrl(url)
  let stopped = false

  const keystone = options.keystone && auth === 'keystone' ? options.keystone : undefined
  const headers = async (token?: string, user: 'admin' | 'demo' = 'demo'): Promise<Record<string, string>> => {
    const t = token ?? (await keystone?.token(user))
    return t ? {'x-auth-token': t} : {}
  }

  const api = got.extend({prefixUrl: `${url}/v2`, timeout: {request: 300_000}})
  const action = async (id: string, what: 'deactivate' | 'reactivate') => {
    await api.post(`images/${id}/actions/${what}`, {headers: await headers(undefined, 'admin')})
  }

  const put = async (id: string, where: 'file' | 'stage', data: ImageData, token?: string) => {
    const {body: payload, length} = await body(data)
    await api.put(`images/${id}/${where}`, {
      body: payload as Buffer,
      headers: {
        ...(await headers(token)),
        'content-length': String(length),
        'content-type': 'application/octet-stream',
      },
    })
  }

  const handle: GlanceHandle = {
    async addLocationRow(id, url) {
      const script = [
        'import sqlite3, sys',
        'c = sqlite3.connect(sys.argv[1])',
        'c.execute("INSERT INTO image_locations (image_id, value, created_at, deleted, meta_data, status)"',
        "          \" VALUES (?, ?, datetime('now'), 0, '{}', 'active')\", (sys.argv[2], sys.argv[3]))",
        'c.commit()',
      ].join('\n')
      await promisify(execFile)('/usr/bin/python3', ['-c', script, path.join(dir, 'glance.sqlite'), id, url])
    },
    async createImage(opts: CreateImageOptions = {}) {
      const response = await api.post('images', {
        headers: await headers(opts.token),
        json: {
          container_format: opts.containerFormat ?? 'bare',
          disk_format: opts.diskFormat ?? 'raw',
          name: opts.name ?? 'imgcache-test',
          ...(opts.visibility ? {visibility: opts.visibility} : {}),
        },
        responseType: 'json',
      })
      return response.body as GlanceImageJson
    },
    deactivate: (id) => action(id, 'deactivate'),
    async deleteImage(id, token) {
      await api.delete(`images/${id}`, {headers: await headers(token)})
    },
    dir,
    async getImage(id, token) {
      const response = await api.get(`images/${id}`, {headers: await headers(token), responseType: 'json'})
      return response.body as GlanceImageJson
    },
    kill(signal: NodeJS.Signals = 'SIGKILL') {
      if (!signalIfOurs(pid, marker, signal)) throw new Error(`glance-api ${pid} of ${dir} is not running`)
    },
    pid,
    reactivate: (id) => action(id, 'reactivate'),
    stageImage: (id, data, token) => put(id, 'stage', data, token),
    async stop() {
      if (stopped) return
      stopped = true
      await runHarness('glance.sh', ['stop', dir], {})
      untrackProcess(pid)
      if (ownDir && !process.env.IMGCACHE_KEEP_TEST_DIRS) await rm(dir, {force: true, recursive: true})
    },
    async updateImage(id, changes, token) {
      const current = (await handle.getImage(id, token)) as unknown as Record<string, unknown>
      const ops = Object.entries(changes).map(([key, value]) => ({
        op: key in current ? 'replace' : 'add',
        path: `/${key}`,
        value,
      }))
      const response = await api.patch(`images/${id}`, {
        body: JSON.stringify(ops),
        headers: {...(await headers(token)), 'content-type': 'application/openstack-images-v2.1-json-patch'},
        responseType: 'json',
      })
      return response.body as GlanceImageJson
    },
    async uploadImage(opts) {
      const image = await handle.createImage(opts)
      await put(image.id, 'file', opts, opts.token)
      return handle.getImage(image.id, opts.token)
    },
    url,
  }
  return handle
}

/**
 * The three images the precache tests fetch, uploaded to `glance`: a qcow2 (converted to raw on the
 * nodes) made by qemu-img from `content.qcow2`, a raw one, and the corpus's qcow2 with a backing file
 * (refused everywhere). Names start with `prefix`; files are written in `dir`.
 */
export async function uploadPrecacheImages(
  glance: GlanceHandle,
  dir: string,
  content: {qcow2: Buffer; raw: Buffer},
  unsafeFile: string,
  prefix: string,
): Promise<[GlanceImageJson, GlanceImageJson, GlanceImageJson]> {
  const rawFile = path.join(dir, 'content.raw')
  const qcow2File = path.join(dir, 'content.qcow2')
  await writeFile(rawFile, content.qcow2)
  await promisify(execFile)('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', rawFile, qcow2File])
  return Promise.all([
    glance.uploadImage({diskFormat: 'qcow2', file: qcow2File, name: `${prefix}-qcow2`}),
    glance.uploadImage({data: content.raw, diskFormat: 'raw', name: `${prefix}-raw`}),
    glance.uploadImage({diskFormat: 'qcow2', file: unsafeFile, name: `${prefix}-backing-file`}),
  ])
}
