import {describe, expect, it} from 'vitest'

import {localCurlConfig} from '../../src/lib/node/local-curl.js'
import {curlArgv} from '../../src/lib/node/ssh.js'

// A signed URL's query and the token are secrets: on an SSH node they must reach curl on its stdin,
// never its argv (which every user of the node can read in /proc).
describe('curl on an SSH node (--via node)', () => {
  const request = {
    dest: '/var/lib/nova/instances/_base/abc.part',
    headers: {'X-Auth-Token': 'gAAAA-secret-token'},
    stallSeconds: 60,
    url: 'https://mirror.example.net/jammy.qcow2?X-Amz-Signature=deadbeef&X-Amz-Credential=AKIA',
  }

  it('keeps the URL and the headers out of its argv, and ignores a ~/.curlrc', () => {
    const argv = curlArgv(request)
    const text = argv.join(' ')
    expect(text).not.toContain('X-Amz-Signature')
    expect(text).not.toContain('mirror.example.net')
    expect(text).not.toContain('secret-token')
    expect(argv.slice(0, 2)).toEqual(['curl', '--disable'])
    expect(argv.slice(-2)).toEqual(['--config', '-'])
    expect(argv).toContain(request.dest)
  })

  it('gives them on its stdin, in curl config syntax', () => {
    const config = localCurlConfig(request)
    expect(config).toContain(`url = "${request.url}"`)
    expect(config).toContain('header = "X-Auth-Token: gAAAA-secret-token"')
  })

  it('follows no redirect itself when the request carries headers (a token), and prints where it led', () => {
    const argv = curlArgv(request).join(' ')
    expect(argv).toContain('--max-redirs 0')
    expect(argv).toContain('%{redirect_url}')
    expect(curlArgv({...request, headers: {}}).join(' ')).toContain('--max-redirs 10')
    expect(curlArgv({...request, headers: {}}).join(' ')).not.toContain('%{redirect_url}')
  })

  it('resumes with --continue-at when asked', () => {
    expect(curlArgv({...request, resumeFrom: 4096}).join(' ')).toContain('--continue-at 4096')
  })
})
