import fs from 'node:fs'
import {mkdtemp, readFile, rm} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import path from 'node:path'
import {Readable} from 'node:stream'
import {pipeline} from 'node:stream/promises'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {writebackFs} from '../../src/lib/node/writeback.js'

const KiB = 1024
let dir: string

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'imgcache-writeback-'))
})

afterAll(async () => {
  await rm(dir, {force: true, recursive: true})
})

/** 40 chunks of 16 KiB, each filled with its index. */
function chunks(): Buffer[] {
  return Array.from({length: 40}, (_, i) => Buffer.alloc(16 * KiB, i))
}

/** A sync that returns at once (a real one can take seconds on a busy disk). */
const quickSync = ((_fd: number, cb: fs.NoParamCallback) => {
  setImmediate(() => cb(null))
}) as typeof fs.fdatasync

/** The real fs, recording the calls that matter here, with `fdatasync` standing in for the real one. */
function recordingFs(fdatasync: typeof fs.fdatasync = quickSync) {
  const calls: string[] = []
  const base = {
    close: ((fd: number, cb: fs.NoParamCallback) => {
      calls.push('close')
      fs.close(fd, cb)
    }) as typeof fs.close,
    fdatasync: ((fd: number, cb: fs.NoParamCallback) => {
      calls.push('fdatasync')
      fdatasync(fd, cb)
    }) as typeof fs.fdatasync,
    fsync: ((fd: number, cb: fs.NoParamCallback) => {
      calls.push('fsync')
      quickSync(fd, cb)
    }) as typeof fs.fsync,
    open: fs.open,
    write: fs.write,
    writev: fs.writev,
  }
  return {base, calls}
}

describe('writebackFs: a WriteStream that syncs as it goes', () => {
  it('writes the same bytes, syncs in the background along the way, and still fsyncs before closing', async () => {
    const file = path.join(dir, 'plain')
    const {base, calls} = recordingFs()
    const stream = fs.createWriteStream(file, {flush: true, fs: writebackFs(100 * KiB, base), highWaterMark: 64 * KiB})
    await pipeline(Readable.from(chunks()), stream)
    // Buffer.equals: vitest's deep equality takes seconds over 640 KiB.
    expect((await readFile(file)).equals(Buffer.concat(chunks()))).toBe(true)
    expect(calls.filter((c) => c === 'fdatasync').length).toBeGreaterThanOrEqual(2)
    expect(calls.slice(-2)).toEqual(['fsync', 'close'])
  })

  it('appends like the stream it replaces (a resumed .part)', async () => {
    const file = path.join(dir, 'append')
    await pipeline(Readable.from([Buffer.from('head-')]), fs.createWriteStream(file))
    const stream = fs.createWriteStream(file, {flags: 'a', flush: true, fs: writebackFs(1, recordingFs().base)})
    await pipeline(Readable.from([Buffer.from('tail')]), stream)
    expect(await readFile(file, 'utf8')).toBe('head-tail')
  })

  it('fails the stream when a background sync fails, and still closes the file', async () => {
    const file = path.join(dir, 'eio')
    const eio = Object.assign(new Error('EIO: i/o error, fdatasync'), {code: 'EIO'})
    const {base, calls} = recordingFs(((_fd: number, cb: fs.NoParamCallback) => {
      setImmediate(() => cb(eio))
    }) as typeof fs.fdatasync)
    const stream = fs.createWriteStream(file, {flush: true, fs: writebackFs(100 * KiB, base), highWaterMark: 64 * KiB})
    await expect(pipeline(Readable.from(chunks()), stream)).rejects.toBe(eio)
    await new Promise<void>((resolve) => {
      if (stream.closed) resolve()
      else stream.once('close', () => resolve())
    })
    expect(calls.filter((c) => c === 'fdatasync')).toEqual(['fdatasync'])
    expect(calls.at(-1)).toBe('close')
  })

  it('closes only once a background sync has returned', async () => {
    const file = path.join(dir, 'slow-sync')
    let release: (() => void) | undefined
    const {base, calls} = recordingFs(((_fd: number, cb: fs.NoParamCallback) => {
      release = () => {
        calls.push('fdatasync returned')
        cb(null)
      }
    }) as typeof fs.fdatasync)
    const stream = fs.createWriteStream(file, {fs: writebackFs(16 * KiB, base)})
    const done = pipeline(Readable.from(chunks().slice(0, 2)), stream)
    await new Promise((resolve) => {
      setTimeout(resolve, 50)
    })
    expect(calls).not.toContain('close')
    release?.()
    await done
    expect(calls.slice(-2)).toEqual(['fdatasync returned', 'close'])
  })
})
