import type {Readable, Writable} from 'node:stream'

import {createInterface} from 'node:readline'

import type {LockHandle, LockOptions} from './types.js'

import {ImgcacheError} from '../errors.js'

/** The running helper: its pipes and a way to learn that it ended. */
export interface HelperProcess {
  readonly exited: Promise<unknown>
  kill(): void
  readonly stderr?: Readable
  readonly stdin: Writable
  readonly stdout: Readable
}

interface Reply {
  error?: string
  id?: number
  message?: string
  ok?: boolean
  ready?: boolean
}

/**
 * Talks to one lock helper (see lock-helper.ts). Also the in-process half of the lock: POSIX locks
 * never conflict inside one process, and closing any descriptor of a locked file drops the lock, so
 * two tasks of this process that want the same file queue here rather than in the helper.
 */
export class LockClient {
  private closed = false
  private readonly held = new Map<string, Promise<void>>()
  private nextId = 1
  private readonly ready: Promise<void>
  private readonly replies = new Map<number, (reply: Reply) => void>()
  private stderrText = ''

  constructor(
    private readonly helper: HelperProcess,
    private readonly nodeName: string,
  ) {
    let resolveReady!: () => void
    let rejectReady!: (error: Error) => void
    this.ready = new Promise<void>((resolve, reject) => {
      resolveReady = resolve
      rejectReady = reject
    })
    // Observed by lock(); keep an early failure from being an unhandled rejection.
    this.ready.catch(() => {})
    helper.stderr?.on('data', (chunk: Buffer) => {
      this.stderrText = (this.stderrText + chunk.toString('utf8')).slice(-2000)
    })
    const lines = createInterface({crlfDelay: Infinity, input: helper.stdout})
    lines.on('line', (line) => {
      let reply: Reply
      try {
        reply = JSON.parse(line) as Reply
      } catch {
        return
      }

      if (reply.ready) resolveReady()
      else if (reply.id !== undefined) this.replies.get(reply.id)?.(reply)
    })
    helper.exited.then(
      () => this.onExit(rejectReady),
      () => this.onExit(rejectReady),
    )
  }

  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    this.helper.stdin.end()
    const timer = setTimeout(() => this.helper.kill(), 5000)
    await this.helper.exited.catch(() => {})
    clearTimeout(timer)
  }

  async lock(path: string, options: LockOptions): Promise<LockHandle> {
    const deadline = Date.now() + options.timeoutMs
    // In-process queue: wait for our own holder of the same file first.
    for (let previous = this.held.get(path); previous; previous = this.held.get(path)) {
      // eslint-disable-next-line no-await-in-loop
      await raceTimeout(previous, deadline - Date.now(), options.signal)
      if (Date.now() >= deadline && this.held.has(path)) throw busy(path, this.nodeName, options.timeoutMs)
    }

    let release!: () => void
    this.held.set(
      path,
      new Promise<void>((resolve) => {
        release = resolve
      }),
    )
    try {
      await this.ready
      const reply = await this.request(
        {op: 'lock', path, timeout: Math.max(0, deadline - Date.now()) / 1000},
        options.signal,
      )
      if (!reply.ok) {
        if (reply.error === 'busy') throw busy(path, this.nodeName, options.timeoutMs)
        if (reply.error === 'cancelled') throw options.signal?.reason ?? new Error('lock wait cancelled')
        throw new ImgcacheError('LOCK_FAILED', `cannot take the lock ${path}: ${reply.message ?? reply.error}`, {
          node: this.nodeName,
          path,
          suggestions: ['Check that the locks directory exists and is writable by this user.'],
        })
      }
    } catch (error) {
      this.held.delete(path)
      release()
      throw error
    }

    let released = false
    return {
      path,
      release: async () => {
        if (released) return
        released = true
        try {
          if (!this.closed) await this.request({op: 'unlock', path})
        } finally {
          this.held.delete(path)
          release()
        }
      },
    }
  }

  private onExit(rejectReady: (error: Error) => void) {
    const error = new ImgcacheError(
      'LOCK_HELPER_EXITED',
      `the lock helper on ${this.nodeName} ended${this.stderrText.trim() ? `: ${this.stderrText.trim().split('\n').slice(-3).join(' ')}` : ''}`,
      {node: this.nodeName, suggestions: ['imgcache needs python3 on every node for nova-compatible locks.']},
    )
    rejectReady(error)
    for (const [, resolve] of this.replies) resolve({error: 'exited', message: error.message, ok: false})
    this.replies.clear()
  }

  private request(body: Record<string, unknown>, signal?: AbortSignal): Promise<Reply> {
    if (this.closed) return Promise.resolve({error: 'exited', message: 'lock helper closed', ok: false})
    const id = this.nextId++
    return new Promise<Reply>((resolve) => {
      const onAbort = () => {
        this.helper.stdin.write(`${JSON.stringify({id: this.nextId++, op: 'cancel', target: id})}\n`)
      }

      this.replies.set(id, (reply) => {
        this.replies.delete(id)
        signal?.removeEventListener('abort', onAbort)
        resolve(reply)
      })
      signal?.addEventListener('abort', onAbort, {once: true})
      this.helper.stdin.write(`${JSON.stringify({...body, id})}\n`)
    })
  }
}

function busy(path: string, node: string, timeoutMs: number): ImgcacheError {
  return new ImgcacheError(
    'LOCK_BUSY',
    `${path} is locked by another process (waited ${Math.round(timeoutMs / 1000)} s)`,
    {
      node,
      path,
      suggestions: [
        'nova-compute or another imgcache is working on this file; run again later, or raise --lock-timeout.',
      ],
    },
  )
}

async function raceTimeout(promise: Promise<void>, ms: number, signal?: AbortSignal): Promise<void> {
  if (ms <= 0) return
  let timer: NodeJS.Timeout | undefined
  let onAbort: (() => void) | undefined
  try {
    await Promise.race([
      promise,
      new Promise<void>((resolve) => {
        timer = setTimeout(resolve, ms)
      }),
      new Promise<void>((_, reject) => {
        if (!signal) return
        onAbort = () => reject(signal.reason)
        if (signal.aborted) onAbort()
        else signal.addEventListener('abort', onAbort, {once: true})
      }),
    ])
  } finally {
    clearTimeout(timer)
    if (onAbort) signal?.removeEventListener('abort', onAbort)
  }
}
