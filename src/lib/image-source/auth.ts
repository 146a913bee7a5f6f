import {readFile} from 'node:fs/promises'
import path from 'node:path'

import type {ImageServiceConfig} from '../config/schema.js'

import {type CloudConfig, findCloud} from '../config/clouds.js'
import {fromErrno, UsageError} from '../errors.js'
import {displayUrl, type HttpClient} from './http.js'
import {
  describeMethod,
  identityV3Url,
  imageApiRoot,
  issueToken,
  type KeystoneMethod,
  type NamedRef,
  selectImageEndpoint,
} from './keystone.js'

/**
 * How requests to Glance are authenticated (holds secrets: never print it): `keystone`, a token
 * Keystone issues and that is renewed as needed; `none`, no token at all (a Glance without
 * Keystone, at an explicit endpoint); `static-token`, a pre-issued token used as is at an
 * explicit endpoint.
 */
export type Credentials =
  {keystone: KeystoneMethod; kind: 'keystone'} | {kind: 'none'} | {kind: 'static-token'; token: string}

export type Interface = 'admin' | 'internal' | 'public'

/** Everything needed to reach Glance, and where each part came from (for --verbose). */
export interface AuthSettings {
  /** Keystone, as configured (for `keystone` credentials). */
  authUrl?: string
  /** PEM content of the CA bundle. */
  ca?: string
  caFile?: string
  credentials: Credentials
  /** Glance URL that skips the catalog. */
  endpoint?: string
  insecure: boolean
  interface: Interface
  origin: {
    /** Where the credentials came from: 'clouds.yaml cloud "x" (/path)', 'OS_* variables', … */
    credentials: string
    endpoint?: string
    /** Settings present but not used, with why. */
    ignored: string[]
  }
  region?: string
}

export interface AuthLocation {
  cwd: string
  home: string
}

const interfaces: readonly Interface[] = ['public', 'internal', 'admin']

function parseInterface(value: string | undefined, field: string): Interface | undefined {
  if (value === undefined || value === '') return undefined
  const normalized = value.replace(/URL$/, '')
  if ((interfaces as readonly string[]).includes(normalized)) return normalized as Interface
  throw new UsageError('AUTH_CONFIG_INVALID', `${field} is "${value}"; expected public, internal or admin.`, {
    field,
  })
}

/** A secret from a file (password, application credential secret, token): content minus the final newline. */
export async function readSecretFile(file: string, field: string, cwd: string): Promise<string> {
  const full = path.resolve(cwd, file)
  let text: string
  try {
    text = await readFile(full, 'utf8')
  } catch (error) {
    throw fromErrno(error, `cannot read ${field}`, full, {field})
  }

  const secret = text.replace(/\r?\n$/, '')
  if (secret.trim() === '') {
    throw new UsageError('SECRET_FILE_EMPTY', `${field} ${full} is empty.`, {
      field,
      file: full,
      suggestions: [`Write the secret into ${full} (mode 0600).`],
    })
  }

  return secret
}

const envCredentialKeys = [
  'OS_APPLICATION_CREDENTIAL_ID',
  'OS_APPLICATION_CREDENTIAL_NAME',
  'OS_APPLICATION_CREDENTIAL_SECRET',
  'OS_AUTH_TOKEN',
  'OS_AUTH_TYPE',
  'OS_AUTH_URL',
  'OS_PASSWORD',
  'OS_TOKEN',
  'OS_USER_ID',
  'OS_USERNAME',
]

function presentEnvCredentials(env: NodeJS.ProcessEnv): string[] {
  return envCredentialKeys.filter((k) => env[k])
}

function configHasCredentials(config: ImageServiceConfig | undefined): boolean {
  if (!config) return false
  return Boolean(
    config.authUrl ||
    config.tokenFile ||
    config.passwordFile ||
    config.applicationCredentialSecretFile ||
    config.username ||
    config.applicationCredentialId ||
    config.applicationCredentialName,
  )
}

/** OSC's default: a user or project named without a domain is in the domain with id `default`. */
function withDefaultDomain(ref: NamedRef, defaultDomain: string): NamedRef {
  if (ref.id || ref.domainId || ref.domainName) return ref
  return {...ref, domainId: defaultDomain}
}

interface RawCredentials {
  appCredId?: string
  appCredName?: string
  appCredSecret?: string
  authType?: string
  authUrl?: string
  password?: string
  projectDomainId?: string
  projectDomainName?: string
  projectId?: string
  projectName?: string
  token?: string
  userDomainId?: string
  userDomainName?: string
  userId?: string
  username?: string
}

