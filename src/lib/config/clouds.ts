import {readFile} from 'node:fs/promises'
import path from 'node:path'
import {parseDocument} from 'yaml'

import {errnoCode, fromErrno, UsageError} from '../errors.js'

/**
 * clouds.yaml as openstacksdk reads it (openstack/config/loader.py): the first clouds file of
 * OS_CLIENT_CONFIG_FILE and the search path, with the first secure file deep-merged over it,
 * keys normalised (`-` → `_`, old aliases), auth settings gathered under `auth`.
 */

export interface CloudsLocation {
  cwd: string
  env: NodeJS.ProcessEnv
  home: string
}

const suffixes = ['.yaml', '.yml', '.json']

/** openstacksdk's CONFIG_SEARCH_PATH: cwd, user config dirs, site config dirs. */
export function configSearchDirs(location: CloudsLocation): string[] {
  const {cwd, env, home} = location
  const xdgHome = env.XDG_CONFIG_HOME && path.isAbsolute(env.XDG_CONFIG_HOME) ? env.XDG_CONFIG_HOME : undefined
  const xdgDirs = (env.XDG_CONFIG_DIRS || '/etc/xdg').split(':').filter((d) => path.isAbsolute(d))
  const dirs = [
    cwd,
    path.join(xdgHome ?? path.join(home, '.config'), 'openstack'),
    path.join(home, '.config', 'openstack'),
    ...xdgDirs.map((d) => path.join(d, 'openstack')),
    '/etc/openstack',
  ]
  return [...new Set(dirs)]
}

/**
 * A YAML document, or its first error. Silent: the yaml package's warnings go to stderr with the
 * source line, which may hold a password (and with `parse`, silent would drop the errors too).
 */
function readYaml(text: string): unknown {
  const doc = parseDocument(text, {logLevel: 'silent'})
  if (doc.errors.length > 0) throw doc.errors[0]
  return doc.toJS()
}

/**
 * Where a clouds file's syntax is wrong, never what it says there: the parsers' messages quote the
 * text around the error (V8's JSON.parse a snippet, yaml an alias or escape), which may be a password.
 */
function syntaxErrorOf(file: string, error: unknown): string {
  if (file.endsWith('.json')) {
    const at = /at position \d+(?: \(line \d+ column \d+\))?/.exec((error as Error).message)
    return at ? `a syntax error ${at[0]}` : 'a syntax error'
  }

  const at = (error as {linePos?: Array<{col: number; line: number}>}).linePos?.[0]
  return at ? `a syntax error at line ${at.line}, column ${at.col}` : 'a syntax error'
}

/** Files tried in order for `clouds` (OS_CLIENT_CONFIG_FILE first) or `secure` (OS_CLIENT_SECURE_FILE first). */
export function cloudsFileCandidates(kind: 'clouds' | 'secure', location: CloudsLocation): string[] {
  const override = kind === 'clouds' ? location.env.OS_CLIENT_CONFIG_FILE : location.env.OS_CLIENT_SECURE_FILE
  const files = configSearchDirs(location).flatMap((dir) => suffixes.map((s) => path.join(dir, kind + s)))
  return override ? [path.resolve(location.cwd, override), ...files] : files
}

