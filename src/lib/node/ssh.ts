import type {ResultPromise} from 'execa'

import {posix} from 'node:path'
import {type Readable, Writable} from 'node:stream'
import {finished} from 'node:stream/promises'

import type {
  CacheOwner,
  CacheScan,
  ConfigRead,
  ConfigReadRequest,
  EntryStat,
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

import {ImgcacheError, RemoteCommandError, unsafePath} from '../errors.js'
import {RedirectedError} from '../redirect.js'
import {AgentClient} from './agent-client.js'
import {AGENT_BOOT_PY, AGENT_PY} from './agent-py.js'
import {aria2Argv, aria2Error, type Aria2Progress, parseAria2Summary, type TorrentFetch} from './aria2.js'
import {loadedExeca, loadExeca} from './execa-lazy.js'
import {CURL_COMMON, CURL_REDIRECT_MARK, curlRedirectArgv, localCurlConfig} from './local-curl.js'
import {RUN_AS_PY, WRITER_PY, WRITER_UNSAFE_STATUS} from './owner-py.js'
import {classifySshFailure, SSH_FAILURE_STATUS, sshArgv, sshControlArgv, type SshTarget} from './ssh-args.js'

/** How often a node-side download is looked at: its progress, and whether curl has ended. */
const FETCH_POLL_MS = 250

/** ssh failure kinds that mean "the node cannot be reached": precache reports it `skipped`. */
export const UNREACHABLE_CODES = new Set(['SSH_DNS', 'SSH_REFUSED', 'SSH_TIMEOUT', 'SSH_UNREACHABLE'])

/** Whether an error says the node could not be reached at all (as opposed to failing once reached). */
export function isUnreachable(error: unknown): boolean {
  return error instanceof ImgcacheError && UNREACHABLE_CODES.has(error.code)
}

function sshError(node: SshNode, stderr: string, doing: string): ImgcacheError {
  const failure = classifySshFailure(SSH_FAILURE_STATUS, stderr)
  return new ImgcacheError(
    `SSH_${failure.kind.toUpperCase().replaceAll('-', '_')}`,
    `${node.name} (${node.description}): ${failure.message}${doing ? ` (while ${doing})` : ''}`,
    {
      node: node.name,
      suggestions: failure.suggestions,
    },
  )
}

/**
 * Wait `ms`, or less when `signal` aborts. The abort listener goes when the wait ends: a download
 * polled every FETCH_POLL_MS for an hour would otherwise leave thousands on the attempt's signal
 * (and Node's "possible EventTarget memory leak" warning on stderr).
 */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const onAbort = () => {
      clearTimeout(timer)
      resolve()
    }

    // The listener goes with the timer: a poll loop would otherwise pile one up per round.
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort)
      resolve()
    }, ms)
    signal?.addEventListener('abort', onAbort, {once: true})
  })
}

/**
 * curl as nova-compute's own download would fetch: fail on HTTP errors, follow redirects (but with
 * a token none: curlRedirectArgv, and nodeFetchTransfer re-issues the request), abort a stall. The URL (a signed URL's query is a secret) and the headers (the token) are not in its argv:
 * they reach curl on its stdin as a config file (`--config -`, localCurlConfig), as on the local host.
 * `--disable` first: no ~/.curlrc on the node changes what is fetched.
 */
export function curlArgv(request: UrlFetch): string[] {
  return [
    'curl',
    '--disable',
    ...CURL_COMMON,
    ...curlRedirectArgv(request, true),
    '--speed-limit',
    '1',
    '--speed-time',
    String(request.stallSeconds),
    ...(request.resumeFrom ? ['--continue-at', String(request.resumeFrom)] : []),
    '--output',
    request.dest,
    '--config',
    '-',
  ]
}