/** Names of the settings in each place, for "needs X" messages. */
interface FieldNames {
  appCredId: string
  appCredSecret: string
  authUrl: string
  password: string
  token: string
  username: string
}

const cloudFields: FieldNames = {
  appCredId: 'auth.application_credential_id (or _name)',
  appCredSecret: 'auth.application_credential_secret',
  authUrl: 'auth.auth_url',
  password: 'auth.password',
  token: 'auth.token',
  username: 'auth.username (or user_id)',
}
const envFields: FieldNames = {
  appCredId: 'OS_APPLICATION_CREDENTIAL_ID (or _NAME)',
  appCredSecret: 'OS_APPLICATION_CREDENTIAL_SECRET',
  authUrl: 'OS_AUTH_URL',
  password: 'OS_PASSWORD',
  token: 'OS_TOKEN',
  username: 'OS_USERNAME (or OS_USER_ID)',
}
const configFields: FieldNames = {
  appCredId: 'imageService.applicationCredentialId (or Name)',
  appCredSecret: 'imageService.applicationCredentialSecretFile',
  authUrl: 'imageService.authUrl',
  password: 'imageService.passwordFile',
  token: 'imageService.tokenFile',
  username: 'imageService.username',
}

/** auth_type names of keystoneauth / openstacksdk → what imgcache does. */
function authKind(authType: string): 'application_credential' | 'none' | 'password' | 'static' | 'token' | undefined {
  switch (authType.toLowerCase().replaceAll('-', '_')) {
    case 'admin_token':
    case 'token_endpoint': {
      return 'static'
    }

    case 'applicationcredential':
    case 'v3_application_credential':
    case 'v3applicationcredential': {
      return 'application_credential'
    }

    case 'noauth':
    case 'none': {
      return 'none'
    }

    case 'password':
    case 'v3password': {
      return 'password'
    }

    case 'token':
    case 'v3token': {
      return 'token'
    }

    default: {
      return undefined
    }
  }
}

interface BuildInput {
  defaultDomain: string
  endpoint?: string
  fields: FieldNames
  raw: RawCredentials
  /** The place, for messages: 'clouds.yaml cloud "x" (/path)'. */
  where: string
}

interface Built {
  authUrl?: string
  credentials: Credentials
}

/** The auth type when none is named: what the settings present suggest (as openstackclient guesses). */
function defaultAuthType(raw: RawCredentials): string {
  if (raw.appCredSecret || raw.appCredId || raw.appCredName) return 'v3applicationcredential'
  if (raw.token && !raw.password) return 'token'
  return 'password'
}

function incomplete(input: BuildInput, authType: string, what: string[]): UsageError {
  return new UsageError(
    'AUTH_CONFIG_INCOMPLETE',
    `${input.where}: auth type ${authType} needs ${what.join(' and ')}.`,
    {
      suggestions: ['Add the missing settings; secrets belong in secure.yaml, a 0600 file or the environment.'],
    },
  )
}

function projectOf(raw: RawCredentials, defaultDomain: string): NamedRef | undefined {
  if (!raw.projectId && !raw.projectName) return undefined
  return withDefaultDomain(
    {domainId: raw.projectDomainId, domainName: raw.projectDomainName, id: raw.projectId, name: raw.projectName},
    defaultDomain,
  )
}

function userOf(raw: RawCredentials, defaultDomain: string): NamedRef {
  return withDefaultDomain(
    {domainId: raw.userDomainId, domainName: raw.userDomainName, id: raw.userId, name: raw.username},
    defaultDomain,
  )
}

function applicationCredential(input: BuildInput, authType: string): Built {
  const {fields, raw} = input
  const need = [
    ...(raw.authUrl ? [] : [fields.authUrl]),
    ...(raw.appCredId || raw.appCredName ? [] : [fields.appCredId]),
    ...(raw.appCredSecret ? [] : [fields.appCredSecret]),
    ...(!raw.appCredId && raw.appCredName && !raw.userId && !raw.username ? [fields.username] : []),
  ]
  if (need.length > 0) throw incomplete(input, authType, need)
  const byName = !raw.appCredId
  const applicationCredential = {
    id: raw.appCredId,
    name: byName ? raw.appCredName : undefined,
    secret: raw.appCredSecret as string,
    user: byName ? userOf(raw, input.defaultDomain) : undefined,
  }
  return {
    authUrl: raw.authUrl,
    credentials: {keystone: {applicationCredential, kind: 'application_credential'}, kind: 'keystone'},
  }
}

