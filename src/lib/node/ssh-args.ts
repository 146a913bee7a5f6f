import {ImgcacheError, UsageError} from '../errors.js'
import {shellCommand, shellQuote} from './quote.js'

/** How to reach one node with the system OpenSSH client. Unset fields are left to ssh_config. */
export interface SshTarget {
  /** ssh_config file passed with `-F` (default: ~/.ssh/config, as ssh itself reads). */
  configFile?: string
  /** Seconds to wait for the TCP connection and the SSH banner (default 10). */
  connectTimeout?: number
  /**
   * Multiplexing socket, e.g. `/tmp/imgcache-0/%C`. ssh binds a temporary name 17 bytes longer and
   * a unix socket path has at most 107 bytes, so the expanded path must stay within 90 bytes.
   */
  controlPath: string
  /** Seconds the master connection stays open after its last session (default 60). */
  controlPersist?: number
  host: string
  identityFile?: string
  /** `-J`: `[user@]host[:port]`, comma-separated for several hops. */
  jumpHost?: string
  knownHostsFile?: string
  port?: number
  /** Keep-alives unanswered before ssh gives up (default 3). */
  serverAliveCountMax?: number
  /** Seconds between keep-alives on a silent connection (default 5). */
  serverAliveInterval?: number
  /** `yes` (default) or `accept-new`; host-key checking is never turned off. */
  strictHostKeyChecking?: 'accept-new' | 'yes'
  user?: string
}

export interface SshArgvOptions {
  /**
   * Share one connection per node (default true). False makes a one-off connection: no master is
   * started or used, and ssh's own messages (a keep-alive timeout, say) reach this process's stderr
   * instead of a backgrounded master's.
   */
  multiplex?: boolean
  /** The remote command reads nothing: stdin from /dev/null (`-n`). */
  noStdin?: boolean
}

export const SSH_DEFAULTS = {
  connectTimeout: 10,
  controlPersist: 60,
  serverAliveCountMax: 3,
  serverAliveInterval: 5,
} as const

/** Longest expanded ControlPath ssh can bind (107-byte sun_path minus its `.XXXXXXXXXXXXXXXX`). */
export const MAX_CONTROL_PATH_BYTES = 90

/**
 * Arguments for `ssh` (the program name not included) that run one remote command on a node.
 * `remote` is an argv, quoted here with shellCommand, or an already quoted `sh` script. Either way
 * it travels as ONE argument: ssh joins its arguments with spaces, which would undo any quoting.
 *
 * Always set: BatchMode (never prompt), ConnectTimeout and ServerAlive* (a partitioned node is
 * noticed in seconds, not after TCP's ~15 minutes), host-key checking, multiplexing, LogLevel=ERROR
 * (no "Permanently added" notices mixed into the command's stderr) and `-T` (no pty: a remote lock
 * holder must see EOF on stdin when the connection drops). Port, user, identity, known_hosts and
 * jump host are passed only when set, so ~/.ssh/config (or `configFile`) decides the rest.
 */
export function sshArgv(target: SshTarget, remote: readonly string[] | string, options: SshArgvOptions = {}): string[] {
  const command = typeof remote === 'string' ? remote : shellCommand(remote)
  if (command.trim() === '') {
    throw new ImgcacheError('SSH_EMPTY_COMMAND', 'refusing to run ssh without a remote command (it would open a shell)')
  }

  if (command.includes('\0')) {
    throw new ImgcacheError('SHELL_ARG_NUL', 'cannot pass a remote command containing a NUL byte to ssh')
  }

  return [
    ...commonArgs(target, options.multiplex ?? true),
    '-T',
    ...(options.noStdin ? ['-n'] : []),
    '--',
    checkWord(target.host, 'host'),
    command,
  ]
}

/**
 * Arguments for `ssh -O check|exit|stop` on the master connection `sshArgv` would use: the same
 * host, port, user and config, since the socket name (%C) is a hash of them.
 */
