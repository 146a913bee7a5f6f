import type {execa as Execa} from 'execa'
import type {Readable} from 'node:stream'

import {createHash} from 'node:crypto'
import {createReadStream, createWriteStream, existsSync} from 'node:fs'
import {link, lstat, mkdir, open, readFile, rename, stat, unlink, utimes} from 'node:fs/promises'
import {basename, dirname, join} from 'node:path'

import type {
  CacheScan,
  ConfigRead,
  ConfigReadRequest,
  EntryStat,
  FsUsage,
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
  WriteFileOptions,
} from './types.js'

import {errnoCode, fromErrno, ImgcacheError, RemoteCommandError} from '../errors.js'
import {AgentClient} from './agent-client.js'
import {AGENT_PY} from './agent-py.js'
import {loadExeca} from './execa-lazy.js'
import {fsUsage, scanLocal, statEntry} from './local-scan.js'
import {readConfigLocal} from './read-config.js'
import {writebackFs} from './writeback.js'

/** Bytes written to a file between two background fdatasyncs (see writebackFs). */
const WRITEBACK_BYTES = 64 * 1024 * 1024
/** Programs run with a fixed locale so their messages can be parsed (as Nova does for qemu-img). */
const FIXED_LOCALE = {LANG: 'C', LC_ALL: 'C'}

/** This machine as a compute node. */
export class LocalNode implements Node {
  readonly description = 'local'
  readonly isLocal = true
  private lockClient?: AgentClient

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

  async lock(path: string, options: LockOptions): Promise<LockHandle> {
    if (!this.lockClient) {
      const execa = await loadExeca()
      // Checked again after the await: a concurrent lock() may have started the helper meanwhile.
      this.lockClient ??= this.startLockHelper(execa)
    }

    return this.lockClient.lock(path, options)
  }

  async mkdirp(path: string): Promise<void> {
    try {
      await mkdir(path, {recursive: true})
    } catch (error) {
      throw fromErrno(error, 'cannot create directory', path, {node: this.name})
    }
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
    // `flush`: the stream fsyncs the file before it closes, so "closed" means "on disk". `fs`:
    // the data goes to disk during the write (background fdatasync), not all at the final fsync.
    const stream = createWriteStream(path, {
      flags: options.append ? 'a' : 'w',
      flush: true,
      fs: writebackFs(WRITEBACK_BYTES),
      highWaterMark: 1024 * 1024,
      mode: options.mode ?? 0o644,
    })
    await new Promise<void>((resolve, reject) => {
      stream.once('open', () => resolve())
      stream.once('error', (error) => reject(fromErrno(error, 'cannot write', path, {node: this.name})))
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
    let l
    try {
      l = await lstat(path)
    } catch (error) {
      if (errnoCode(error) === 'ENOENT') return 'missing'
      throw fromErrno(error, 'cannot remove', path, {node: this.name})
    }

    if (l.isDirectory())
      throw fromErrno(Object.assign(new Error('is a directory'), {code: 'EISDIR'}), 'cannot remove', path)
    if (options.olderThanMs !== undefined) {
      // Nova's age is os.path.getmtime: it follows a symlink to its target.
      const mtimeMs = l.isSymbolicLink() ? ((await stat(path).catch(() => l)) ?? l).mtimeMs : l.mtimeMs
      if (mtimeMs > options.olderThanMs) return 'too-young'
    }

    try {
      await unlink(path)
      return 'removed'
    } catch (error) {
      if (errnoCode(error) === 'ENOENT') return 'missing'
      throw fromErrno(error, 'cannot remove', path, {node: this.name})
    }
  }

  async rename(from: string, to: string, options: RenameOptions = {}): Promise<void> {
    try {
      if (options.noReplace) {
        // link(2) fails with EEXIST instead of replacing: a file someone made meanwhile is never lost.
        await link(from, to)
        await unlink(from)
      } else {
        await rename(from, to)
      }
    } catch (error) {
      throw fromErrno(error, `cannot rename ${from} to`, to, {node: this.name})
    }

    // The rename itself must survive a crash: fsync the directory that holds the new name.
    const dir = await open(dirname(to), 'r').catch(() => undefined)
    if (dir) {
      await dir.sync().catch(() => undefined)
      await dir.close()
    }
  }

  async run(argv: string[], options: RunOptions = {}): Promise<RunResult> {
    const [file, ...args] = argv
    if (!file) throw new ImgcacheError('BUG', 'run() needs a program')
    const execa = await loadExeca()
    const result = await execa(file, args, {
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
    // Nova's probe (nova/privsep/utils.py supports_direct_io): write one aligned block with O_DIRECT.
    const probe = join(dir, `.directio.test.imgcache.${process.pid}`)
    const result = await this.run(['dd', 'if=/dev/zero', `of=${probe}`, 'bs=4096', 'count=1', 'oflag=direct'], {
      reject: false,
    })
    await unlink(probe).catch(() => undefined)
    return result.exitCode === 0
  }

  async syncFile(path: string): Promise<void> {
    try {
      const handle = await open(path, 'r')
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
    const now = new Date()
    for (const path of paths) {
      try {
        // eslint-disable-next-line no-await-in-loop
        await utimes(path, now, now)
      } catch (error) {
        throw fromErrno(error, 'cannot touch', path, {node: this.name})
      }
    }
  }

  async writeFileAtomic(path: string, data: Buffer | string, mode = 0o644): Promise<void> {
    const temporary = join(dirname(path), `.${basename(path)}.${process.pid}.tmp`)
    try {
      const handle = await open(temporary, 'w', mode)
      try {
        await handle.writeFile(data)
        await handle.sync()
      } finally {
        await handle.close()
      }

      await rename(temporary, path)
    } catch (error) {
      await unlink(temporary).catch(() => {})
      throw fromErrno(error, 'cannot write', path, {node: this.name})
    }
  }

  /** Locks are held by the same python3 agent SSH nodes run (only its lock operations are used here). */
  private startLockHelper(execa: typeof Execa): AgentClient {
    const child = execa(localPython(), ['-c', AGENT_PY], {buffer: false, reject: false, stdin: 'pipe'})
    return new AgentClient(
      {
        exited: child,
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