function password(input: BuildInput, authType: string): Built {
  const {fields, raw} = input
  const need = [
    ...(raw.authUrl ? [] : [fields.authUrl]),
    ...(raw.username || raw.userId ? [] : [fields.username]),
    ...(raw.password ? [] : [fields.password]),
  ]
  if (need.length > 0) throw incomplete(input, authType, need)
  const keystone: KeystoneMethod = {
    kind: 'password',
    password: raw.password as string,
    project: projectOf(raw, input.defaultDomain),
    user: userOf(raw, input.defaultDomain),
  }
  return {authUrl: raw.authUrl, credentials: {keystone, kind: 'keystone'}}
}

function token(input: BuildInput, authType: string, useKeystone: boolean): Built {
  const {fields, raw} = input
  if (!raw.token) throw incomplete(input, authType, [fields.token])
  if (useKeystone && raw.authUrl) {
    const keystone: KeystoneMethod = {kind: 'token', project: projectOf(raw, input.defaultDomain), token: raw.token}
    return {authUrl: raw.authUrl, credentials: {keystone, kind: 'keystone'}}
  }

  if (!input.endpoint) {
    throw incomplete(input, authType, [
      `${fields.authUrl} or an image endpoint (imageService.endpoint) to use the token at`,
    ])
  }

  return {credentials: {kind: 'static-token', token: raw.token}}
}

/** Raw credentials → Credentials, checking that what the auth type needs is there. */
function buildCredentials(input: BuildInput): Built {
  const authType = input.raw.authType ?? defaultAuthType(input.raw)
  const kind = authKind(authType)
  switch (kind) {
    case 'application_credential': {
      return applicationCredential(input, authType)
    }

    case 'none': {
      if (!input.endpoint) {
        throw incomplete(input, authType, ['an image endpoint (image_endpoint_override or imageService.endpoint)'])
      }

      return {credentials: {kind: 'none'}}
    }

    case 'password': {
      return password(input, authType)
    }

    case 'static':
    case 'token': {
      return token(input, authType, kind === 'token')
    }

    case undefined: {
      throw new UsageError(
        'AUTH_TYPE_UNSUPPORTED',
        `${input.where}: auth type "${authType}" is not supported; imgcache supports password, v3applicationcredential, token, admin_token and none.`,
        {suggestions: ['Use an application credential (auth_type v3applicationcredential) or a password.']},
      )
    }
  }
}

function rawFromCloud(cloud: CloudConfig): RawCredentials {
  const a = cloud.auth
  return {
    appCredId: a.application_credential_id,
    appCredName: a.application_credential_name,
    appCredSecret: a.application_credential_secret,
    authType: cloud.authType,
    authUrl: a.auth_url,
    password: a.password,
    projectDomainId: a.project_domain_id,
    projectDomainName: a.project_domain_name,
    projectId: a.project_id,
    projectName: a.project_name,
    token: a.token,
    userDomainId: a.user_domain_id,
    userDomainName: a.user_domain_name,
    userId: a.user_id,
    username: a.username,
  }
}

function rawFromEnv(env: NodeJS.ProcessEnv): RawCredentials {
  const e = (k: string) => env[k] || undefined
  return {
    appCredId: e('OS_APPLICATION_CREDENTIAL_ID'),
    appCredName: e('OS_APPLICATION_CREDENTIAL_NAME'),
    appCredSecret: e('OS_APPLICATION_CREDENTIAL_SECRET'),
    authType: e('OS_AUTH_TYPE'),
    authUrl: e('OS_AUTH_URL'),
    password: e('OS_PASSWORD'),
    projectDomainId: e('OS_PROJECT_DOMAIN_ID'),
    projectDomainName: e('OS_PROJECT_DOMAIN_NAME'),
    projectId: e('OS_PROJECT_ID') ?? e('OS_TENANT_ID'),
    projectName: e('OS_PROJECT_NAME') ?? e('OS_TENANT_NAME'),
    token: e('OS_TOKEN') ?? e('OS_AUTH_TOKEN'),
    userDomainId: e('OS_USER_DOMAIN_ID'),
    userDomainName: e('OS_USER_DOMAIN_NAME'),
    userId: e('OS_USER_ID'),
    username: e('OS_USERNAME'),
  }
}