/** What a failed curl means, by its exit status (curl(1) EXIT CODES). */
export function curlError(
  node: {description: string; name: string},
  request: UrlFetch,
  exitCode: number,
  stderr: string,
): ImgcacheError {
  const where = `${node.name}`
  const host = (() => {
    try {
      return new URL(request.url).host
    } catch {
      return 'the image service'
    }
  })()
  const lines = stderr.trim().split('\n')
  const location = lines.find((line) => line.startsWith(CURL_REDIRECT_MARK))?.slice(CURL_REDIRECT_MARK.length)
  const said = lines.findLast((line) => !line.startsWith(CURL_REDIRECT_MARK))?.replace(/^curl: \(\d+\)\s*/, '') ?? ''
  const make = (code: string, message: string, suggestions: string[]) =>
    new ImgcacheError(code, `${where}: ${message}${said ? ` (curl: ${said})` : ''}`, {node: node.name, suggestions})
  switch (exitCode) {
    case 6:
    case 7: {
      return make('NODE_CANNOT_REACH_SOURCE', `the node cannot reach ${host}`, [
        'Check the route from the node to the image service, or relay the bytes through imgcache: --via relay.',
      ])
    }

    case 18:
    case 52:
    case 56: {
      return make('TRANSFER_FAILED', `the download from ${host} was cut short`, [
        'Run the same command again: it resumes the partial download.',
      ])
    }

    case 22: {
      return make('SOURCE_HTTP_ERROR', `${host} refused the download`, [
        'Check that the image is active and the credentials may read it (--verbose shows where they come from).',
      ])
    }

    case 23: {
      return make('NO_SPACE', `cannot write ${request.dest} (disk full or not writable)`, [
        'Free space in the cache dir on that node (imgcache prune) and try again.',
      ])
    }

    case 28: {
      return make('TRANSFER_STALLED', `the download from ${host} stalled for ${request.stallSeconds} s`, [
        'Check the image service and the network between it and the node, then run again.',
      ])
    }

    case 33: {
      return make('RANGE_UNSUPPORTED', `${host} does not support resuming (HTTP Range)`, [
        'The download starts over from the beginning.',
      ])
    }

    case 47: {
      // A redirect curl was told not to follow (a request with a token): imgcache follows it.
      if (location) return new RedirectedError(location, {node: node.name})
      return make('REDIRECT_LOOP', `${host} redirected the download more than curl follows (a redirect loop)`, [
        'Check the image service endpoint and any proxy in front of it: its redirects lead back to themselves.',
      ])
    }

    case 127: {
      return make('NODE_NO_CURL', 'curl is not installed on the node', [
        'Install curl on the node, or relay the bytes through imgcache: --via relay.',
      ])
    }

    default: {
      return make('TRANSFER_FAILED', `curl exited with status ${exitCode}`, [
        'Run the same command again; see the curl message for the cause.',
      ])
    }
  }
}

/** A child's collected output as text, whether execa gave it as a string or as bytes. */
function textOf(output: unknown): string {
  if (output === undefined || output === null) return ''
  if (output instanceof Uint8Array)
    return Buffer.from(output.buffer, output.byteOffset, output.byteLength).toString('utf8')
  return String(output)
}

/**
 * The program env(1) or sh could not find, from its message (exit status 127): GNU env's
 * "env: 'qemu-img': No such file or directory" (curly quotes in a UTF-8 locale), sh's "qemu-img: not found".
 */
