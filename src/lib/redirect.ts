import {ImgcacheError} from './errors.js'

/**
 * Redirects and credentials (README "Redirects"). A redirect within the origin of the request
 * (scheme, host and port) is followed with the request's credentials; a redirect to another origin
 * is followed WITHOUT them: the token (X-Auth-Token), a URL source's Basic authorization, cookies.
 *
 * This is what `requests` does for its Authorization header (requests/sessions.py
 * `SessionRedirectMixin.rebuild_auth` / `should_strip_auth`: a new host drops it) and what got and
 * curl do for Authorization and cookies. OpenStack's own clients do not go that far for the token:
 * keystoneauth1 follows redirects itself (keystoneauth1/session.py `Session._send_request`, "We
 * handle redirection manually") and re-sends the same headers, X-Auth-Token included, to whatever
 * Location it is given, and glanceclient (glanceclient/common/http.py `HTTPClient._request`) sets
 * X-Auth-Token as a custom header that requests does not strip. imgcache deliberately does not
 * match them there: a token sent to another host is a credential handed to whoever runs it.
 * A request with a body (Keystone's POST of a password) is never sent on to another origin: it
 * is refused (REDIRECT_REFUSED) rather than re-posted.
 */

/** Request headers that carry a credential; lower case. */
export const CREDENTIAL_HEADERS: readonly string[] = [
  'authorization',
  'cookie',
  'proxy-authorization',
  'x-auth-token',
  'x-subject-token',
]

/** Redirects followed for one request before it fails as a loop (got's default, and keystoneauth's order of magnitude). */
export const MAX_REDIRECTS = 10

export function sameOrigin(a: string | URL, b: string | URL): boolean {
  return new URL(a).origin === new URL(b).origin
}

/** `headers` without the credential ones (any case). */
export function withoutCredentials(headers: Record<string, string>): Record<string, string> {
  return Object.fromEntries(
    Object.entries(headers).filter(([name]) => !CREDENTIAL_HEADERS.includes(name.toLowerCase())),
  )
}

/** An origin for messages: scheme, host and port; never a path or a query (a signed URL's secret). */
export function originOf(url: string | URL): string {
  try {
    return new URL(url).origin
  } catch {
    return '(an invalid URL)'
  }
}

export interface RedirectHop {
  headers: Record<string, string>
  url: string
}

/**
 * The request after a redirect from `from` to `location` (absolute or relative to `from`): to another
 * origin without its credentials. A target that is not http(s) is refused.
 */
export function followRedirect(from: RedirectHop, location: string, image: string): RedirectHop {
  let target: URL
  try {
    target = new URL(location, from.url)
  } catch {
    throw new ImgcacheError('REDIRECT_INVALID', `${originOf(from.url)} redirected image ${image} to an invalid URL.`, {
      image,
      suggestions: ['Check the image service endpoint (and any proxy in front of it).'],
    })
  }

  if (target.protocol !== 'http:' && target.protocol !== 'https:') {
    throw new ImgcacheError(
      'REDIRECT_REFUSED',
      `${originOf(from.url)} redirected image ${image} to a ${target.protocol.replace(':', '')} URL; only http and https are followed.`,
      {image, suggestions: ['Check the image service endpoint (and any proxy in front of it).']},
    )
  }

  const url = target.toString()
  return {headers: sameOrigin(from.url, url) ? from.headers : withoutCredentials(from.headers), url}
}

/** A redirect a mover did not follow itself (curl with a token), for its caller to re-issue (followRedirect). */
export class RedirectedError extends ImgcacheError {
  constructor(
    /** The Location, as the server gave it: may hold a signed URL's query, never shown. */
    readonly location: string,
    subject: {image?: string; node?: string} = {},
  ) {
    super('REDIRECTED', 'the image service redirected the download', subject)
    this.name = 'RedirectedError'
  }
}

/** More than MAX_REDIRECTS redirects for one request. */
export function redirectLoopError(service: string, image: string | undefined, cause?: unknown): ImgcacheError {
  return new ImgcacheError(
    'REDIRECT_LOOP',
    `${service} redirected ${image ? `the request for image ${image}` : 'the request'} more than ${MAX_REDIRECTS} times (a redirect loop).`,
    {
      cause,
      image,
      suggestions: [
        'Check the image service endpoint and any proxy or load balancer in front of it: its redirects lead back to themselves.',
      ],
    },
  )
}

/** A request with a body (a password) redirected to another origin: not sent on. */
export function redirectRefusedError(
  service: string,
  image: string | undefined,
  from: string,
  to: string,
  cause?: unknown,
): ImgcacheError {
  return new ImgcacheError(
    'REDIRECT_REFUSED',
    `${service} redirected a request carrying credentials from ${originOf(from)} to another host, ${originOf(to)}; imgcache does not send them there.`,
    {
      cause,
      image,
      suggestions: [
        `If ${originOf(to)} is the right service, configure it directly (imageService.authUrl / imageService.endpoint, or clouds.yaml).`,
      ],
    },
  )
}