async function rawFromConfig(config: ImageServiceConfig, cwd: string): Promise<RawCredentials> {
  const read = async (file: string | undefined, field: string): Promise<string | undefined> =>
    file ? readSecretFile(file, `imageService.${field}`, cwd) : undefined
  const [password, appCredSecret, token] = await Promise.all([
    read(config.passwordFile, 'passwordFile'),
    read(config.applicationCredentialSecretFile, 'applicationCredentialSecretFile'),
    read(config.tokenFile, 'tokenFile'),
  ])
  return {
    appCredId: config.applicationCredentialId,
    appCredName: config.applicationCredentialName,
    appCredSecret,
    authUrl: config.authUrl,
    password,
    projectDomainName: config.projectDomainName,
    projectName: config.projectName,
    token,
    userDomainName: config.userDomainName,
    username: config.username,
  }
}

/**
 * Where imgcache finds Glance and its credentials, as OpenStack users expect:
 *
 * Credentials come whole from the first of:
 *  1. a clouds.yaml cloud named by OS_CLOUD, else by imageService.cloud (openstacksdk's search
 *     path, OS_CLIENT_CONFIG_FILE first, secure.yaml merged over it);
 *  2. OS_* variables (OS_AUTH_URL, OS_USERNAME, OS_PASSWORD, OS_APPLICATION_CREDENTIAL_*,
 *     OS_TOKEN, OS_AUTH_TYPE, …) when any credential variable is set;
 *  3. imageService's own fields (secrets only from files: passwordFile,
 *     applicationCredentialSecretFile, tokenFile);
 *  4. nothing, when imageService.endpoint alone is set (a Glance without Keystone);
 *  5. the only cloud of a clouds.yaml on the search path (openstacksdk does the same).
 * Where to go follows flag > environment > config: region OS_REGION_NAME > imageService.region
 * > the cloud's region; interface OS_INTERFACE > imageService.interface > the cloud's >
 * public; endpoint OS_IMAGE_ENDPOINT_OVERRIDE > imageService.endpoint > the cloud's
 * image_endpoint_override > the Keystone catalog.
 * Returns undefined when nothing at all is configured.
 */
export async function resolveAuth(
  config: ImageServiceConfig | undefined,
  env: NodeJS.ProcessEnv,
  location: AuthLocation,
): Promise<AuthSettings | undefined> {
  const source = await credentialSource(config, env, location)
  if (!source) return undefined
  const {cloud} = source
  const endpoint = pickEndpoint(config, env, cloud)
  const built = source.raw
    ? buildCredentials({
        defaultDomain: env.OS_DEFAULT_DOMAIN || 'default',
        endpoint: endpoint.url,
        fields: source.fields,
        raw: source.raw,
        where: source.where,
      })
    : {credentials: {kind: 'none'} as Credentials}
  const caFile = env.OS_CACERT || config?.caFile || cloud?.cacert
  return {
    authUrl: built.authUrl,
    ca: caFile ? await readCa(caFile, location.cwd) : undefined,
    caFile,
    credentials: built.credentials,
    endpoint: endpoint.url,
    insecure: (env.OS_INSECURE ?? '').toLowerCase() === 'true' || cloud?.verify === false,
    interface: pickInterface(config, env, cloud),
    origin: {credentials: source.where, endpoint: endpoint.origin, ignored: source.ignored},
    region: pickRegion(config, env, cloud),
  }
}

interface CredentialSource {
  cloud?: CloudConfig
  fields: FieldNames
  ignored: string[]
  /** Undefined: no credentials (an endpoint alone). */
  raw?: RawCredentials
  where: string
}