export function sshControlArgv(target: SshTarget, command: 'check' | 'exit' | 'stop'): string[] {
  return [...commonArgs(target, true), '-O', command, '--', checkWord(target.host, 'host')]
}

function commonArgs(target: SshTarget, multiplex: boolean): string[] {
  const args: string[] = []
  const option = (name: string, value: number | string) => args.push('-o', `${name}=${value}`)
  if (target.configFile !== undefined) args.push('-F', checkPath(target.configFile, 'configFile'))
  option('BatchMode', 'yes')
  option('ConnectTimeout', seconds(target.connectTimeout ?? SSH_DEFAULTS.connectTimeout, 'connectTimeout'))
  option(
    'ServerAliveInterval',
    seconds(target.serverAliveInterval ?? SSH_DEFAULTS.serverAliveInterval, 'serverAliveInterval'),
  )
  option(
    'ServerAliveCountMax',
    count(target.serverAliveCountMax ?? SSH_DEFAULTS.serverAliveCountMax, 'serverAliveCountMax'),
  )
  option('StrictHostKeyChecking', hostKeyChecking(target.strictHostKeyChecking))
  if (target.knownHostsFile !== undefined) {
    option('UserKnownHostsFile', configValue(checkPath(target.knownHostsFile, 'knownHostsFile'), 'knownHostsFile'))
  }

  if (target.identityFile !== undefined) {
    args.push('-i', checkPath(target.identityFile, 'identityFile'))
    option('IdentitiesOnly', 'yes')
  }

  if (multiplex) {
    option('ControlMaster', 'auto')
    option('ControlPath', configValue(checkControlPath(target.controlPath), 'controlPath'))
    option('ControlPersist', seconds(target.controlPersist ?? SSH_DEFAULTS.controlPersist, 'controlPersist'))
  } else {
    option('ControlMaster', 'no')
    option('ControlPath', 'none')
  }

  option('LogLevel', 'ERROR')
  if (target.jumpHost !== undefined) args.push('-J', checkWord(target.jumpHost, 'jumpHost'))
  if (target.port !== undefined) args.push('-p', String(port(target.port)))
  if (target.user !== undefined) args.push('-l', checkWord(target.user, 'user'))
  return args
}

function hostKeyChecking(value: string | undefined): string {
  if (value === undefined || value === 'yes' || value === 'accept-new') return value ?? 'yes'
  throw new UsageError(
    'SSH_HOST_KEY_CHECKING',
    `strictHostKeyChecking must be "yes" or "accept-new", not ${JSON.stringify(value)}: imgcache never turns host-key checking off`,
    {field: 'strictHostKeyChecking'},
  )
}

/** ssh takes whole seconds; a fraction is rounded up so a timeout is never shortened to zero. */
function seconds(value: number, field: string): number {
  if (!Number.isFinite(value) || value <= 0) {
    throw new UsageError('SSH_BAD_OPTION', `${field} must be a positive number of seconds, not ${value}`, {field})
  }

  return Math.ceil(value)
}

function count(value: number, field: string): number {
  if (!Number.isInteger(value) || value < 1) {
    throw new UsageError('SSH_BAD_OPTION', `${field} must be a whole number of at least 1, not ${value}`, {field})
  }

  return value
}

function port(value: number): number {
  if (!Number.isInteger(value) || value < 1 || value > 65_535) {
    throw new UsageError('SSH_BAD_OPTION', `port must be a whole number from 1 to 65535, not ${value}`, {
      field: 'port',
    })
  }

  return value
}

// eslint-disable-next-line no-control-regex
const CONTROL_CHARS = /[\u0000-\u001F\u007F]/

/** Host, user, jump host: one word that ssh cannot mistake for an option. */
function checkWord(value: string, field: string): string {
  if (value === '' || value.startsWith('-') || /\s/.test(value) || CONTROL_CHARS.test(value)) {
    throw new UsageError(
      'SSH_BAD_OPTION',
      `${field} ${JSON.stringify(value)} is not usable with ssh: it must be non-empty, must not start with "-" and must not contain spaces or control characters`,
      {field},
    )
  }

  return value
}

