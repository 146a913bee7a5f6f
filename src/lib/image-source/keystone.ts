import {UsageError} from '../errors.js'
import {displayUrl, type HttpClient, httpErrorResponse, networkError, type RequestContext, statusError} from './http.js'

/** A user or project named by id, or by name within a domain (by id or name). */
export interface NamedRef {
  domainId?: string
  domainName?: string
  id?: string
  name?: string
}

/** How to get a token from Keystone v3. Secrets live here: never print these objects. */
export type KeystoneMethod =
  | {
      applicationCredential: {id?: string; name?: string; secret: string; user?: NamedRef}
      kind: 'application_credential'
    }
  | {kind: 'password'; password: string; project?: NamedRef; user: NamedRef}
  | {kind: 'token'; project?: NamedRef; token: string}

export interface CatalogEndpoint {
  id?: string
  interface: string
  region?: string
  region_id?: string
  url: string
}

export interface CatalogService {
  endpoints: CatalogEndpoint[]
  name?: string
  type: string
}

export interface IssuedToken {
  catalog: CatalogService[]
  /** ms since the epoch */
  expiresAt?: number
  projectName?: string
  token: string
}

/** The Identity v3 root for an auth_url written with or without a version. */
export function identityV3Url(authUrl: string): string {
  const trimmed = authUrl.replace(/\/+$/, '')
  if (/\/v3$/.test(trimmed)) return trimmed
  if (/\/v2\.0$/.test(trimmed)) return trimmed.replace(/\/v2\.0$/, '/v3')
  return `${trimmed}/v3`
}

/** The image API root of an endpoint URL written with or without a version (`…/v2`, `…/v2.1/`). */
export function imageApiRoot(url: string): string {
  return url
    .replace(/\/+$/, '')
    .replace(/\/v\d+(\.\d+)?$/, '')
    .replace(/\/+$/, '')
}

function scopeBody(ref: NamedRef): Record<string, unknown> {
  if (ref.id) return {id: ref.id}
  return {domain: ref.domainId ? {id: ref.domainId} : {name: ref.domainName}, name: ref.name}
}

/** The body of POST /v3/auth/tokens (keystone-api-ref). */
export function authRequestBody(method: KeystoneMethod): Record<string, unknown> {
  switch (method.kind) {
    case 'application_credential': {
      const ac = method.applicationCredential
      const credential: Record<string, unknown> = {secret: ac.secret}
      if (ac.id) credential.id = ac.id
      else {
        credential.name = ac.name
        if (ac.user) credential.user = scopeBody(ac.user)
      }

      return {auth: {identity: {application_credential: credential, methods: ['application_credential']}}}
    }

    case 'password': {
      const identity = {methods: ['password'], password: {user: {...scopeBody(method.user), password: method.password}}}
      return {auth: {identity, ...(method.project ? {scope: {project: scopeBody(method.project)}} : {})}}
    }

    case 'token': {
      const identity = {methods: ['token'], token: {id: method.token}}
      return {auth: {identity, ...(method.project ? {scope: {project: scopeBody(method.project)}} : {})}}
    }
  }
}

function describeRef(ref: NamedRef | undefined): string {
  if (!ref) return ''
  if (ref.id) return ref.id
  const domain = ref.domainId ?? ref.domainName
  return `"${ref.name}"${domain ? ` (domain ${domain})` : ''}`
}

/** Who is authenticating, for messages: never a secret. */
export function describeMethod(method: KeystoneMethod): string {
  switch (method.kind) {
    case 'application_credential': {
      const ac = method.applicationCredential
      return ac.id
        ? `application credential ${ac.id}`
        : `application credential "${ac.name}" of user ${describeRef(ac.user)}`
    }

    case 'password': {
      return `password of user ${describeRef(method.user)}${method.project ? `, project ${describeRef(method.project)}` : ', no project scope'}`
    }

    case 'token': {
      return `a pre-issued token${method.project ? `, rescoped to project ${describeRef(method.project)}` : ''}`
    }
  }
}

function methodSecrets(method: KeystoneMethod): string[] {
  switch (method.kind) {
    case 'application_credential': {
      return [method.applicationCredential.secret]
    }

    case 'password': {
      return [method.password]
    }

    case 'token': {
      return [method.token]
    }
  }
}

interface TokenBody {
  token?: {catalog?: CatalogService[]; expires_at?: string; project?: {name?: string}}
}

/**
 * A token from Keystone v3, with its catalog. A pre-issued token without a new scope is validated
 * (GET /v3/auth/tokens, allowed for one's own token), which keeps its scope and gives its catalog.
 */