export function programNotFound(stderr: string): string | undefined {
  const env = /^env: ['‘"]?(.+?)['’"]?: No such file or directory$/m.exec(stderr)
  if (env) return env[1]
  return /^(?:\S+: (?:\d+: )?)?(\S+): (?:command )?not found$/m.exec(stderr)?.[1]
}

/** Decode the base64 heads the agent sends into Buffers, in place. */
function decodeScan(scan: CacheScan): CacheScan {
  for (const entry of scan.cacheDir.entries) {
    if (typeof entry.head === 'string') entry.head = Buffer.from(entry.head, 'base64')
  }

  for (const dir of scan.instanceDirs) {
    for (const disk of dir.disks) if (typeof disk.head === 'string') disk.head = Buffer.from(disk.head, 'base64')
  }

  return scan
}

/**
 * A compute node reached with the system OpenSSH client: ~/.ssh/config, agents and jump hosts work;
 * one multiplexed connection per node per run; host keys always checked. File operations and locks
 * go through one python3 agent per node (agent-py.ts): one round trip each, and its locks die with
 * the connection. Programs (qemu-img, curl) run as fixed argvs quoted by one function.
 */
export class SshNode implements Node {
  readonly description: string
  readonly isLocal = false
  private agent?: AgentClient
  private readonly children = new Set<ResultPromise>()
  private closed = false
  private connected?: Promise<void>
  private root?: InstancesRoot

  constructor(
    readonly name: string,
    readonly target: SshTarget,
  ) {
    this.description = `${target.user ? `${target.user}@` : ''}${target.host}${target.port ? `:${target.port}` : ''}`
  }

  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    await this.agent?.close()
    for (const child of this.children) child.kill('SIGTERM')
    if (this.connected) {
      const execa = await loadExeca()
      await execa('ssh', sshControlArgv(this.target, 'exit'), {
        detached: true,
        reject: false,
        stdin: 'ignore',
        timeout: 10_000,
      })
    }
  }

  /** Open the multiplexing master once (the first use of the node), so later commands share it. */
  async connect(): Promise<void> {
    this.connected ??= this.exec(['true'], {doing: 'connecting'}).then(() => undefined)
    try {
      await this.connected
    } catch (error) {
      this.connected = undefined
      throw error
    }
  }

  /**
   * Digest of a file on the node, computed there (node-side fetches are verified this way). The
   * agent hashes without listening; aborted, the answer is not waited for, and closing the node
   * ends the agent (within close's bound).
   */
  async digest(path: string, algorithm: string, options: {signal?: AbortSignal} = {}): Promise<string> {
    const {signal} = options
    signal?.throwIfAborted()
    const answer = this.request<string>('digest', {algorithm, path}, 'cannot hash', path)
    if (!signal) return answer
    // Once aborted, the answer is nobody's: a late failure (the agent ended by close) is dropped.
    answer.catch(() => {})
    return new Promise<string>((resolve, reject) => {
      const onAbort = () => reject(signal.reason)
      signal.addEventListener('abort', onAbort, {once: true})
      answer.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort))
    })
  }

  /** Run one argv on the node and wait; ssh's own failures (exit 255) become clear errors. */
  async exec(
    argv: string[],
    options: {doing?: string; signal?: AbortSignal; stdin?: Buffer | string; timeoutMs?: number} = {},
  ): Promise<RunResult> {
    if (this.closed)
      throw new ImgcacheError('NODE_CLOSED', `${this.name}: connection already closed`, {node: this.name})
    const execa = await loadExeca()
    const child = execa('ssh', sshArgv(this.target, argv, {noStdin: options.stdin === undefined}), {
      cancelSignal: options.signal,
      // A process group of its own: a terminal's Ctrl-C reaches imgcache only, which then removes
      // its temporaries and releases its locks over these very connections before it exits.
      detached: true,
      input: options.stdin,
      reject: false,
      stripFinalNewline: false,
      timeout: options.timeoutMs,
    })
    this.children.add(child)
    const result = await child.finally(() => this.children.delete(child))
    if (result.exitCode === undefined) {
      const reason = result.timedOut
        ? `timed out after ${options.timeoutMs} ms`
        : result.isCanceled
          ? 'cancelled'
          : result.shortMessage
      throw new RemoteCommandError(`${argv[0]} on ${this.name}: ${reason}`, {
        argv,
        node: this.name,
        stderr: result.stderr,
      })
    }

    if (result.exitCode === SSH_FAILURE_STATUS) throw sshError(this, result.stderr, options.doing ?? '')
    return {exitCode: result.exitCode, stderr: result.stderr, stdout: result.stdout}
  }

  /**
   * Download a torrent into `request.dest` with aria2c on the node, as the instances path's owner
   * (the agent's spawn drops to it), and resolve once every piece is there and checked. aria2c then
   * goes on seeding to the other nodes: it is the agent's child, so it ends when the agent does (at
   * close(), or when the connection drops: aria2c also watches the agent's pid), or after
   * `seedSeconds`. The `.part` is made by the agent first, never through a link.
   */
  async fetchTorrent(
    request: TorrentFetch,
    options: {onProgress?: (progress: Aria2Progress) => void; signal?: AbortSignal; total: number},
  ): Promise<void> {
    const agent = await this.owned()
    const dir = posix.dirname(request.dest)
    const control = `${request.dest}.aria2`
    // A control file (aria2c's resume state) is aria2c's to read: one left behind goes; a link or
    // anything but a regular file there, or at the torrent's name, was planted (DESIGN §11): refused.
    await agent.request('remove', {onlyRegular: true, path: control}, 'cannot remove', control)
    await agent.request('create', {append: false, path: request.dest}, 'cannot write', request.dest)
    await agent.request(
      'write_atomic',
      {data: request.torrent.toString('base64'), mode: 0o600, onlyRegular: true, path: request.torrentPath},
      'cannot write',
      request.torrentPath,
    )
    let pid: number
    try {
      pid = await agent.request<number>(
        'spawn',
        {argv: aria2Argv(request, dir), mergeOutput: true, stopWithAgent: true},
        'cannot start aria2c for',
        request.dest,
      )
    } catch (error) {
      await agent.request('remove', {path: request.torrentPath}, 'cannot remove', request.torrentPath).catch(() => 'x')
      if (error instanceof ImgcacheError && /No such file|ENOENT/.test(error.message)) {
        throw aria2Error(this.name, request.dest, 127, '', request.stallSeconds)
      }

      throw error
    }

    let status: {exitCode: null | number; running: boolean; stderr: string}
    let last = {at: Date.now(), bytes: -1}
    try {
      for (;;) {
        // eslint-disable-next-line no-await-in-loop
        status = await agent.request('status', {pid}, 'cannot watch the download into', request.dest)
        const progress = parseAria2Summary(status.stderr, options.total)
        if (progress) options.onProgress?.(progress)
        if (progress?.complete || !status.running) break
        if ((progress?.bytes ?? 0) !== last.bytes) last = {at: Date.now(), bytes: progress?.bytes ?? 0}
        // aria2c's --bt-stop-timeout does not count a swarm it never joined (a tracker it cannot reach).
        if (Date.now() - last.at > (request.stallSeconds + 15) * 1000) {
          throw aria2Error(this.name, request.dest, 7, status.stderr, request.stallSeconds)
        }

        if (options.signal?.aborted) throw options.signal.reason
        // eslint-disable-next-line no-await-in-loop
        await sleep(FETCH_POLL_MS * 2, options.signal)
      }
    } catch (error) {
      await agent.request('kill', {pid}, 'cannot stop aria2c for', request.dest).catch(() => undefined)
      throw error
    } finally {
      // aria2c read it at its start; nothing of ours stays in the cache dir.
      await agent.request('remove', {path: request.torrentPath}, 'cannot remove', request.torrentPath).catch(() => 'x')
    }

    if (!status.running && status.exitCode !== 0) {
      throw aria2Error(this.name, request.dest, status.exitCode ?? -1, status.stderr, request.stallSeconds)
    }
  }

  async fetchUrl(
    request: UrlFetch,
    options: {onBytes?: (bytes: number) => void; signal?: AbortSignal} = {},
  ): Promise<void> {
    const agent = await this.owned()
    // The .part is made (or reopened) as the owner, never through a link; curl then runs as the owner.
    await agent.request(
      'create',
      {append: Boolean(request.resumeFrom), path: request.dest},
      'cannot write',
      request.dest,
    )
    const argv = curlArgv(request)
    // The URL and the headers (the token among them) reach curl on its stdin.
    const input = localCurlConfig(request)
    const pid = await agent.request<number>(
      'spawn',
      {argv, input: Buffer.from(input).toString('base64')},
      'cannot start curl for',
      request.dest,
    )
    let status: {bytes?: number; exitCode: null | number; running: boolean; stderr: string}
    try {
      for (;;) {
        // eslint-disable-next-line no-await-in-loop
        status = await agent.request(
          'status',
          {path: request.dest, pid},
          'cannot watch the download into',
          request.dest,
        )
        if (status.bytes !== undefined) options.onBytes?.(status.bytes)
        if (!status.running) break
        if (options.signal?.aborted) throw options.signal.reason
        // Often enough that the next step starts soon after curl ends (the link idles meanwhile).
        // eslint-disable-next-line no-await-in-loop
        await sleep(FETCH_POLL_MS, options.signal)
      }
    } catch (error) {
      await agent.request('kill', {pid}, 'cannot stop curl for', request.dest).catch(() => undefined)
      throw error
    }

    if (status.exitCode !== 0) throw curlError(this, request, status.exitCode ?? -1, status.stderr)
  }

  async lock(path: string, options: LockOptions): Promise<LockHandle> {
    return (await this.owned()).lock(path, options)
  }

  async mkdirp(path: string): Promise<void> {
    await this.ownedRequest('mkdirp', {path}, 'cannot create directory', path)
  }

  async openRead(path: string, offset = 0): Promise<Readable> {
    await this.connect()
    const child = this.spawn(['tail', '-c', `+${offset + 1}`, '--', path], {stdin: 'ignore'})
    if (!child.stdout) throw new ImgcacheError('BUG', 'no stdout')
    child.catch(() => undefined)
    return child.stdout
  }

  async openWrite(path: string, options: WriteFileOptions = {}): Promise<NodeFileSink> {
    const owner = await this.owner()
    // The node's end is WRITER_PY, as the owner: a link or a non-regular file at `path` is refused.
    const ids = owner ? [String(owner.uid), String(owner.gid)] : ['-1', '-1']
    const child = this.spawn(['python3', '-c', WRITER_PY, ...ids, path, options.append ? '1' : '0'], {stdin: 'pipe'})
    if (!child.stdin) throw new ImgcacheError('BUG', 'no stdin')
    const {stdin} = child
    const failure = (result: {exitCode?: number; stderr?: unknown}): ImgcacheError | undefined => {
      if (result.exitCode === 0) return undefined
      // spawn() collects stderr as bytes (encoding 'buffer'): String() of them would be their numbers.
      const stderr = textOf(result.stderr)
      if (result.exitCode === SSH_FAILURE_STATUS) return sshError(this, stderr, `writing ${path}`)
      const unsafe = /^imgcache-unsafe: (.*)$/m.exec(stderr)
      if (result.exitCode === WRITER_UNSAFE_STATUS && unsafe) return unsafePath(path, unsafe[1]!, this.name)
      if (/No space left on device|Disk quota exceeded/.test(stderr)) {
        return new ImgcacheError(
          'NO_SPACE',
          `no space left on ${this.name} (${this.description}) while writing ${path}`,
          {
            node: this.name,
            path,
            suggestions: ['Free space in the cache dir on that node (imgcache prune) and try again.'],
          },
        )
      }

      return new RemoteCommandError(`cannot write ${path} on ${this.name}`, {
        argv: ['cat', '>', path],
        exitStatus: result.exitCode,
        node: this.name,
        stderr,
      })
    }

    // When the writer on the node ends early (the connection dropped, cat failed), the stream only
    // sees EPIPE or a premature close: wait for ssh's exit and report why the writer ended instead.
    let ending = false
    const explain = async (error: Error): Promise<Error> => {
      const result = await Promise.race([child, sleep(5000).then(() => undefined)])
      return (result && failure(result)) ?? error
    }

    const stream = new Writable({
      destroy(error, callback) {
        if (error) stdin.destroy()
        callback(error)
      },
      final(callback) {
        ending = true
        stdin.end(() => callback())
      },
      write(chunk: Buffer, _encoding, callback) {
        if (stdin.write(chunk)) callback()
        else stdin.once('drain', () => callback())
      },
    })
    const endedEarly = (error: Error) => {
      if (stream.destroyed) return
      explain(error).then(
        (explained) => stream.destroy(explained),
        () => stream.destroy(error),
      )
    }

    stdin.on('error', endedEarly)
    stdin.on('close', () => {
      if (!ending) endedEarly(new Error(`the writer of ${path} on ${this.name} ended early`))
    })
    // The stream's error reaches the caller through its pipeline or finish(), never as an uncaught
    // 'error' event of a stream nobody listens to any more.
    stream.on('error', () => {})
    return {
      abort() {
        child.kill('SIGTERM')
      },
      finish: async () => {
        // End through the stream, so that its pending writes reach ssh before its stdin is closed.
        if (!stream.writableEnded) stream.end()
        await finished(stream)
        const problem = failure(await child)
        if (problem) throw problem
        await this.syncFile(path)
        return (await this.stat(path))?.size ?? 0
      },
      stream,
    }
  }

  async readConfigFiles(request: ConfigReadRequest): Promise<ConfigRead> {
    return this.request<ConfigRead>('read_conf', {...request}, 'cannot read', request.files[0] ?? request.dirs[0] ?? '')
  }

  async readRanges(ranges: ReadRange[]): Promise<Buffer[]> {
    if (ranges.length === 0) return []
    const result = await this.request<string[]>('read_ranges', {ranges}, 'cannot read', ranges[0]?.path ?? '')
    return result.map((b) => Buffer.from(b, 'base64'))
  }

  async readTextFile(path: string): Promise<string | undefined> {
    return (await this.request<null | string>('read_text', {path}, 'cannot read', path)) ?? undefined
  }

  async remove(path: string, options: RemoveOptions = {}): Promise<RemoveOutcome> {
    return this.ownedRequest<RemoveOutcome>('remove', {olderThanMs: options.olderThanMs, path}, 'cannot remove', path)
  }

  async rename(from: string, to: string, options: RenameOptions = {}): Promise<void> {
    await this.ownedRequest('rename', {from, noReplace: options.noReplace === true, to}, `cannot rename ${from} to`, to)
  }

  /** Forget a connection that failed (the agent and its locks are gone with it): the next use reconnects. */
  async reset(): Promise<void> {
    const {agent} = this
    this.agent = undefined
    this.connected = undefined
    await agent?.close().catch(() => undefined)
  }

  async run(argv: string[], options: RunOptions = {}): Promise<RunResult> {
    const env = {LANG: 'C', LC_ALL: 'C', ...options.env}
    const owner = options.asOwner ? await this.owner() : undefined
    // As the owner, under umask 022 (RUN_AS_PY), for programs that write under the instances path.
    const asOwner = options.asOwner
      ? ['python3', '-c', RUN_AS_PY, String(owner?.uid ?? -1), String(owner?.gid ?? -1)]
      : []
    const command = ['env', ...Object.entries(env).map(([k, v]) => `${k}=${v}`), ...asOwner, ...argv]
    const result = await this.exec(command, {
      doing: `running ${argv[0]}`,
      signal: options.signal,
      stdin: options.stdin,
      timeoutMs: options.timeoutMs,
    })
    // env(1) could not start the program at all: say so, whatever `reject` says (a caller that
    // reads the program's own failures would otherwise explain env's message as the program's).
    const missing = result.exitCode === 127 ? programNotFound(result.stderr) : undefined
    if (missing !== undefined && missing === argv[0]) {
      throw new ImgcacheError(
        'NODE_PROGRAM_MISSING',
        `${this.name}: ${missing} is not installed on the node (not on its PATH)`,
        {
          node: this.name,
          suggestions: [
            missing === 'qemu-img'
              ? 'Install qemu-img on the node (Debian/Ubuntu: apt install qemu-utils; RHEL: dnf install qemu-img), as nova-compute needs it too.'
              : `Install ${missing} on the node, or put it on the PATH of non-interactive ssh sessions.`,
          ],
        },
      )
    }

    if (result.exitCode !== 0 && options.reject !== false) {
      throw new RemoteCommandError(`${argv[0]} exited with status ${result.exitCode} on ${this.name}`, {
        argv,
        exitStatus: result.exitCode,
        node: this.name,
        stderr: result.stderr,
      })
    }

    return result
  }

  async scan(request: ScanRequest): Promise<CacheScan> {
    return decodeScan(await this.request<CacheScan>('scan', {...request}, 'cannot scan', request.instancesPath))
  }

  /** Start an argv on the node with streams (uploads, downloads, the agent). */
  spawn(argv: string[], options: {keepStderr?: boolean; stdin: 'ignore' | 'pipe'}): ResultPromise {
    // Every spawn follows connect(), whose exec() has loaded execa.
    const child = loadedExeca()('ssh', sshArgv(this.target, argv, {noStdin: options.stdin === 'ignore'}), {
      buffer: {stderr: options.keepStderr ?? true, stdout: false},
      detached: true, // out of the terminal's process group, as in exec()
      encoding: 'buffer',
      reject: false,
      stdin: options.stdin,
    })
    this.children.add(child)
    child.finally(() => this.children.delete(child)).catch(() => undefined)
    return child
  }

  async stat(path: string): Promise<EntryStat | undefined> {
    return (await this.request<EntryStat | null>('stat', {path}, 'cannot stat', path)) ?? undefined
  }

  async statfs(path: string): Promise<FsUsage> {
    return this.request<FsUsage>('statfs', {path}, 'cannot stat the file system of', path)
  }

  async supportsDirectIo(dir: string): Promise<boolean> {
    return this.ownedRequest<boolean>('direct_io', {dir}, 'cannot probe O_DIRECT in', dir)
  }

  async syncFile(path: string): Promise<void> {
    await this.request('sync_file', {path}, 'cannot flush', path)
  }

  async touch(paths: string[]): Promise<void> {
    if (paths.length > 0) await this.request('touch', {paths}, 'cannot touch', paths[0] ?? '')
  }

  useInstancesPath(path: string, dirs: string[]): void {
    this.root = {dirs, path}
  }

  async writeFileAtomic(path: string, data: Buffer | string, mode = 0o644): Promise<void> {
    await this.ownedRequest(
      'write_atomic',
      {data: Buffer.from(data).toString('base64'), mode, path},
      'cannot write',
      path,
    )
  }

  private async agentClient(): Promise<AgentClient> {
    if (this.agent) return this.agent
    await this.connect()
    if (this.agent) return this.agent
    // The program on stdin, ahead of the requests (AGENT_BOOT_PY): not in the ssh command line.
    const program = Buffer.from(AGENT_PY)
    // Its stderr is the client's to keep (the last 4000 characters): not buffered a second time.
    const child = this.spawn(['python3', '-c', AGENT_BOOT_PY, String(program.length)], {
      keepStderr: false,
      stdin: 'pipe',
    })
    child.stdin!.write(program)
    this.agent = new AgentClient(
      {
        exited: child,
        kill: () => child.kill('SIGKILL'),
        stderr: child.stderr ?? undefined,
        stdin: child.stdin!,
        stdout: child.stdout!,
      },
      this.name,
      (stderr) => {
        if (/python3: (command )?not found|No such file/i.test(stderr)) {
          return new ImgcacheError('NODE_NO_PYTHON', `${this.name}: python3 is not installed on the node`, {
            node: this.name,
            suggestions: [
              'Install python3 on the node (every nova-compute host has it); imgcache uses it for nova-compatible locks.',
            ],
          })
        }

        const failure = classifySshFailure(SSH_FAILURE_STATUS, stderr)
        return new ImgcacheError(
          `SSH_${failure.kind.toUpperCase().replaceAll('-', '_')}`,
          `${this.name}: the connection to the node ended (${failure.message})`,
          {
            node: this.name,
            suggestions: failure.suggestions,
          },
        )
      },
    )
    return this.agent
  }

  /** The agent, told the instances path: it makes every change under it as the path's owner (DESIGN §10). */
  private async owned(): Promise<AgentClient> {
    const agent = await this.agentClient()
    await agent.own(this.root)
    return agent
  }

  private async ownedRequest<T>(op: string, body: Record<string, unknown>, what: string, path: string): Promise<T> {
    return (await this.owned()).request<T>(op, body, what, path)
  }

  private async owner(): Promise<CacheOwner | undefined> {
    return (await this.agentClient()).own(this.root)
  }

  private async request<T>(op: string, body: Record<string, unknown>, what: string, path: string): Promise<T> {
    return (await this.agentClient()).request<T>(op, body, what, path)
  }
}