function checkPath(value: string, field: string): string {
  if (value === '' || CONTROL_CHARS.test(value)) {
    throw new UsageError('SSH_BAD_OPTION', `${field} must be a non-empty path without control characters`, {field})
  }

  return value
}

/**
 * A value inside `-o Name=value`, which ssh parses like an ssh_config line: a value with spaces
 * must be in double quotes, and a double quote cannot be written at all.
 */
function configValue(value: string, field: string): string {
  if (value.includes('"')) {
    throw new UsageError('SSH_BAD_OPTION', `${field} cannot contain a double quote: ${value}`, {field})
  }

  return /\s/.test(value) ? `"${value}"` : value
}

function checkControlPath(value: string): string {
  checkPath(value, 'controlPath')
  // Only %C (40 hex digits) and %% have a known length; other tokens are left for ssh to judge.
  const tokens = value.match(/%./g) ?? []
  if (tokens.every((t) => t === '%C' || t === '%%')) {
    const expanded = value.replaceAll('%C', 'x'.repeat(40)).replaceAll('%%', '%')
    const bytes = Buffer.byteLength(expanded)
    if (bytes > MAX_CONTROL_PATH_BYTES) {
      throw new UsageError(
        'SSH_CONTROL_PATH_TOO_LONG',
        `the ssh ControlPath ${value} is ${bytes} bytes once expanded; ssh can bind at most ${MAX_CONTROL_PATH_BYTES}`,
        {
          field: 'controlPath',
          suggestions: ['Use a shorter directory for the multiplexing sockets, e.g. mktemp -d /tmp/imgc.XXXXXX.'],
        },
      )
    }
  }

  return value
}

/** Why ssh itself failed (exit status 255), in categories an operator acts on differently. */
export type SshFailureKind =
  | 'auth'
  | 'connection-lost'
  | 'dns'
  | 'host-key-changed'
  | 'host-key-unknown'
  | 'other'
  | 'refused'
  | 'timeout'
  | 'unreachable'

export interface SshFailure {
  kind: SshFailureKind
  /** What happened, in one sentence. */
  message: string
  /** What to do about it, one sentence each. */
  suggestions: string[]
}

/** ssh's exit status for its own failures; any other status is the remote command's. */
export const SSH_FAILURE_STATUS = 255

const RETRY =
  'Check that the node is up and reachable, then run the command again; imgcache operations are safe to repeat.'

interface Rule {
  describe(match: RegExpExecArray, text: string): Omit<SshFailure, 'kind'>
  kind: SshFailureKind
  pattern: RegExp
}

