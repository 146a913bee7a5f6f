import {Command, Errors, Flags, type Interfaces, ux} from '@oclif/core'

import type {ImgcacheConfig} from './lib/config/schema.js'

import {loadConfig} from './lib/config/load.js'
import {ImgcacheError} from './lib/errors.js'
import {ExitCode, exitCodeHelp, type ExitCodeValue} from './lib/exit-codes.js'

export type BaseFlags<T extends typeof Command> = Interfaces.InferredFlags<
  (typeof BaseCommand)['baseFlags'] & T['flags']
>
export type BaseArgs<T extends typeof Command> = Interfaces.InferredArgs<T['args']>

/** Appends the exit-code table to a command description, so that every command's help shows it. */
export function withExitCodes(description: string): string {
  return `${description}\n\n${exitCodeHelp()}`
}

/**
 * Owns what every command shares: --json (oclif's enableJsonFlag, also IMGCACHE_CONTENT_TYPE=json),
 * --config, --verbose/--quiet, loading the config, Ctrl-C as an AbortSignal, tearing down progress
 * before an error leaves run(), and turning errors into messages with next steps and exit codes.
 */
export abstract class BaseCommand<T extends typeof Command> extends Command {
  static override baseFlags = {
    config: Flags.string({
      description:
        'Config file (default: IMGCACHE_CONFIG, ./.imgcacherc*, ~/.config/imgcache/config.yaml, /etc/imgcache/config.yaml).',
      helpGroup: 'GLOBAL',
    }),
    quiet: Flags.boolean({
      char: 'q',
      description: 'Print only errors on stderr.',
      exclusive: ['verbose'],
      helpGroup: 'GLOBAL',
    }),
    verbose: Flags.boolean({
      char: 'v',
      description: 'Print every decision and where each setting came from.',
      exclusive: ['quiet'],
      helpGroup: 'GLOBAL',
    }),
  }
  static override enableJsonFlag = true
  protected args!: BaseArgs<T>
  protected config_!: {config: ImgcacheConfig; filepath?: string}
  protected flags!: BaseFlags<T>
  /** Aborted on the first Ctrl-C (SIGINT) or SIGTERM; work stops, temporaries are removed, locks released. */
  protected readonly interrupt = new AbortController()
  /** Every positional argument (for commands that take a variable number). */
  protected positional: string[] = []
  private readonly onSignal = (signal: NodeJS.Signals) => {
    if (this.interrupt.signal.aborted) {
      this.logToStderr(`imgcache: ${signal} received again: still removing temporaries and releasing locks`)
      return
    }

    this.logToStderr(
      `imgcache: ${signal} received: stopping, removing temporaries and releasing locks (again to force)`,
    )
    this.interrupt.abort(new ImgcacheError('INTERRUPTED', `interrupted by ${signal}`, {exitCode: ExitCode.Interrupted}))
  }
  private readonly teardowns: Array<() => Promise<void> | void> = []

  protected addTeardown(fn: () => Promise<void> | void): void {
    this.teardowns.push(fn)
  }

  protected override async catch(err: Error & {exitCode?: number}): Promise<unknown> {
    await this.runTeardowns()
    if (err instanceof ImgcacheError) {
      if (this.jsonEnabled()) {
        process.exitCode = err.exitCode
        this.logJson(this.toErrorJson(err))
        return
      }

      // Our own format, unwrapped, so that paths and commands can be copied from the message.
      this.logToStderr([`error: ${err.message}`, ...err.suggestions.map((s) => `→ ${s}`)].join('\n'))
      this.exit(err.exitCode)
    }

    if (err instanceof Errors.CLIError || (err as {oclif?: unknown}).oclif) {
      // Parse and usage errors from oclif: exit 2 unless they say otherwise. With --json, an error
      // report like every other (schemas/*.schema.json), not oclif's dump of the error object with
      // the whole parser context in it, under exit 1.
      if (this.jsonEnabled()) {
        const status = (err as {oclif?: {exit?: number}}).oclif?.exit ?? ExitCode.Usage
        const {suggestions} = err as {suggestions?: unknown}
        process.exitCode = status
        this.logJson({
          error: {
            code: 'USAGE',
            message: err.message.replace(/\nSee more help with --help$/, ''),
            suggestions: [
              ...(Array.isArray(suggestions) ? suggestions.map(String) : []),
              `See ${[this.config.bin, this.id, '--help'].filter(Boolean).join(' ')}.`,
            ],
          },
          status,
        })
        return
      }

      return super.catch(err)
    }

    // Not ours and not oclif's: a bug. Say so, with the stack for the report.
    if (this.jsonEnabled()) {
      process.exitCode = ExitCode.Failed
      this.logJson({error: {code: 'BUG', message: err.message, stack: err.stack}, status: ExitCode.Failed})
      return
    }

    this.error(`unexpected error (a bug in imgcache, please report it): ${err.stack ?? err.message}`, {
      exit: ExitCode.Failed,
    })
  }

  /** Set the process exit code from a result (partial failures and refusals return data too). */
  protected exitWith(code: ExitCodeValue): void {
    process.exitCode = code
  }

  protected override async finally(err: Error | undefined): Promise<unknown> {
    process.off('SIGINT', this.onSignal)
    process.off('SIGTERM', this.onSignal)
    await this.runTeardowns()
    return super.finally(err)
  }

  public override async init(): Promise<void> {
    await super.init()
    const {args, argv, flags} = await this.parse({
      args: this.ctor.args,
      baseFlags: (super.ctor as typeof BaseCommand).baseFlags,
      enableJsonFlag: this.ctor.enableJsonFlag,
      flags: this.ctor.flags,
      strict: this.ctor.strict,
    })
    this.flags = flags as BaseFlags<T>
    this.args = args as BaseArgs<T>
    this.positional = argv.map(String)
    this.config_ = await loadConfig({path: this.flags.config})
    process.on('SIGINT', this.onSignal)
    process.on('SIGTERM', this.onSignal)
  }

  /**
   * oclif's logJson, without its colouring tokenizer when there is no JSON theme to apply: the same
   * text (JSON.stringify, two-space indent), which for a report of thousands of entries saves tens
   * of milliseconds. With a theme, or for a value JSON.stringify refuses (a cycle), oclif's own.
   */
  protected override logJson(json: unknown): void {
    if (this.config.theme?.json === undefined) {
      let text: string | undefined
      try {
        text = JSON.stringify(typeof json === 'string' ? JSON.parse(json) : json, undefined, 2)
      } catch {
        text = undefined
      }

      if (text !== undefined) {
        ux.stdout(text)
        return
      }
    }

    super.logJson(json)
  }

  /** A line on stderr, unless --quiet or --json. */
  protected note(line: string): void {
    if (!this.flags.quiet && !this.jsonEnabled()) this.logToStderr(line)
  }

  protected override toErrorJson(err: unknown): unknown {
    if (err instanceof ImgcacheError) return {error: err.toJSON(), status: err.exitCode}
    return super.toErrorJson(err)
  }

  /** A line on stderr only with --verbose. */
  protected verbose(line: string): void {
    if (this.flags.verbose && !this.jsonEnabled()) this.logToStderr(line)
  }

  private async runTeardowns(): Promise<void> {
    while (this.teardowns.length > 0) {
      const fn = this.teardowns.pop()!
      // eslint-disable-next-line no-await-in-loop
      await Promise.resolve()
        .then(fn)
        .catch(() => {})
    }
  }
}
