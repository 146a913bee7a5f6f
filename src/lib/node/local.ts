import type {Readable} from 'node:stream'

import {spawn} from 'node:child_process'
import {createHash} from 'node:crypto'
import {closeSync, constants, createReadStream, createWriteStream, existsSync, fstatSync, openSync} from 'node:fs'
import {lutimes, open, readFile, stat} from 'node:fs/promises'
import {basename, dirname} from 'node:path'

import type {
  CacheOwner,
  CacheScan,
  ConfigRead,
  ConfigReadRequest,
  DownloadExit,
  EntryStat,
  FileDownload,
  FsUsage,
  InstancesRoot,
  LockHandle,
  LockOptions,
  Node,
  NodeFileSink,
  ReadRange,
  RemoveOptions,
  RemoveOutcome,
  RenameOptions,
  RunOptions,
  RunResult,
  ScanRequest,
  UrlFetch,
  WriteFileOptions,
} from './types.js'

import {errnoCode, fromErrno, ImgcacheError, RemoteCommandError, unsafePath} from '../errors.js'
import {AgentClient} from './agent-client.js'
import {AGENT_PY} from './agent-py.js'
import {loadExeca} from './execa-lazy.js'
import {localCurlArgv, localCurlConfig} from './local-curl.js'
import {fsUsage, scanLocal, statEntry} from './local-scan.js'
import {readConfigLocal} from './read-config.js'
import {WRITEBACK_BYTES, writebackFs} from './writeback.js'

/** Programs run with a fixed locale so their messages can be parsed (as Nova does for qemu-img). */
const FIXED_LOCALE = {LANG: 'C', LC_ALL: 'C'}

/**
 * This machine as a compute node. Reads happen in this process. Changes under the instances path go
 * through the same python3 agent SSH nodes run (DESIGN §10): it makes them as the path's owner, never
 * through a link, so what imgcache leaves is nova's and a planted link cannot steer root. The one
 * write this process makes itself, a download's bytes, goes into a file the agent made: opened
 * without following a link and checked to be that very inode.
 */
export class LocalNode implements Node {
  readonly description = 'local'
  readonly isLocal = true
  private lockClient?: AgentClient
  private root?: InstancesRoot

  constructor(readonly name = 'local') {}

  async close(): Promise<void> {
    await this.lockClient?.close()
    this.lockClient = undefined
  }

  async digest(path: string, algorithm: string, options: {signal?: AbortSignal} = {}): Promise<string> {
    const hash = createHash(algorithm)
    try {
      const stream = createReadStream(path, {highWaterMark: 1024 * 1024, signal: options.signal})
      for await (const chunk of stream) hash.update(chunk as Buffer)
    } catch (error) {
      if (options.signal?.aborted) throw options.signal.reason
      throw fromErrno(error, 'cannot hash', path, {node: this.name})
    }

    return hash.digest('hex')
  }