/** First match wins: specific causes come before the generic lines ssh prints after them. */
const RULES: Rule[] = [
  {
    describe(_match, text) {
      const host = /Host key for (\S+) has changed/.exec(text)?.[1] ?? 'the node'
      const offending = /Offending \S+ key in (.+):(\d+)$/m.exec(text)
      const fingerprint = /(SHA256:[\w+/]+)/.exec(text)?.[1]
      const file = offending?.[1]
      const remove = ['ssh-keygen', ...(file ? ['-f', file] : []), '-R', host].map((a) => shellQuote(a)).join(' ')
      return {
        message: `the host key of ${host} is not the one recorded${file ? ` in ${file} line ${offending?.[2]}` : ''}: the node was reinstalled or re-keyed, or someone is intercepting the connection`,
        suggestions: [
          `Verify the new key on the node itself (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub)${fingerprint ? `; it must show ${fingerprint}` : ''}.`,
          `After verifying it, remove the old key with ${remove} and record the new one (ssh-keyscan, checked against that fingerprint). strictHostKeyChecking: accept-new does not help: OpenSSH refuses a changed key under it too.`,
        ],
      }
    },
    kind: 'host-key-changed',
    pattern: /REMOTE HOST IDENTIFICATION HAS CHANGED|Host key for \S+ has changed/,
  },
  {
    describe(_match, text) {
      const host = /No \S+ host key is known for (\S+)/.exec(text)?.[1]
      const scan = host ? keyscan(host) : 'ssh-keyscan -p PORT HOST'
      return {
        message: `the host key of ${host ?? 'the node'} is not in known_hosts and strict host-key checking is on`,
        suggestions: [
          `Add the key with ssh-keyscan after verifying its fingerprint: ${scan} | ssh-keygen -lf - shows it (compare with ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub on the node), ${scan} >> ~/.ssh/known_hosts (or the node's knownHostsFile) adds it.`,
          'Or set strictHostKeyChecking: accept-new for this node, to record its key on first use.',
        ],
      }
    },
    kind: 'host-key-unknown',
    pattern: /No \S+ host key is known for|Host key verification failed/,
  },
  {
    describe(_match, text) {
      const who = /(\S+@\S+): Permission denied/.exec(text)?.[1] ?? 'the node'
      const badKey = /Load key "([^"]+)": ([^\n]+)/.exec(text)
      const missing = /Identity file (.+) not accessible: ([^\n]+?)\.?$/m.exec(text)
      const suggestions = [
        "Check that the user's ~/.ssh/authorized_keys on the node holds the public key of identityFile (or of a key in your agent: ssh-add -l).",
        'Check the login user (user: in the node config; ssh uses your local user name by default).',
      ]
      let problem = ''
      if (badKey) {
        problem = `; the key ${badKey[1]} could not be loaded (${badKey[2]})`
        suggestions.unshift(
          badKey[2]?.includes('permissions')
            ? `Make the key private: chmod 600 ${shellQuote(badKey[1] ?? '')}.`
            : `Check the key file ${badKey[1]}.`,
        )
      } else if (missing) {
        problem = `; the identity file ${missing[1]} is not accessible (${missing[2]})`
        suggestions.unshift(`Fix identityFile: ${missing[1]} must exist and be readable.`)
      }

      return {message: `${who} refused every key offered${problem}`, suggestions}
    },
    kind: 'auth',
    pattern: /Permission denied \(|Too many authentication failures|no mutual signature algorithm/,
  },
  {
    describe: (m) => ({
      message: `the host name ${m[1]} does not resolve (${m[2]})`,
      suggestions: [
        `Check the node's host in the config (or its HostName in ~/.ssh/config) and DNS: getent hosts ${shellQuote(m[1] ?? '')}.`,
      ],
    }),
    kind: 'dns',
    pattern: /Could not resolve hostname (\S+): ([^\n]+)/,
  },
  {
    describe: (m) => ({
      message: `${m[1]} port ${m[2]} refused the connection: sshd is not running there, or listens on another port`,
      suggestions: [
        'Start sshd on the node (systemctl start ssh) or correct the port in its config.',
        'If sshd runs, look for a firewall rule rejecting the port.',
      ],
    }),
    kind: 'refused',
    pattern: /connect to host (\S+) port (\d+): Connection refused/,
  },
  {
    describe: (m) => ({
      message: `no answer from ${m[1]} port ${m[2]} within ConnectTimeout: the node is down or cut off, or a firewall drops the packets`,
      suggestions: [RETRY, 'If the node is only slow to answer, raise connectTimeout for it.'],
    }),
    kind: 'timeout',
    pattern: /connect to host (\S+) port (\d+): (?:Connection|Operation) timed out/,
  },
  {
    describe: () => ({
      message:
        'the TCP connection opened but no SSH greeting came within ConnectTimeout: sshd is overloaded, or something else listens on that port',
      suggestions: [RETRY, 'If the node is only slow to answer, raise connectTimeout for it.'],
    }),
    kind: 'timeout',
    pattern: /Connection timed out during banner exchange/,
  },
  {
    describe: (m) => ({
      message: `${m[1]} stopped answering keep-alives (ServerAliveInterval × ServerAliveCountMax) and ssh gave up: the node went down or its network was cut`,
      suggestions: [RETRY],
    }),
    kind: 'timeout',
    pattern: /Timeout, server (\S+) not responding/,
  },
  {
    describe: (m) => ({
      message: `${m[1]} is unreachable from here (${m[3]?.toLowerCase()})`,
      suggestions: [
        'Check the route to the node (ip route get <address>), VPN or jump host; set jumpHost if it is only reachable through a bastion.',
      ],
    }),
    kind: 'unreachable',
    pattern: /connect to host (\S+) port (\d+): (No route to host|Network is unreachable|Host is down)/,
  },
  {
    describe: () => ({
      message: 'the jump host could not open a connection to the node (refused or unreachable from there)',
      suggestions: [
        "Check from the jump host that the node's sshd answers (ssh -J is only a relay), and the node's host and port.",
      ],
    }),
    kind: 'unreachable',
    pattern: /Stdio forwarding request failed|channel \d+: open failed/,
  },
  {
    describe: () => ({
      message:
        'the node closed the connection before the SSH handshake: sshd turned it away (MaxStartups, tcp wrappers) or the port is not sshd',
      suggestions: [RETRY, "If it keeps happening, read the node's sshd log (journalctl -u ssh)."],
    }),
    kind: 'connection-lost',
    pattern: /kex_exchange_identification|ssh_exchange_identification/,
  },
  {
    describe: (m) => ({
      message: `the connection to ${m[1] ?? 'the node'} was lost: sshd or the node went away, or the network dropped it`,
      suggestions: [RETRY],
    }),
    kind: 'connection-lost',
    pattern:
      /Connection to (\S+) closed by remote host|Connection reset by peer|Broken pipe|client_loop: send disconnect|Connection closed by|mux_client_\w+: [^\n]*(?:failed|closed)/,
  },
  {
    describe: () => ({
      message: 'the ssh multiplexing socket path is too long for a unix socket',
      suggestions: [
        `Use a shorter directory for controlPath (at most ${MAX_CONTROL_PATH_BYTES} bytes once %C is expanded).`,
      ],
    }),
    kind: 'other',
    pattern: /ControlPath too long|too long for Unix domain socket/,
  },
  {
    describe: (m) => ({
      message: `ssh cannot create its multiplexing socket ${m[1]} (${m[2]})`,
      suggestions: ["Create the controlPath's directory (mode 0700) before connecting."],
    }),
    kind: 'other',
    pattern: /unix_listener: cannot bind to path (\S+): ([^\n]+)/,
  },
]