interface LoadedFile {
  data: Record<string, unknown>
  file: string
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

async function loadFile(file: string): Promise<LoadedFile | undefined> {
  let text: string
  try {
    text = await readFile(file, 'utf8')
  } catch (error) {
    // as openstacksdk: a missing or unreadable file is skipped, the next one is tried
    if (['EACCES', 'EISDIR', 'ENOENT', 'ENOTDIR'].includes(errnoCode(error) ?? '')) return undefined
    throw fromErrno(error, 'cannot read', file)
  }

  let data: unknown
  try {
    data = file.endsWith('.json') ? JSON.parse(text) : readYaml(text)
  } catch (error) {
    throw new UsageError(
      'CLOUDS_FILE_INVALID',
      `${file} is not valid ${file.endsWith('.json') ? 'JSON' : 'YAML'}: ${syntaxErrorOf(file, error)}`,
      {
        file,
        suggestions: [`Fix the syntax of ${file}.`],
      },
    )
  }

  if (data === null || data === undefined) data = {}
  if (!isObject(data)) {
    throw new UsageError('CLOUDS_FILE_INVALID', `${file} must hold a mapping with a "clouds" key.`, {file})
  }

  return {data, file}
}

async function loadFirst(files: string[]): Promise<LoadedFile | undefined> {
  for (const file of files) {
    // eslint-disable-next-line no-await-in-loop
    const loaded = await loadFile(file)
    if (loaded) return loaded
  }

  return undefined
}

/** openstacksdk's merge_clouds: a deep merge, `overlay` winning. */
export function mergeClouds(base: Record<string, unknown>, overlay: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {...base}
  for (const [key, value] of Object.entries(overlay)) {
    const old = out[key]
    out[key] = isObject(value) && isObject(old) ? mergeClouds(old, value) : value
  }

  return out
}

/** openstacksdk's normalize_keys: `-` → `_` in keys, numbers → strings (booleans kept). */
export function normalizeKeys(config: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {}
  for (const [key, value] of Object.entries(config)) {
    const k = key.replaceAll('-', '_')
    if (isObject(value)) out[k] = normalizeKeys(value)
    else if (typeof value === 'number') out[k] = String(value)
    else out[k] = value
  }

  return out
}

/** One cloud of clouds.yaml, normalised. `auth` holds secrets: never print it. */
export interface CloudConfig {
  auth: Record<string, string>
  /** `password` when clouds.yaml says nothing (openstacksdk's default). */
  authType: string
  cacert?: string
  /** The clouds file it came from. */
  file: string
  imageEndpointOverride?: string
  /** Chosen without a name because it is the only cloud in the file (openstacksdk does that). */
  implicit: boolean
  interface?: string
  name: string
  /** Known regions, first = default (`regions`, else `region_name`). */
  regions: string[]
  /** The secure file merged over it, if any. */
  secureFile?: string
  /** TLS verification (`verify`, or the inverse of `insecure`). */
  verify: boolean
}

/** openstacksdk's `_fix_backwards_project`: aliases at the top or in `auth` → the key in `auth`. */
const authAliases: ReadonlyArray<[string, string[]]> = [
  ['domain_id', ['domain_id']],
  ['domain_name', ['domain_name']],
  ['project_domain_id', ['project_domain_id']],
  ['project_domain_name', ['project_domain_name']],
  ['project_id', ['tenant_id', 'project_id']],
  ['project_name', ['tenant_name', 'project_name']],
  ['token', ['auth_token', 'token']],
  ['user_domain_id', ['user_domain_id']],
  ['user_domain_name', ['user_domain_name']],
]

/** Auth options that openstacksdk also takes from the top level of a cloud. */
const topLevelAuthKeys = [
  'application_credential_id',
  'application_credential_name',
  'application_credential_secret',
  'auth_url',
  'endpoint',
  'password',
  'user_id',
  'username',
]

function asString(value: unknown): string | undefined {
  if (typeof value === 'string') return value
  if (typeof value === 'number' || typeof value === 'boolean') return String(value)
  return undefined
}

function asBoolean(value: unknown): boolean | undefined {
  if (typeof value === 'boolean') return value
  if (typeof value === 'string') return value.toLowerCase() === 'true'
  return undefined
}

/** A raw cloud entry (as in the file) → the settings imgcache uses. Pure. */
export function normalizeCloud(
  name: string,
  raw: Record<string, unknown>,
  files: {file: string; implicit?: boolean; secureFile?: string},
): CloudConfig {
  const cloud = normalizeKeys(raw)
  const auth: Record<string, unknown> = isObject(cloud.auth) ? {...cloud.auth} : {}
  for (const key of topLevelAuthKeys) {
    if (cloud[key] !== undefined && auth[key] === undefined) auth[key] = cloud[key]
  }

  for (const [target, aliases] of authAliases) {
    let value: string | undefined
    for (const alias of aliases) {
      value = asString(cloud[alias]) ?? value
      value = asString(auth[alias]) ?? value
      delete auth[alias]
    }

    if (value !== undefined) auth[target] = value
  }

  // _handle_domain_id: one domain for both user and project when project-scoped
  if (auth.project_id !== undefined || auth.project_name !== undefined) {
    for (const [from, targets] of [
      ['domain_id', ['user_domain_id', 'project_domain_id']],
      ['domain_name', ['user_domain_name', 'project_domain_name']],
    ] as const) {
      if (auth[from] === undefined) continue
      for (const target of targets) auth[target] ??= auth[from]
      delete auth[from]
    }
  }

  const authStrings: Record<string, string> = {}
  for (const [key, value] of Object.entries(auth)) {
    const text = asString(value)
    if (text !== undefined) authStrings[key] = text
  }

  let regions: string[] = []
  if (Array.isArray(cloud.regions)) {
    regions = cloud.regions.flatMap((r) => (isObject(r) ? asString(r.name) : asString(r)) ?? [])
  } else if (typeof cloud.region_name === 'string') {
    regions = cloud.region_name
      .split(',')
      .map((r) => r.trim())
      .filter(Boolean)
  }

  const iface = asString(cloud.interface) ?? asString(cloud.endpoint_type)
  const insecure = asBoolean(cloud.insecure)
  const verify = asBoolean(cloud.verify) ?? (insecure === undefined ? true : !insecure)
  return {
    auth: authStrings,
    authType: asString(cloud.auth_type) ?? asString(cloud.auth_plugin) ?? 'password',
    cacert: asString(cloud.cacert),
    file: files.file,
    imageEndpointOverride: asString(cloud.image_endpoint_override),
    implicit: files.implicit ?? false,
    interface: iface?.replace(/URL$/, ''),
    name,
    regions,
    secureFile: files.secureFile,
    verify,
  }
}

export interface FindCloudOptions extends CloudsLocation {
  /** An explicit clouds file (the config's imageService.cloudsFile): only it is read. */
  cloudsFile?: string
  /** Where the name came from, for messages: "OS_CLOUD", "imageService.cloud". */
  nameOrigin?: string
}

/**
 * The cloud `name` of the clouds file, or without a name the file's only cloud (undefined when
 * there is no file or it holds several clouds). A named cloud that does not exist → UsageError.
 */
export async function findCloud(name: string | undefined, options: FindCloudOptions): Promise<CloudConfig | undefined> {
  const candidates = options.cloudsFile
    ? [path.resolve(options.cwd, options.cloudsFile)]
    : cloudsFileCandidates('clouds', options)
  const clouds = await loadFirst(candidates)
  const named = name ? `cloud "${name}"${options.nameOrigin ? ` (from ${options.nameOrigin})` : ''}` : ''
  if (!clouds) {
    if (options.cloudsFile) {
      throw new UsageError(
        'CLOUDS_FILE_MISSING',
        `The clouds file ${candidates[0]} does not exist or cannot be read.`,
        {
          field: 'imageService.cloudsFile',
          file: candidates[0],
          suggestions: ["Fix imageService.cloudsFile, or remove it to use openstacksdk's search path."],
        },
      )
    }

    if (!name) return undefined
    throw new UsageError('CLOUD_NOT_FOUND', `No clouds.yaml found for ${named}; looked for ${candidates.join(', ')}.`, {
      suggestions: [
        'Create ~/.config/openstack/clouds.yaml, or point OS_CLIENT_CONFIG_FILE (or imageService.cloudsFile) at one.',
      ],
    })
  }

  const secure = await loadFirst(cloudsFileCandidates('secure', options))
  const data = secure ? mergeClouds(clouds.data, secure.data) : clouds.data
  const all = isObject(data.clouds) ? data.clouds : {}
  const names = Object.keys(all)
  let chosen = name
  if (!chosen) {
    if (names.length !== 1) return undefined
    chosen = names[0] as string
  }

  const raw = all[chosen]
  if (!isObject(raw)) {
    throw new UsageError(
      'CLOUD_NOT_FOUND',
      `${named.charAt(0).toUpperCase() + named.slice(1)} is not defined in ${clouds.file}${names.length > 0 ? ` (it defines ${names.map((n) => `"${n}"`).join(', ')})` : ' (it defines no clouds)'}.`,
      {
        file: clouds.file,
        suggestions: ['Fix the cloud name, or point OS_CLIENT_CONFIG_FILE at the right clouds.yaml.'],
      },
    )
  }

  return normalizeCloud(chosen, raw, {file: clouds.file, implicit: !name, secureFile: secure?.file})
}
