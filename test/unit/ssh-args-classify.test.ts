import {describe, expect, it} from 'vitest'

import {classifySshFailure, type SshFailureKind} from '../../src/lib/node/ssh-args.js'

/**
 * stderr exactly as OpenSSH 9.2p1 (Debian 12) printed it, exit status 255, captured against the
 * test harness's nodes (test/harness/nodes.sh, testnet.sh) with -o BatchMode=yes -o LogLevel=ERROR
 * unless noted. ssh ends most lines with \r\n.
 */
const CAPTURED = {
  /** sshd killed (nodes.sh kill-sshd) while `sleep 30` ran over a direct connection. */
  connectionClosed: 'Connection to 127.0.0.1 closed by remote host.\r\n',
  /** Link cut (testnet.sh link NAME down) before a new connection, ConnectTimeout=3. */
  connectTimeout: 'ssh: connect to host 198.18.243.10 port 22: Connection timed out\r\n',
  /** Node rotated its host key (nodes.sh rotate-host-key); known_hosts has the old one. */
  hostKeyChanged:
    '@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\r\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\r\n@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\r\nIT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!\r\nSomeone could be eavesdropping on you right now (man-in-the-middle attack)!\r\nIt is also possible that a host key has just been changed.\r\nThe fingerprint for the ED25519 key sent by the remote host is\nSHA256:eLdgrUPF/5n4Nn3cetl8+e23Nd3DXSpIx5c/zR0wiC0.\r\nPlease contact your system administrator.\r\nAdd correct host key in /tmp/imgc.sWrESg/client/known_hosts to get rid of this message.\r\nOffending ED25519 key in /tmp/imgc.sWrESg/client/known_hosts:1\r\n  remove with:\r\n  ssh-keygen -f "/tmp/imgc.sWrESg/client/known_hosts" -R "[127.0.0.1]:30562"\r\nHost key for [127.0.0.1]:30562 has changed and you have requested strict checking.\r\nHost key verification failed.\r\n',
  /** StrictHostKeyChecking=yes with an empty known_hosts file. */
  hostKeyUnknown:
    'No ED25519 host key is known for [127.0.0.1]:23253 and you have requested strict checking.\r\nHost key verification failed.\r\n',
  /** -J root@127.0.0.1:1: the jump host itself refuses. */
  jumpRefused:
    'ssh: connect to host 127.0.0.1 port 1: Connection refused\r\nkex_exchange_identification: Connection closed by remote host\r\n',
  /** -J through a working jump host to a port where nothing listens. */
  jumpToClosedPort:
    'Stdio forwarding request failed: Session open refused by peer\r\nkex_exchange_identification: Connection closed by remote host\r\n',
  /** Link cut under a running `sleep 60`, ServerAliveInterval=1, ServerAliveCountMax=2, LogLevel=INFO. */
  keepAliveTimeoutInfo: 'Timeout, server 198.18.243.11 not responding.\r\n',
  /** A listener that accepts and closes at once (what sshd does past MaxStartups). */
  kexClosed: 'kex_exchange_identification: Connection closed by remote host\r\n',
  /** A listener that accepts and never speaks, ConnectTimeout=2. */
  kexTimeout: 'Connection timed out during banner exchange\r\n',
  /**
   * The same at LogLevel=ERROR (ssh logs the timeout at INFO), and a multiplexed session whose
   * master ended (sshd killed): ssh exits 255 and prints nothing.
   */
  lostSilently: '',
  /** -i pointing at a file that does not exist. */
  missingKey:
    'Warning: Identity file /tmp/imgc.sWrESg/nope not accessible: No such file or directory.\nroot@127.0.0.1: Permission denied (publickey).\r\n',
  /** An address on the test network with no host behind it, ConnectTimeout=10. */
  noRoute: 'ssh: connect to host 198.18.243.250 port 22: No route to host\r\n',
  /** A private key file with mode 0644. */
  permissiveKey:
    '@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\r\n@         WARNING: UNPROTECTED PRIVATE KEY FILE!          @\r\n@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\r\nPermissions 0644 for \'/tmp/imgc.sWrESg/k644\' are too open.\r\nIt is required that your private key files are NOT accessible by others.\r\nThis private key will be ignored.\r\nLoad key "/tmp/imgc.sWrESg/k644": bad permissions\r\nroot@127.0.0.1: Permission denied (publickey).\r\n',
  /** A node's sshd stopped (nodes.sh kill-sshd), or a port nobody listens on. */
  refused: 'ssh: connect to host 127.0.0.1 port 1: Connection refused\r\n',
  /** A listener that answers with something other than SSH, then resets. */
  resetBeforeKex: 'kex_exchange_identification: read: Connection reset by peer\r\n',
  /** ControlPath in a directory that does not exist. */
  socketDirMissing:
    'unix_listener: cannot bind to path /tmp/nonexist-imgc/596ae5bd11825b1494df3a560a14c025e8730c13.aoaJtcGErLRoDSg0: No such file or directory\r\n',
  /** ControlPath of 91 bytes once expanded. */
  socketPathTooLong:
    'unix_listener: path "/tmp/yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy/596ae5bd11825b1494df3a560a14c025e8730c13.khAj5iyvERlbKHre" too long for Unix domain socket\r\n',
  /** A host name that does not resolve. */
  unresolvable: 'ssh: Could not resolve hostname nosuchhost.invalid: Name or service not known\r\n',
  /** A key the node does not accept. */
  wrongKey: 'root@127.0.0.1: Permission denied (publickey).\r\n',
}