/**
 * Turn a failed ssh run into what happened and what to do. Only exit status 255 is ssh's own; any
 * other status belongs to the remote command. Works on ssh's stderr at LogLevel=ERROR, which does
 * not report a keep-alive timeout: ssh then exits 255 silently, as a multiplexed session does
 * whenever its master connection ends, and both count as a lost connection.
 */
export function classifySshFailure(exitCode: number, stderr: string): SshFailure {
  if (exitCode !== SSH_FAILURE_STATUS) {
    return {kind: 'other', message: `the remote command exited with status ${exitCode}`, suggestions: []}
  }

  const text = stderr.replaceAll('\r', '')
  for (const rule of RULES) {
    const match = rule.pattern.exec(text)
    if (match) return {kind: rule.kind, ...rule.describe(match, text)}
  }

  const lastLine = text.trim().split('\n').at(-1)?.trim()
  if (!lastLine) {
    return {
      kind: 'connection-lost',
      message:
        'ssh failed without a message: the connection was lost (keep-alives unanswered on a cut link, the node or its sshd went away, or the multiplexing master ended)',
      suggestions: [RETRY],
    }
  }

  return {kind: 'other', message: `ssh failed: ${lastLine}`, suggestions: []}
}

function keyscan(hostSpec: string): string {
  const bracketed = /^\[(.+)\]:(\d+)$/.exec(hostSpec)
  const argv = bracketed ? ['ssh-keyscan', '-p', bracketed[2] ?? '22', bracketed[1] ?? ''] : ['ssh-keyscan', hostSpec]
  return argv.map((a) => shellQuote(a)).join(' ')
}