async function credentialSource(
  config: ImageServiceConfig | undefined,
  env: NodeJS.ProcessEnv,
  location: AuthLocation,
): Promise<CredentialSource | undefined> {
  const cloudsLocation = {cloudsFile: config?.cloudsFile, cwd: location.cwd, env, home: location.home}
  const ignored: string[] = []
  const envCredentials = presentEnvCredentials(env)
  const configCredentials = configHasCredentials(config)
  let cloud: CloudConfig | undefined
  if (env.OS_CLOUD || config?.cloud) {
    if (env.OS_CLOUD && config?.cloud && config.cloud !== env.OS_CLOUD) {
      ignored.push(`imageService.cloud "${config.cloud}" (OS_CLOUD wins)`)
    }

    const nameOrigin = env.OS_CLOUD ? 'OS_CLOUD' : 'imageService.cloud'
    cloud = await findCloud(env.OS_CLOUD || config?.cloud, {...cloudsLocation, nameOrigin})
  } else if (envCredentials.length === 0 && !configCredentials && !config?.endpoint) {
    cloud = await findCloud(undefined, cloudsLocation)
  }

  if (cloud) {
    if (envCredentials.length > 0) ignored.push(`${envCredentials.join(', ')} (a cloud is selected)`)
    if (configCredentials) ignored.push('imageService credential fields (a cloud is selected)')
    const extra = [
      cloud.secureFile ? `, secrets merged from ${cloud.secureFile}` : '',
      cloud.implicit ? '; the only cloud there' : '',
    ]
    return {
      cloud,
      fields: cloudFields,
      ignored,
      raw: rawFromCloud(cloud),
      where: `clouds.yaml cloud "${cloud.name}" (${cloud.file}${extra.join('')})`,
    }
  }

  if (envCredentials.length > 0) {
    if (configCredentials) ignored.push('imageService credential fields (OS_* variables are set)')
    return {fields: envFields, ignored, raw: rawFromEnv(env), where: `the environment (${envCredentials.join(', ')})`}
  }

  if (config && configCredentials) {
    return {
      fields: configFields,
      ignored,
      raw: await rawFromConfig(config, location.cwd),
      where: 'the imgcache config (imageService)',
    }
  }

  if (!config?.endpoint) return undefined
  return {
    fields: configFields,
    ignored,
    where: 'only imageService.endpoint is set: a Glance without Keystone',
  }
}

function pickEndpoint(
  config: ImageServiceConfig | undefined,
  env: NodeJS.ProcessEnv,
  cloud: CloudConfig | undefined,
): {origin?: string; url?: string} {
  if (env.OS_IMAGE_ENDPOINT_OVERRIDE) return {origin: 'OS_IMAGE_ENDPOINT_OVERRIDE', url: env.OS_IMAGE_ENDPOINT_OVERRIDE}
  if (config?.endpoint) return {origin: 'imageService.endpoint', url: config.endpoint}
  if (cloud?.imageEndpointOverride) {
    return {origin: `image_endpoint_override of cloud "${cloud.name}"`, url: cloud.imageEndpointOverride}
  }

  if (cloud && authKind(cloud.authType) === 'static' && cloud.auth.endpoint) {
    return {origin: `auth.endpoint of cloud "${cloud.name}"`, url: cloud.auth.endpoint}
  }

  return {}
}

function pickInterface(
  config: ImageServiceConfig | undefined,
  env: NodeJS.ProcessEnv,
  cloud: CloudConfig | undefined,
): Interface {
  return (
    parseInterface(env.OS_INTERFACE, 'OS_INTERFACE') ??
    parseInterface(config?.interface, 'imageService.interface') ??
    parseInterface(cloud?.interface, `interface of cloud "${cloud?.name}"`) ??
    'public'
  )
}

function pickRegion(
  config: ImageServiceConfig | undefined,
  env: NodeJS.ProcessEnv,
  cloud: CloudConfig | undefined,
): string | undefined {
  const region = env.OS_REGION_NAME || config?.region || cloud?.regions[0] || undefined
  if (region && cloud && cloud.regions.length > 0 && !cloud.regions.includes(region)) {
    throw new UsageError(
      'AUTH_CONFIG_INVALID',
      `Region "${region}" is not a region of cloud "${cloud.name}" (${cloud.regions.join(', ')}).`,
      {file: cloud.file, suggestions: ['Region names are case-sensitive: fix OS_REGION_NAME or imageService.region.']},
    )
  }

  return region
}

async function readCa(caFile: string, cwd: string): Promise<string> {
  const full = path.resolve(cwd, caFile)
  try {
    return await readFile(full, 'utf8')
  } catch (error) {
    throw fromErrno(error, 'cannot read the CA bundle', full, {field: 'imageService.caFile'})
  }
}