  async downloadInto(request: UrlFetch): Promise<FileDownload> {
    if (request.resumeFrom) throw new ImgcacheError('BUG', 'downloadInto makes a new file; resume streams instead')
    const config = localCurlConfig(request)
    // qemu-img runs (through execa) as soon as the download ends: its module loading happens while
    // curl works, not after it. A failure to load shows where execa is used.
    loadExeca().catch(() => undefined)
    // As openWrite: the agent makes the file as the owner (O_EXCL, O_NOFOLLOW), this process opens
    // it without following a link and checks the inode. curl gets that descriptor as its stdout, so
    // it writes into the very file the agent made and opens no name itself.
    const made = await this.request<{dev: number; ino: number}>(
      'create',
      {append: false, path: request.dest},
      'cannot write',
      request.dest,
    )
    const fd = this.openMade(request.dest, made, constants.O_RDWR)
    const owner = await this.owner().catch((error: unknown) => {
      closeSync(fd)
      throw error
    })
    // curl needs no privilege: it runs as the owner when imgcache is root (as on SSH nodes). Its own
    // process group: a terminal's Ctrl-C reaches imgcache, which stops it and cleans up.
    const drop = owner && owner.euid === 0 && owner.uid !== 0 ? {gid: owner.gid, uid: owner.uid} : {}
    const [program, ...args] = localCurlArgv(request)
    const child = spawn(program!, args, {
      ...drop,
      detached: true,
      env: {...process.env, ...FIXED_LOCALE},
      stdio: ['pipe', fd, 'pipe'],
    })
    const {stderr: errors, stdin} = child
    if (!errors || !stdin) throw new ImgcacheError('BUG', 'curl was started without pipes')
    let stderr = ''
    errors.setEncoding('utf8')
    errors.on('data', (text: string) => {
      stderr = (stderr + text).slice(-8192)
    })
    // The secrets travel here, never in the argv.
    stdin.on('error', () => undefined)
    stdin.end(config)
    const exited = new Promise<DownloadExit>((resolve) => {
      // A missing setpriv or curl: as the shell's status for a program not found.
      child.once('error', (error) => resolve({exitCode: 127, signal: null, stderr: error.message}))
      child.once('close', (exitCode, signal) => resolve({exitCode, signal, stderr}))
    })
    let closed = false
    return {
      close() {
        if (closed) return
        closed = true
        closeSync(fd)
      },
      exited,
      fd,
      async stop() {
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
        await exited
      },
    }
  }

  async lock(path: string, options: LockOptions): Promise<LockHandle> {
    const agent = await this.owned()
    return agent.lock(path, options)
  }

  async mkdirp(path: string): Promise<void> {
    await this.request('mkdirp', {path}, 'cannot create directory', path)
  }

  async openRead(path: string, offset = 0): Promise<Readable> {
    const stream = createReadStream(path, {start: offset})
    await new Promise<void>((resolve, reject) => {
      stream.once('open', () => resolve())
      stream.once('error', (error) => reject(fromErrno(error, 'cannot read', path, {node: this.name})))
    })
    return stream
  }

  async openWrite(path: string, options: WriteFileOptions = {}): Promise<NodeFileSink> {
    // The agent makes the file as the owner (O_EXCL, O_NOFOLLOW); this process opens that name
    // without following a link and checks it holds the very inode the agent made: a name swapped
    // meanwhile is refused, never written through.
    const made = await this.request<{dev: number; ino: number}>(
      'create',
      {append: options.append === true, path},
      'cannot write',
      path,
    )
    const fd = this.openMade(path, made, constants.O_WRONLY | (options.append === true ? constants.O_APPEND : 0))
    // `flush`: the stream fsyncs the file before it closes, so "closed" means "on disk". `fs`:
    // the data goes to disk during the write (background fdatasync), not all at the final fsync.
    const stream = createWriteStream('', {
      fd,
      flush: true,
      fs: writebackFs(WRITEBACK_BYTES),
      highWaterMark: 1024 * 1024,
    })
    const closed = new Promise<void>((resolve, reject) => {
      stream.once('close', () => resolve())
      stream.once('error', reject)
    })
    closed.catch(() => undefined)
    return {
      abort() {
        stream.destroy()
      },
      finish: async () => {
        if (!stream.writableEnded) stream.end()
        try {
          await closed
          return (await stat(path)).size
        } catch (error) {
          throw fromErrno(error, 'cannot write', path, {node: this.name})
        }
      },
      stream,
    }
  }

  async readConfigFiles(request: ConfigReadRequest): Promise<ConfigRead> {
    return readConfigLocal(request)
  }

  async readRanges(ranges: ReadRange[]): Promise<Buffer[]> {
    return Promise.all(
      ranges.map(async ({length, offset, path}) => {
        const handle = await open(path, 'r').catch((error: unknown) => {
          if (errnoCode(error) === 'ENOENT') return
          throw fromErrno(error, 'cannot read', path, {node: this.name})
        })
        if (!handle) return Buffer.alloc(0)
        try {
          const buffer = Buffer.alloc(length)
          const {bytesRead} = await handle.read(buffer, 0, length, offset)
          return buffer.subarray(0, bytesRead)
        } finally {
          await handle.close()
        }
      }),
    )
  }

