import {describe, expect, it} from 'vitest'

import {sshArgv, sshControlArgv, type SshTarget} from '../../src/lib/node/ssh-args.js'

const CP = '/tmp/imgc.AbC123/cm/%C'

/** The options every invocation carries, in order, with the defaults. */
const ALWAYS = [
  '-o',
  'BatchMode=yes',
  '-o',
  'ConnectTimeout=10',
  '-o',
  'ServerAliveInterval=5',
  '-o',
  'ServerAliveCountMax=3',
  '-o',
  'StrictHostKeyChecking=yes',
  '-o',
  'ControlMaster=auto',
  '-o',
  `ControlPath=${CP}`,
  '-o',
  'ControlPersist=60',
  '-o',
  'LogLevel=ERROR',
]

/** The `-o Name=value` pairs of an argv, as a map (the last one wins, as for a reader). */
function options(argv: string[]): Map<string, string> {
  const map = new Map<string, string>()
  for (const [i, arg] of argv.entries()) {
    if (arg !== '-o') continue
    const [name, ...value] = (argv[i + 1] ?? '').split('=')
    map.set(name ?? '', value.join('='))
  }

  return map
}

describe('sshArgv', () => {
  it('with only a host: the fixed options, no pty, then -- host and ONE command argument', () => {
    expect(sshArgv({controlPath: CP, host: 'compute1'}, ['true'])).toEqual([...ALWAYS, '-T', '--', 'compute1', 'true'])
  })

  it('leaves port, user, identity, known_hosts, config and jump host to ssh_config when unset', () => {
    const argv = sshArgv({controlPath: CP, host: 'compute1'}, ['true'])
    for (const flag of ['-p', '-l', '-i', '-F', '-J']) expect(argv).not.toContain(flag)
    expect(options(argv).has('UserKnownHostsFile')).toBe(false)
    expect(options(argv).has('IdentitiesOnly')).toBe(false)
  })

  it.each<[string, Partial<SshTarget>, string[], Record<string, string>]>([
    ['port', {port: 2222}, ['-p', '2222'], {}],
    ['user', {user: 'nova'}, ['-l', 'nova'], {}],
    ['identity file, and only that key', {identityFile: '/k/id'}, ['-i', '/k/id'], {IdentitiesOnly: 'yes'}],
    ['config file', {configFile: '/etc/imgcache/ssh_config'}, ['-F', '/etc/imgcache/ssh_config'], {}],
    ['jump host', {jumpHost: 'ops@bastion:2200'}, ['-J', 'ops@bastion:2200'], {}],
    ['known_hosts file', {knownHostsFile: '/k/known_hosts'}, [], {UserKnownHostsFile: '/k/known_hosts'}],
    [
      'known_hosts path with a space, quoted for ssh',
      {knownHostsFile: '/k/my hosts'},
      [],
      {UserKnownHostsFile: '"/k/my hosts"'},
    ],
    ['accept-new', {strictHostKeyChecking: 'accept-new'}, [], {StrictHostKeyChecking: 'accept-new'}],
    [
      'timeouts',
      {connectTimeout: 3, serverAliveCountMax: 2, serverAliveInterval: 1},
      [],
      {ConnectTimeout: '3', ServerAliveCountMax: '2', ServerAliveInterval: '1'},
    ],
    [
      'fractional seconds rounded up',
      {connectTimeout: 0.5, serverAliveInterval: 1.2},
      [],
      {ConnectTimeout: '1', ServerAliveInterval: '2'},
    ],
    ['control persist', {controlPersist: 600}, [], {ControlPersist: '600'}],
  ])('%s', (_name, extra, flags, expectedOptions) => {
    const argv = sshArgv({controlPath: CP, host: 'compute1', ...extra}, ['true'])
    const beforeHost = argv.slice(0, argv.indexOf('--'))
    for (let i = 0; i < flags.length; i += 2) {
      const at = beforeHost.indexOf(flags[i] ?? '')
      expect(at).toBeGreaterThanOrEqual(0)
      expect(beforeHost[at + 1]).toBe(flags[i + 1])
    }

    expect(Object.fromEntries(options(argv))).toMatchObject(expectedOptions)
    expect(argv.slice(-3)).toEqual(['--', 'compute1', 'true'])
  })

  it('quotes a remote argv into a single argument', () => {
    const argv = sshArgv({controlPath: CP, host: 'h'}, ['qemu-img', 'info', '/x/a b', "it's"])
    expect(argv.at(-1)).toBe(String.raw`qemu-img info '/x/a b' 'it'\''s'`)
    expect(argv.at(-2)).toBe('h')
  })

  it('passes an already quoted script through unchanged', () => {
    const script = `set -e; cd '/x y' && exec cat`
    expect(sshArgv({controlPath: CP, host: 'h'}, script).at(-1)).toBe(script)
  })

  it('can make a one-off connection without multiplexing, and close stdin', () => {
    const argv = sshArgv({controlPath: CP, host: 'h'}, ['true'], {multiplex: false, noStdin: true})
    expect(options(argv).get('ControlMaster')).toBe('no')
    expect(options(argv).get('ControlPath')).toBe('none')
    expect(options(argv).has('ControlPersist')).toBe(false)
    expect(argv).toContain('-n')
  })

  it('never turns host-key checking off, even when handed "no"', () => {
    expect(() => sshArgv({controlPath: CP, host: 'h', strictHostKeyChecking: 'no' as 'yes'}, ['true'])).toThrow(
      /never turns host-key checking off/,
    )
    const argv = sshArgv({controlPath: CP, host: 'h', knownHostsFile: '/k', strictHostKeyChecking: 'accept-new'}, [
      'true',
    ]).join(' ')
    expect(argv).not.toMatch(/StrictHostKeyChecking=no|\/dev\/null/)
  })

  it.each<[string, Partial<SshTarget>, RegExp]>([
    ['a host that looks like an option', {host: '-oProxyCommand=evil'}, /host .* must not start with "-"/],
    ['an empty host', {host: ''}, /host "" is not usable/],
    ['a host with a space', {host: 'a b'}, /host "a b" is not usable/],
    ['a user with a newline', {user: 'root\nx'}, /user .* is not usable/],
    ['a jump host that looks like an option', {jumpHost: '-oProxyCommand=x'}, /jumpHost/],
    ['port 0', {port: 0}, /port must be a whole number from 1 to 65535/],
    ['port 70000', {port: 70_000}, /port must be/],
    ['keep-alives turned off', {serverAliveInterval: 0}, /serverAliveInterval must be a positive number/],
    ['no keep-alive tries', {serverAliveCountMax: 0}, /serverAliveCountMax must be a whole number/],
    ['an infinite timeout', {connectTimeout: Number.POSITIVE_INFINITY}, /connectTimeout must be a positive/],
    ['a double quote in known_hosts', {knownHostsFile: '/k/"x"'}, /cannot contain a double quote/],
    [
      'a ControlPath too long once %C is expanded',
      {controlPath: `/tmp/${'d'.repeat(45)}/%C`},
      /ssh can bind at most 90/,
    ],
  ])('rejects %s', (_name, extra, message) => {
    expect(() => sshArgv({controlPath: CP, host: 'h', ...extra}, ['true'])).toThrow(message)
  })

  it('accepts a ControlPath of exactly 90 bytes once expanded', () => {
    const dir = `/tmp/${'d'.repeat(44)}` // 49 + "/" + 40 = 90
    expect(() => sshArgv({controlPath: `${dir}/%C`, host: 'h'}, ['true'])).not.toThrow()
  })

  it('refuses to run without a command (ssh would open a login shell)', () => {
    expect(() => sshArgv({controlPath: CP, host: 'h'}, '  ')).toThrow(/without a remote command/)
    expect(() => sshArgv({controlPath: CP, host: 'h'}, [])).toThrow(/empty argv/)
  })
})

describe('sshControlArgv', () => {
  it('addresses the same master: same config, socket, port and user', () => {
    const target: SshTarget = {configFile: '/c', controlPath: CP, host: 'h', port: 2222, user: 'nova'}
    const argv = sshControlArgv(target, 'exit')
    expect(argv.slice(-4)).toEqual(['-O', 'exit', '--', 'h'])
    expect(options(argv).get('ControlPath')).toBe(CP)
    expect(argv.join(' ')).toContain('-F /c')
    expect(argv.join(' ')).toContain('-p 2222 -l nova')
  })
})