/** Where credentials and endpoint come from, for --verbose. Never a secret. */
export function describeAuth(settings: AuthSettings, resolvedEndpoint?: string): string {
  const c = settings.credentials
  const from = settings.origin.credentials
  const who =
    c.kind === 'keystone'
      ? `${describeMethod(c.keystone)} at Keystone ${displayUrl(identityV3Url(settings.authUrl ?? ''))}, from ${from}`
      : c.kind === 'static-token'
        ? `a pre-issued token, from ${from}`
        : `none (${from})`
  const endpoint = settings.endpoint
    ? `${displayUrl(settings.endpoint)} (from ${settings.origin.endpoint})`
    : `from the Keystone catalog (interface ${settings.interface}${settings.region ? `, region ${settings.region}` : ', any region'})`
  const resolved = resolvedEndpoint && !settings.endpoint ? `: ${displayUrl(resolvedEndpoint)}` : ''
  const lines = [`Image service credentials: ${who}.`, `Image endpoint: ${endpoint}${resolved}.`]
  if (settings.caFile) lines.push(`TLS CA bundle: ${settings.caFile}.`)
  if (settings.insecure) lines.push('TLS verification is off (verify: false / OS_INSECURE).')
  if (settings.origin.ignored.length > 0) lines.push(`Ignored: ${settings.origin.ignored.join('; ')}.`)
  return lines.join('\n')
}

export interface Access {
  /** Image API root, without version: requests go to `${root}/v2/...`. */
  endpoint: string
  /** Bumped at every authentication, so concurrent 401s renew once. */
  generation: number
  headers: Record<string, string>
  token?: string
}

/** Renew a Keystone token this long before it expires. */
const renewMarginMs = 60_000

/**
 * Holds the token and the image endpoint: authenticates on first use, again when the token is
 * about to expire, and once more when Glance answers 401 (`renew`).
 */
export class ImageServiceSession {
  private current?: Access & {expiresAt?: number}
  private generation = 0
  private pending?: Promise<Access>

  constructor(
    readonly settings: AuthSettings,
    private readonly http: HttpClient,
  ) {}

  get canRenew(): boolean {
    const c = this.settings.credentials
    return c.kind === 'keystone' && c.keystone.kind !== 'token'
  }

  /** The endpoint as far as known without authenticating. */
  get knownEndpoint(): string | undefined {
    return this.current?.endpoint ?? (this.settings.endpoint ? imageApiRoot(this.settings.endpoint) : undefined)
  }

  /** Token and endpoint for the next request. */
  async access(): Promise<Access> {
    const c = this.current
    if (c && (c.expiresAt === undefined || c.expiresAt - Date.now() > renewMarginMs)) return c
    this.pending ??= this.authenticate().finally(() => {
      this.pending = undefined
    })
    return this.pending
  }

  describe(): string {
    return describeAuth(this.settings, this.current?.endpoint)
  }

  /** After a 401 with `failed`: get a new token if that can help. True when a retry makes sense. */
  async renew(failed: Access): Promise<boolean> {
    if (!this.canRenew) return false
    if (this.current && this.current.generation !== failed.generation) return true
    this.current = undefined
    await this.access()
    return true
  }

  /** Every secret this session knows, to scrub from any text shown. */
  secrets(): string[] {
    const c = this.settings.credentials
    const out: string[] = this.current?.token ? [this.current.token] : []
    if (c.kind === 'static-token') out.push(c.token)
    if (c.kind === 'keystone') {
      const k = c.keystone
      if (k.kind === 'password') out.push(k.password)
      if (k.kind === 'application_credential') out.push(k.applicationCredential.secret)
      if (k.kind === 'token') out.push(k.token)
    }

    return out
  }

  private async authenticate(): Promise<Access> {
    const s = this.settings
    const c = s.credentials
    const generation = ++this.generation
    let access: Access & {expiresAt?: number}
    switch (c.kind) {
      case 'keystone': {
        const hints = [`The credentials come from ${s.origin.credentials}.`]
        const issued = await issueToken(this.http, s.authUrl as string, c.keystone, hints)
        const endpoint =
          s.endpoint ?? selectImageEndpoint(issued.catalog, s, `Keystone at ${identityV3Url(s.authUrl as string)}`)
        access = {
          endpoint: imageApiRoot(endpoint),
          expiresAt: issued.expiresAt,
          generation,
          headers: {'X-Auth-Token': issued.token},
          token: issued.token,
        }
        break
      }

      case 'none': {
        access = {endpoint: imageApiRoot(s.endpoint as string), generation, headers: {}}
        break
      }

      case 'static-token': {
        access = {
          endpoint: imageApiRoot(s.endpoint as string),
          generation,
          headers: {'X-Auth-Token': c.token},
          token: c.token,
        }
        break
      }
    }

    this.current = access
    return access
  }
}