  async readTextFile(path: string): Promise<string | undefined> {
    try {
      return await readFile(path, 'utf8')
    } catch (error) {
      if (errnoCode(error) === 'ENOENT') return undefined
      throw fromErrno(error, 'cannot read', path, {node: this.name})
    }
  }

  async remove(path: string, options: RemoveOptions = {}): Promise<RemoveOutcome> {
    // Nova's age is os.path.getmtime: the agent follows a symlink for the age, never for the unlink.
    return this.request<RemoveOutcome>('remove', {olderThanMs: options.olderThanMs, path}, 'cannot remove', path)
  }

  async rename(from: string, to: string, options: RenameOptions = {}): Promise<void> {
    // link(2) + unlink with noReplace; then the directory is fsynced so the rename survives a crash.
    await this.request('rename', {from, noReplace: options.noReplace === true, to}, `cannot rename ${from} to`, to)
  }

  async run(argv: string[], options: RunOptions = {}): Promise<RunResult> {
    const [file, ...args] = argv
    if (!file) throw new ImgcacheError('BUG', 'run() needs a program')
    const owner = options.asOwner ? await this.owner() : undefined
    const execa = await loadExeca()
    // As the owner (libuv drops the supplementary groups with the ids), under nova's umask.
    const drop = owner && owner.euid === 0 && owner.uid !== 0 ? {gid: owner.gid, uid: owner.uid} : {}
    const [program, ...rest] = options.asOwner ? ['sh', '-c', 'umask 022 && exec "$@"', 'sh', file, ...args] : argv
    const result = await execa(program!, rest, {
      ...drop,
      cancelSignal: options.signal,
      env: {...FIXED_LOCALE, ...options.env},
      input: options.stdin,
      reject: false,
      stripFinalNewline: false,
      timeout: options.timeoutMs,
    })
    if (result.failed && result.exitCode === undefined) {
      const reason = result.timedOut
        ? `timed out after ${options.timeoutMs} ms`
        : result.isCanceled
          ? 'cancelled'
          : result.shortMessage
      throw new RemoteCommandError(`${file} could not run: ${reason}`, {argv, node: this.name, stderr: result.stderr})
    }

    const outcome = {exitCode: result.exitCode ?? 1, stderr: result.stderr, stdout: result.stdout}
    if (outcome.exitCode !== 0 && options.reject !== false) {
      throw new RemoteCommandError(`${basename(file)} exited with status ${outcome.exitCode}`, {
        argv,
        exitStatus: outcome.exitCode,
        node: this.name,
        stderr: outcome.stderr,
      })
    }

    return outcome
  }

  scan(request: ScanRequest): Promise<CacheScan> {
    return scanLocal(request)
  }

  async stat(path: string): Promise<EntryStat | undefined> {
    try {
      return await statEntry(dirname(path), basename(path))
    } catch (error) {
      if (errnoCode(error) === 'ENOENT') return undefined
      throw fromErrno(error, 'cannot stat', path, {node: this.name})
    }
  }

  async statfs(path: string): Promise<FsUsage> {
    try {
      return await fsUsage(path)
    } catch (error) {
      throw fromErrno(error, 'cannot stat the file system of', path, {node: this.name})
    }
  }

  async supportsDirectIo(dir: string): Promise<boolean> {
    // Nova's probe (nova/privsep/utils.py supports_direct_io): one aligned block written with O_DIRECT.
    return this.request<boolean>('direct_io', {dir}, 'cannot probe O_DIRECT in', dir)
  }

