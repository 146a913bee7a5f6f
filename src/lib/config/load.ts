import type {ZodIssue} from 'zod'

import {cosmiconfig} from 'cosmiconfig'
import {access, realpath} from 'node:fs/promises'
import {homedir} from 'node:os'
import {join} from 'node:path'
import {pathToFileURL} from 'node:url'

import {UsageError} from '../errors.js'
import {configSchema, type ImgcacheConfig} from './schema.js'

export interface LoadedConfig {
  config: ImgcacheConfig
  /** The file the config came from; undefined when none was found (built-in defaults). */
  filepath?: string
}

const MODULE = 'imgcache'

/**
 * The reason a JavaScript config did not load, as import() gives it. When import() fails,
 * cosmiconfig falls back to require(), and on Node 20 require() of an ES module that failed to
 * parse says "Cannot require() ES Module ... not yet fully loaded ... a bug in Node.js" instead of
 * the syntax error. import() of the same URL answers again with the module's own error (the failure
 * is cached: nothing runs twice).
 */
async function importErrorOf(path: string, error: unknown): Promise<unknown> {
  if (!/\.[cm]?js$/.test(path)) return error
  try {
    await import(pathToFileURL(await realpath(path)).href)
  } catch (importError) {
    return importError
  }

  return error
}

/** Where a config is looked for when neither --config nor IMGCACHE_CONFIG names one (DESIGN §8). */
export function configSearchPlaces(env: NodeJS.ProcessEnv, cwd: string): string[] {
  const configHome = env.XDG_CONFIG_HOME || join(env.HOME || homedir(), '.config')
  const names = ['config.yaml', 'config.yml', 'config.json']
  return [
    ...[
      `.${MODULE}rc`,
      `.${MODULE}rc.yaml`,
      `.${MODULE}rc.yml`,
      `.${MODULE}rc.json`,
      `${MODULE}.config.yaml`,
      `${MODULE}.config.json`,
    ].map((n) => join(cwd, n)),
    ...names.map((n) => join(configHome, MODULE, n)),
    ...names.map((n) => join('/etc', MODULE, n)),
  ]
}

async function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  )
}

function describeIssue(issue: ZodIssue): string {
  if (issue.code === 'unrecognized_keys')
    return `unknown key${issue.keys.length > 1 ? 's' : ''} ${issue.keys.join(', ')}`
  if (issue.code === 'invalid_type') return `expected ${issue.expected}, got ${issue.received}`
  return issue.message
}

/** A key path as people write it: `nodes.cmp-01.port`, `aggregates.web.nodes[2]`. */
export function keyPath(path: Array<number | string>): string {
  let out = ''
  for (const part of path) {
    if (typeof part === 'number') out += `[${part}]`
    else out = out ? `${out}.${part}` : part
  }

  return out
}

/** Validate a parsed config; errors name the file, every offending key path and what was expected. */
export function validateConfig(raw: unknown, filepath: string): ImgcacheConfig {
  const result = configSchema.safeParse(raw ?? {})
  if (result.success) return result.data
  const lines = result.error.issues.map((issue) => `${keyPath(issue.path) || '(top level)'}: ${describeIssue(issue)}`)
  const first = result.error.issues[0]
  throw new UsageError('CONFIG_INVALID', `invalid configuration in ${filepath}:\n  ${lines.join('\n  ')}`, {
    field: first ? keyPath(first.path) : undefined,
    file: filepath,
    suggestions: ['Fix the keys listed above; the README lists every key with an example.'],
  })
}

/**
 * Load the config: `--config PATH`, else `IMGCACHE_CONFIG`, else the first file of the search places.
 * A path given explicitly must exist; finding no file at all means built-in defaults.
 */
export async function loadConfig(
  options: {cwd?: string; env?: NodeJS.ProcessEnv; path?: string} = {},
): Promise<LoadedConfig> {
  const env = options.env ?? process.env
  const cwd = options.cwd ?? process.cwd()
  const explorer = cosmiconfig(MODULE, {cache: false, searchStrategy: 'none'})
  const explicit = options.path ?? (env.IMGCACHE_CONFIG || undefined)
  const candidates = explicit ? [explicit] : configSearchPlaces(env, cwd)
  for (const candidate of candidates) {
    // eslint-disable-next-line no-await-in-loop
    if (!explicit && !(await exists(candidate))) continue
    let loaded
    try {
      // eslint-disable-next-line no-await-in-loop
      loaded = await explorer.load(candidate)
    } catch (error_) {
      // eslint-disable-next-line no-await-in-loop
      const error = await importErrorOf(candidate, error_)
      const {code} = error as {code?: string}
      const reason =
        code === 'ENOENT'
          ? 'does not exist'
          : code === 'EACCES'
            ? 'cannot be read (permission denied)'
            : `cannot be parsed: ${(error as Error).message}`
      throw new UsageError('CONFIG_UNREADABLE', `config file ${candidate} ${reason}`, {
        cause: error,
        file: candidate,
        // The path is only worth checking when it is the path that failed; a file that is there but
        // does not parse needs fixing, wherever it was named.
        suggestions:
          code === 'ENOENT' || code === 'EACCES'
            ? explicit
              ? ['Check the path given with --config or IMGCACHE_CONFIG, and that this user may read it.']
              : ['Fix or remove that file; imgcache reads the first config it finds.']
            : [`Fix the syntax at the place the message names in ${candidate} (YAML or JSON, by its extension).`],
      })
    }

    if (!loaded || loaded.isEmpty) return {config: {}, filepath: loaded?.filepath ?? candidate}
    return {config: validateConfig(loaded.config, loaded.filepath), filepath: loaded.filepath}
  }

  return {config: {}}
}