describe('classifySshFailure on captured ssh stderr', () => {
  it.each<[keyof typeof CAPTURED, SshFailureKind, RegExp]>([
    [
      'hostKeyChanged',
      'host-key-changed',
      /host key of \[127\.0\.0\.1\]:30562 is not the one recorded in \/tmp\/imgc\.sWrESg\/client\/known_hosts line 1/,
    ],
    ['hostKeyUnknown', 'host-key-unknown', /host key of \[127\.0\.0\.1\]:23253 is not in known_hosts/],
    ['wrongKey', 'auth', /root@127\.0\.0\.1 refused every key offered$/],
    ['permissiveKey', 'auth', /the key \/tmp\/imgc\.sWrESg\/k644 could not be loaded \(bad permissions\)/],
    ['missingKey', 'auth', /identity file \/tmp\/imgc\.sWrESg\/nope is not accessible \(No such file or directory\)/],
    ['refused', 'refused', /127\.0\.0\.1 port 1 refused the connection/],
    ['jumpRefused', 'refused', /127\.0\.0\.1 port 1 refused the connection/],
    ['unresolvable', 'dns', /host name nosuchhost\.invalid does not resolve \(Name or service not known\)/],
    ['connectTimeout', 'timeout', /no answer from 198\.18\.243\.10 port 22 within ConnectTimeout/],
    ['kexTimeout', 'timeout', /no SSH greeting came within ConnectTimeout/],
    ['keepAliveTimeoutInfo', 'timeout', /198\.18\.243\.11 stopped answering keep-alives/],
    ['noRoute', 'unreachable', /198\.18\.243\.250 is unreachable from here \(no route to host\)/],
    ['jumpToClosedPort', 'unreachable', /jump host could not open a connection/],
    ['connectionClosed', 'connection-lost', /connection to 127\.0\.0\.1 was lost/],
    ['lostSilently', 'connection-lost', /without a message: the connection was lost/],
    ['kexClosed', 'connection-lost', /closed the connection before the SSH handshake/],
    ['resetBeforeKex', 'connection-lost', /closed the connection before the SSH handshake/],
    ['socketPathTooLong', 'other', /multiplexing socket path is too long/],
    ['socketDirMissing', 'other', /cannot create its multiplexing socket \/tmp\/nonexist-imgc\//],
  ])('%s → %s', (fixture, kind, message) => {
    const failure = classifySshFailure(255, CAPTURED[fixture])
    expect(failure.kind).toBe(kind)
    expect(failure.message).toMatch(message)
    if (kind !== 'other') expect(failure.suggestions.length).toBeGreaterThan(0)
  })

  it('tells how to replace a changed key, only after verifying it', () => {
    const {suggestions} = classifySshFailure(255, CAPTURED.hostKeyChanged)
    expect(suggestions.join(' ')).toContain('it must show SHA256:eLdgrUPF/5n4Nn3cetl8+e23Nd3DXSpIx5c/zR0wiC0.')
    expect(suggestions.join(' ')).toContain(
      "After verifying it, remove the old key with ssh-keygen -f /tmp/imgc.sWrESg/client/known_hosts -R '[127.0.0.1]:30562'",
    )
    // OpenSSH refuses a changed key under accept-new too: suggesting it would send the operator nowhere.
    expect(suggestions.join(' ')).not.toMatch(/or set strictHostKeyChecking: accept-new/)
    expect(suggestions.join(' ')).toContain('accept-new does not help')
  })

  it('tells how to add an unknown key, or to accept new keys for that node', () => {
    const {suggestions} = classifySshFailure(255, CAPTURED.hostKeyUnknown)
    expect(suggestions[0]).toContain('ssh-keyscan -p 23253 127.0.0.1 | ssh-keygen -lf -')
    expect(suggestions[0]).toMatch(/^Add the key with ssh-keyscan after verifying its fingerprint/)
    expect(suggestions[1]).toContain('strictHostKeyChecking: accept-new')
  })

  it('suggests chmod 600 for a key with open permissions', () => {
    expect(classifySshFailure(255, CAPTURED.permissiveKey).suggestions[0]).toBe(
      'Make the key private: chmod 600 /tmp/imgc.sWrESg/k644.',
    )
  })

  it('leaves any status other than 255 to the remote command, whatever stderr says', () => {
    expect(classifySshFailure(1, 'curl: (7) Failed to connect to x port 80: Connection refused')).toEqual({
      kind: 'other',
      message: 'the remote command exited with status 1',
      suggestions: [],
    })
  })

  it('reports an unknown ssh error by its last line', () => {
    expect(classifySshFailure(255, 'command-line: line 0: Bad configuration option: bogus\r\n')).toEqual({
      kind: 'other',
      message: 'ssh failed: command-line: line 0: Bad configuration option: bogus',
      suggestions: [],
    })
  })
})
