import type {Readable, Writable} from 'node:stream'

import {createInterface} from 'node:readline'

import type {CacheOwner, InstancesRoot, LockHandle, LockOptions} from './types.js'

import {fromErrno, ImgcacheError, unsafePath, UsageError} from '../errors.js'

/** The running agent (agent-py.ts): its pipes and a way to learn that it ended. */
export interface AgentProcess {
  readonly exited: Promise<unknown>
  kill(): void
  readonly stderr?: Readable
  readonly stdin: Writable
  readonly stdout: Readable
}

interface Reply {
  errno?: string
  error?: string
  id?: number
  message?: string
  ok?: boolean
  /** With `error: "unsafe"`: the path refused. */
  path?: string
  ready?: boolean
  result?: unknown
}

/** Builds the error for an agent that is gone (connection lost, python3 missing, killed). */
export type GoneError = (stderr: string) => ImgcacheError

/**
 * Talks to one agent. Also the in-process half of the lock: POSIX locks never conflict inside one
 * process, and closing any descriptor of a locked file drops the lock, so two tasks of this process
 * that want the same file queue here rather than in the agent.
 */
export class AgentClient {
  private closed = false
  private gone?: ImgcacheError
  private readonly held = new Map<string, Promise<void>>()
  private nextId = 1
  private readonly owners = new Map<string, Promise<CacheOwner>>()
  private readonly ready: Promise<void>
  private readonly replies = new Map<number, (reply: Reply) => void>()
  private stderrText = ''

  constructor(
    private readonly agent: AgentProcess,
    private readonly nodeName: string,
    private readonly goneError: GoneError,
  ) {
    let resolveReady!: () => void
    let rejectReady!: (error: Error) => void
    this.ready = new Promise<void>((resolve, reject) => {
      resolveReady = resolve
      rejectReady = reject
    })
    // Observed by every request; keep an early failure from being an unhandled rejection.
    this.ready.catch(() => undefined)
    agent.stderr?.on('data', (chunk: Buffer) => {
      this.stderrText = (this.stderrText + chunk.toString('utf8')).slice(-4000)
    })
    const lines = createInterface({crlfDelay: Infinity, input: agent.stdout})
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
    const onExit = () => {
      this.gone = this.goneError(this.stderrText)
      rejectReady(this.gone)
      for (const [, resolve] of this.replies) resolve({error: 'gone', ok: false})
      this.replies.clear()
    }

    agent.exited.then(onExit, onExit)
  }

  /** Ends the agent: its stdin closes, it exits, every lock it holds is released. */
  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    this.agent.stdin.end()
    const timer = setTimeout(() => this.agent.kill(), 5000)
    await this.agent.exited.catch(() => undefined)
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
      const reply = await this.send(
        {op: 'lock', path, timeout: Math.max(0, deadline - Date.now()) / 1000},
        options.signal,
      )
      if (!reply.ok) {
        if (reply.error === 'busy') throw busy(path, this.nodeName, options.timeoutMs)
        if (reply.error === 'cancelled') throw options.signal?.reason ?? new Error('lock wait cancelled')
        throw this.failure(reply, `cannot take the lock ${path}`, path, [
          'Check that the locks directory exists and is writable by this user.',
        ])
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
          if (!this.closed && !this.gone) await this.send({op: 'unlock', path})
        } finally {
          this.held.delete(path)
          release()
        }
      },
    }
  }

  /**
   * DESIGN §10: tell the agent the instances path (once per path and agent): from then on it makes
   * every change under it as the path's owner. Refused (SafetyError) when a linked directory is not
   * root's or the owner's; a usage error when imgcache is neither root nor the owner, since it could
   * only leave files nova-compute cannot use.
   */
  async own(root: InstancesRoot | undefined): Promise<CacheOwner | undefined> {
    if (!root) return undefined
    const key = JSON.stringify(root)
    let owned = this.owners.get(key)
    if (!owned) {
      owned = this.request<CacheOwner>(
        'own',
        {dirs: root.dirs, instancesPath: root.path},
        'cannot check the owner of',
        root.path,
      ).then((owner) => {
        if (owner.euid !== 0 && owner.euid !== owner.uid) {
          throw new UsageError(
            'NOT_OWNER',
            `imgcache runs as uid ${owner.euid} on ${this.nodeName}, but ${root.path} belongs to uid ${owner.uid}: what it made there would not be usable by nova-compute`,
            {
              node: this.nodeName,
              path: root.path,
              suggestions: [`Run imgcache as root, or as the owner of ${root.path} (uid ${owner.uid}).`],
            },
          )
        }

        return owner
      })
      this.owners.set(key, owned)
    }

    return owned
  }

  /** One operation of the agent (scan, stat, remove, ...); its OS errors come back as sentences. */
  async request<T>(op: string, body: Record<string, unknown>, what: string, path: string): Promise<T> {
    const reply = await this.send({...body, op})
    if (!reply.ok) throw this.failure(reply, what, path)
    return reply.result as T
  }

  private failure(reply: Reply, what: string, path: string, suggestions: string[] = []): ImgcacheError {
    if (reply.error === 'gone') return this.gone ?? this.goneError(this.stderrText)
    if (reply.error === 'unsafe')
      return unsafePath(reply.path ?? path, reply.message ?? 'is not safe to use', this.nodeName)
    if (reply.error === 'os' && reply.errno) {
      const cause = Object.assign(new Error(reply.message ?? reply.errno), {code: reply.errno})
      return fromErrno(cause, what, path, {node: this.nodeName, suggestions})
    }

    return new ImgcacheError(
      'AGENT_FAILED',
      `${what} ${path} on ${this.nodeName}: ${reply.message ?? reply.error ?? 'failed'}`,
      {
        node: this.nodeName,
        path,
        suggestions,
      },
    )
  }

  private async send(body: Record<string, unknown>, signal?: AbortSignal): Promise<Reply> {
    await this.ready
    if (this.gone) throw this.gone
    if (this.closed) return {error: 'gone', ok: false}
    const id = this.nextId++
    return new Promise<Reply>((resolve) => {
      const onAbort = () => {
        this.agent.stdin.write(`${JSON.stringify({id: this.nextId++, op: 'cancel', target: id})}\n`)
      }

      this.replies.set(id, (reply) => {
        this.replies.delete(id)
        signal?.removeEventListener('abort', onAbort)
        resolve(reply)
      })
      signal?.addEventListener('abort', onAbort, {once: true})
      this.agent.stdin.write(`${JSON.stringify({...body, id})}\n`)
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
