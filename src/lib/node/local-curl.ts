import type {UrlFetch} from './types.js'

import {ImgcacheError} from '../errors.js'
import {MAX_REDIRECTS} from '../redirect.js'

/** How imgcache runs curl anywhere: quiet but for errors, an HTTP error is a failure, redirects followed over http(s) only. */
export const CURL_COMMON = ['--silent', '--show-error', '--fail', '--location', '--proto', '=http,https']

/** The line curlRedirectArgv has curl write on its stderr: the Location of a redirect it did not follow. */
export const CURL_REDIRECT_MARK = 'imgcache-redirect-to: '

/**
 * How many redirects curl follows itself (src/lib/redirect.ts). curl sends custom headers, our
 * X-Auth-Token among them, to wherever a redirect leads (curl(1), -H: "headers set with this option
 * are sent to all hosts in redirects"): a request with headers (all of them credentials) therefore
 * follows none (`--max-redirs 0`, curl exit 47) and imgcache re-issues it itself, to another origin
 * without them. `withLocation` has curl print the redirect's target on stderr after
 * CURL_REDIRECT_MARK (SSH nodes: the hop is re-issued on the node); the local mover does not need
 * it: a curl that ends before its first byte hands the request to the streamed download (got),
 * whose redirect hook drops them.
 */
export function curlRedirectArgv(request: Pick<UrlFetch, 'headers'>, withLocation: boolean): string[] {
  if (Object.keys(request.headers).length === 0) return ['--max-redirs', String(MAX_REDIRECTS)]
  return [
    '--max-redirs',
    '0',
    ...(withLocation ? ['--write-out', `%{stderr}${CURL_REDIRECT_MARK}%{redirect_url}\\n`] : []),
  ]
}

/**
 * curl as the local host's data mover (LocalNode.downloadInto), under `setpriv --pdeathsig KILL`:
 * a curl whose imgcache was killed (SIGKILL, OOM) dies with it instead of writing on into a `.part`
 * the next run resumes. Everything about the request, the URL (a signed URL's query is a secret) and
 * the headers (the token), reaches curl on its stdin as a config file (`--config -`): nothing of it
 * is in an argv. `--disable` first: no ~/.curlrc changes what is fetched. `--noproxy *`: as the
 * image service client (got) imgcache would otherwise use, no proxy from the environment. The body
 * goes to stdout, which is the `.part`'s descriptor.
 */
export function localCurlArgv(request: Pick<UrlFetch, 'headers' | 'stallSeconds'>): string[] {
  return [
    'setpriv',
    '--pdeathsig',
    'KILL',
    '--',
    'curl',
    '--disable',
    ...CURL_COMMON,
    ...curlRedirectArgv(request, false),
    '--proto-redir',
    '=http,https',
    '--noproxy',
    '*',
    '--connect-timeout',
    '10',
    '--speed-limit',
    '1',
    '--speed-time',
    String(request.stallSeconds),
    '--config',
    '-',
  ]
}

/** One value in curl's config syntax: double-quoted, `\` and `"` escaped; no line breaks allowed. */
function configValue(value: string, what: string): string {
  if (/[\r\n\0]/.test(value)) {
    throw new ImgcacheError('BAD_REQUEST_VALUE', `the ${what} of the download holds a line break or NUL`)
  }

  return `"${value.replaceAll('\\', '\\\\').replaceAll('"', String.raw`\"`)}"`
}

/** What curl reads on its stdin (`--config -`): the URL, the headers and imgcache's user agent. */
export function localCurlConfig(request: Pick<UrlFetch, 'headers' | 'url'>): string {
  const lines = [`url = ${configValue(request.url, 'URL')}`, `user-agent = "imgcache"`]
  for (const [name, value] of Object.entries(request.headers)) {
    lines.push(`header = ${configValue(`${name}: ${value}`, `header ${name}`)}`)
  }

  return `${lines.join('\n')}\n`
}
