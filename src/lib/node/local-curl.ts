import type {UrlFetch} from './types.js'

import {ImgcacheError} from '../errors.js'

/** How imgcache runs curl anywhere: quiet but for errors, an HTTP error is a failure, redirects followed over http(s) only. */
export const CURL_COMMON = ['--silent', '--show-error', '--fail', '--location', '--proto', '=http,https']

/**
 * curl as the local host's data mover (LocalNode.downloadInto), under `setpriv --pdeathsig KILL`:
 * a curl whose imgcache was killed (SIGKILL, OOM) dies with it instead of writing on into a `.part`
 * the next run resumes. Everything about the request, the URL (a signed URL's query is a secret) and
 * the headers (the token), reaches curl on its stdin as a config file (`--config -`): nothing of it
 * is in an argv. `--disable` first: no ~/.curlrc changes what is fetched. `--noproxy *`: as the
 * image service client (got) imgcache would otherwise use, no proxy from the environment. The body
 * goes to stdout, which is the `.part`'s descriptor.
 */
export function localCurlArgv(request: Pick<UrlFetch, 'stallSeconds'>): string[] {
  return [
    'setpriv',
    '--pdeathsig',
    'KILL',
    '--',
    'curl',
    '--disable',
    ...CURL_COMMON,
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