export async function issueToken(
  http: HttpClient,
  authUrl: string,
  method: KeystoneMethod,
  hints: string[] = [],
): Promise<IssuedToken> {
  const v3 = identityV3Url(authUrl)
  const ctx: RequestContext = {secrets: methodSecrets(method), service: `Keystone at ${displayUrl(v3)}`}
  let response
  try {
    response =
      method.kind === 'token' && !method.project
        ? await http.client.get(`${v3}/auth/tokens`, {
            headers: {'x-auth-token': method.token, 'x-subject-token': method.token},
            responseType: 'json',
          })
        : await http.client.post(`${v3}/auth/tokens`, {json: authRequestBody(method), responseType: 'json'})
  } catch (error) {
    const failed = httpErrorResponse(error)
    if (!failed) throw networkError(error, ctx)
    if (failed.status === 401 || (method.kind === 'token' && failed.status === 404)) {
      throw new UsageError(
        'AUTH_FAILED',
        `${ctx.service} refused the ${describeMethod(method)} (HTTP ${failed.status}${method.kind === 'token' ? ': the token is invalid or has expired' : ''}).`,
        {
          suggestions: [
            method.kind === 'token'
              ? 'Get a new token (openstack token issue) and update OS_TOKEN or imageService.tokenFile.'
              : 'Check the user, domain, project and secret; a changed password or a deleted application credential also gives this.',
            ...hints,
          ],
        },
      )
    }

    throw statusError(failed.status, failed.body, {...ctx, suggestions: hints}, 'issuing a token')
  }

  const token = response.headers['x-subject-token']
  const body = response.body as TokenBody
  if (typeof token !== 'string' || !body?.token) {
    throw new UsageError(
      'AUTH_FAILED',
      `${ctx.service} answered without a token (is ${displayUrl(v3)} a Keystone v3 endpoint?).`,
      {
        suggestions: [
          'Check auth_url: it must be the Keystone endpoint, e.g. https://keystone.example.net:5000/v3.',
          ...hints,
        ],
      },
    )
  }

  const expires = body.token.expires_at ? Date.parse(body.token.expires_at) : Number.NaN
  return {
    catalog: Array.isArray(body.token.catalog) ? body.token.catalog : [],
    expiresAt: Number.isNaN(expires) ? undefined : expires,
    projectName: body.token.project?.name,
    token,
  }
}

export interface EndpointWanted {
  interface: string
  region?: string
}

/** The image endpoint of a token's catalog for an interface (and region). Pure. */
export function selectImageEndpoint(catalog: CatalogService[], wanted: EndpointWanted, where: string): string {
  const services = catalog.filter((s) => s.type === 'image')
  const all = services.flatMap((s) => s.endpoints ?? [])
  const regionOf = (e: CatalogEndpoint) => e.region_id ?? e.region
  if (all.length === 0) {
    throw new UsageError(
      'NO_IMAGE_ENDPOINT',
      catalog.length === 0
        ? `The token from ${where} has an empty catalog (is it scoped to a project?).`
        : `The catalog from ${where} has no image service (types: ${[...new Set(catalog.map((s) => s.type))].join(', ')}).`,
      {
        suggestions: [
          'Scope the credentials to a project (project_name / OS_PROJECT_NAME), or set imageService.endpoint to the Glance URL.',
        ],
      },
    )
  }

  const matching = all.filter(
    (e) => e.interface === wanted.interface && (wanted.region === undefined || regionOf(e) === wanted.region),
  )
  if (matching.length === 0) {
    const have = all.map((e) => `${e.interface} in ${regionOf(e) ?? '(no region)'}`)
    throw new UsageError(
      'NO_IMAGE_ENDPOINT',
      `The catalog from ${where} has no ${wanted.interface} image endpoint${wanted.region ? ` in region ${wanted.region}` : ''}; it has: ${[...new Set(have)].join(', ')}.`,
      {
        field: 'imageService.interface',
        suggestions: [
          'Choose an interface and region the catalog has (interface / region_name, OS_INTERFACE / OS_REGION_NAME).',
        ],
      },
    )
  }

  const regions = [...new Set(matching.map((e) => regionOf(e) ?? '(no region)'))]
  if (wanted.region === undefined && regions.length > 1) {
    throw new UsageError(
      'IMAGE_REGION_AMBIGUOUS',
      `The catalog from ${where} has ${wanted.interface} image endpoints in several regions (${regions.join(', ')}) and no region is set.`,
      {
        field: 'imageService.region',
        suggestions: ['Set the region (region_name in clouds.yaml, OS_REGION_NAME, or imageService.region).'],
      },
    )
  }

  return (matching[0] as CatalogEndpoint).url
}
