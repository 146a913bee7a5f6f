import {mkdtempSync, rmSync} from 'node:fs'

import type {ImgcacheConfig, NodeConfig} from '../config/schema.js'
import type {SshTarget} from './ssh-args.js'

import {UsageError} from '../errors.js'
import {SshNode} from './ssh.js'

/**
 * Builds the SSH nodes of one run. They share one short directory for their multiplexing sockets
 * (a unix socket path is limited to ~90 bytes once ssh expands %C), removed by `dispose`.
 */
export class SshNodeFactory {
  private controlDir?: string

  constructor(private readonly config: ImgcacheConfig) {}

  create(name: string, node: NodeConfig): SshNode {
    return new SshNode(name, this.target(name, node))
  }

  dispose(): void {
    if (this.controlDir) rmSync(this.controlDir, {force: true, recursive: true})
    this.controlDir = undefined
  }

  /** The node's ssh settings over the config's defaults; unset ones are left to ~/.ssh/config. */
  target(name: string, node: NodeConfig): SshTarget {
    if (!node.host) throw new UsageError('NODE_NO_HOST', `node ${name} has no host to reach over SSH`, {node: name})
    this.controlDir ??= mkdtempSync('/tmp/imgc-')
    const d = this.config.defaults?.ssh ?? {}
    return {
      configFile: node.configFile ?? d.configFile,
      connectTimeout: node.connectTimeout ?? d.connectTimeout,
      controlPath: `${this.controlDir}/%C`,
      host: node.host,
      identityFile: node.identityFile ?? d.identityFile,
      jumpHost: node.jumpHost ?? d.jumpHost,
      knownHostsFile: node.knownHostsFile ?? d.knownHostsFile,
      port: node.port ?? d.port,
      serverAliveCountMax: node.serverAliveCountMax ?? d.serverAliveCountMax,
      serverAliveInterval: node.serverAliveInterval ?? d.serverAliveInterval,
      strictHostKeyChecking: node.strictHostKeyChecking ?? d.strictHostKeyChecking,
      user: node.user ?? d.user,
    }
  }
}
