/**
 * The users of a real compute host, made for the tests: `nova` (nova-compute runs as it and owns the
 * instances path) and an unprivileged stand-in for libvirt's qemu user (`libvirt-qemu` on Debian), which
 * must be able to read every base and overlay. Created once per machine (useradd), kept afterwards:
 * creating them again is a no-op.
 */
import {execa} from 'execa'

export interface HostUser {
  gid: number
  name: string
  uid: number
}

/** The `nova` user and group, as Debian's nova-common package creates them (a system user). */
export async function novaUser(): Promise<HostUser> {
  return ensureUser('nova', '/var/lib/nova')
}

/** A third, unprivileged user standing in for libvirt's qemu user (not in nova's group). */
export async function qemuStandIn(): Promise<HostUser> {
  return ensureUser('imgc-qemu', '/nonexistent')
}

async function ensureUser(name: string, home: string): Promise<HostUser> {
  if ((await execa('id', ['-u', name], {reject: false})).exitCode !== 0) {
    await execa('groupadd', ['--system', '-f', name])
    const created = await execa(
      'useradd',
      ['--system', '--gid', name, '--home-dir', home, '--no-create-home', '--shell', '/bin/sh', name],
      {reject: false},
    )
    // Another test file may have created it meanwhile (exit 9: the name exists).
    if (created.exitCode !== 0 && created.exitCode !== 9) throw new Error(`useradd ${name}: ${created.stderr}`)
  }

  const uid = Number((await execa('id', ['-u', name])).stdout)
  const gid = Number((await execa('id', ['-g', name])).stdout)
  return {gid, name, uid}
}

/** Run an argv as `user` (runuser: no password, no PAM session), under `umask` (nova-compute's is 022). */
export async function runAs(
  user: string,
  argv: string[],
  options: {env?: Record<string, string>; input?: string; umask?: string} = {},
) {
  return execa(
    'runuser',
    ['-u', user, '--', 'sh', '-c', `umask ${options.umask ?? '022'} && exec "$@"`, 'sh', ...argv],
    {
      env: options.env,
      input: options.input,
      reject: false,
    },
  )
}