  async syncFile(path: string): Promise<void> {
    try {
      const handle = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW)
      try {
        await handle.sync()
      } finally {
        await handle.close()
      }
    } catch (error) {
      throw fromErrno(error, 'cannot flush', path, {node: this.name})
    }
  }

  async touch(paths: string[]): Promise<void> {
    // As Nova's privileged utime: this process's identity (a base libvirt gave to its qemu user is
    // not nova's to touch), but lutimes: a link has its own times set, its target is left alone.
    const now = new Date()
    for (const path of paths) {
      try {
        // eslint-disable-next-line no-await-in-loop
        await lutimes(path, now, now)
      } catch (error) {
        throw fromErrno(error, 'cannot touch', path, {node: this.name})
      }
    }
  }

  useInstancesPath(path: string, dirs: string[]): void {
    this.root = {dirs, path}
  }

  async writeFileAtomic(path: string, data: Buffer | string, mode = 0o644): Promise<void> {
    await this.request('write_atomic', {data: Buffer.from(data).toString('base64'), mode, path}, 'cannot write', path)
  }

  /** Open what the agent made at `path` (`flags`: how): no link followed, and the same inode, or refused. */
  private openMade(path: string, made: {dev: number; ino: number}, flags: number): number {
    let fd: number
    try {
      fd = openSync(path, flags | constants.O_NOFOLLOW | constants.O_NONBLOCK)
    } catch (error) {
      if (errnoCode(error) === 'ELOOP') throw unsafePath(path, 'is a symbolic link', this.name)
      throw fromErrno(error, 'cannot write', path, {node: this.name})
    }

    const st = fstatSync(fd)
    if (!st.isFile() || st.dev !== made.dev || st.ino !== made.ino) {
      closeSync(fd)
      throw unsafePath(path, 'was replaced while it was being opened', this.name)
    }

    return fd
  }

  /** The agent, started on first use, told the instances path (it makes every change as its owner). */
  private async owned(): Promise<AgentClient> {
    this.lockClient ??= this.startLockHelper()
    await this.lockClient.own(this.root)
    return this.lockClient
  }

  private async owner(): Promise<CacheOwner | undefined> {
    return (await this.owned()).own(this.root)
  }

  private async request<T>(op: string, body: Record<string, unknown>, what: string, path: string): Promise<T> {
    return (await this.owned()).request<T>(op, body, what, path)
  }

  /**
   * Locks are held by the same python3 agent SSH nodes run (only its lock operations are used here).
   * Spawned with node:child_process, as curl is: every populate waits for the agent before its first
   * byte, and loading execa first would put its module loading (0.05-0.2 s) on that path too.
   */
  private startLockHelper(): AgentClient {
    // Its own process group, as SSH nodes' agents: a terminal's Ctrl-C reaches imgcache only, which
    // then cleans up through the agent.
    const child = spawn(localPython(), ['-c', AGENT_PY], {detached: true, stdio: ['pipe', 'pipe', 'pipe']})
    const exited = new Promise<void>((resolve) => {
      // A python3 that cannot start ends the agent as one that exits does (LOCK_HELPER_EXITED).
      child.once('error', () => resolve())
      child.once('close', () => resolve())
    })
    // A write to an agent that is gone: its end is reported through `exited`.
    child.stdin.on('error', () => undefined)
    return new AgentClient(
      {
        exited,
        kill: () => child.kill('SIGKILL'),
        stderr: child.stderr,
        stdin: child.stdin,
        stdout: child.stdout,
      },
      this.name,
      (stderr) =>
        new ImgcacheError(
          'LOCK_HELPER_EXITED',
          `the lock helper of ${this.name} ended${stderr.trim() ? `: ${stderr.trim().split('\n').slice(-3).join(' ')}` : ''}`,
          {
            node: this.name,
            suggestions: ['imgcache needs python3 for nova-compatible locks.'],
          },
        ),
    )
  }
}

/**
 * The python3 the lock helper runs: the system's (/usr/bin/python3, the one nova-compute runs on a
 * distribution's packages) when there is one, else the first python3 on PATH. A version manager's
 * shim first on PATH (pyenv's runs two shell scripts first) would add a fifth of a second to every
 * command that takes a lock, for nothing: the helper needs only the standard library.
 */
function localPython(): string {
  return existsSync(SYSTEM_PYTHON) ? SYSTEM_PYTHON : 'python3'
}

const SYSTEM_PYTHON = '/usr/bin/python3'
