import {posix} from 'node:path'

import type {Spool} from '../fetch/spool.js'
import type {Node} from '../node/types.js'
import type {Swarms} from './swarm.js'

import {ImgcacheError} from '../errors.js'
import {relayTransfer, type Transfer, transferError} from '../fetch/transfer.js'

export type P2pFallback = 'none' | 'relay'

export interface P2pOptions {
  /** A node without aria2c: relay to it (said in the report), or fail its images. */
  fallback: P2pFallback
  /** Ports aria2c may listen on, on the nodes. */
  listenPorts: string
  /** Told once per node that falls back to relay, with the reason. */
  onFallback: (node: string, reason: string) => void
  /** Seed at most this long after a node's own download (default: until the run ends). */
  seedSeconds?: number
  /** Nothing arriving for this long fails the attempt (the relay's stall limit, aria2c's stop timeout). */
  stallMs: number
}

interface NodeP2p {
  /** Why aria2c cannot be used there (it is not installed), or undefined when it can. */
  missing?: ImgcacheError
  /** The address the node sees this machine at (its SSH_CONNECTION's client address). */
  reachedAt?: string
}

const probes = new WeakMap<Node, Promise<NodeP2p>>()

/** Whether the node has aria2c, and the address it reaches us at: one look per node per run. */
function probe(node: Node): Promise<NodeP2p> {
  let found = probes.get(node)
  if (!found) {
    found = (async () => {
      try {
        await node.run(['aria2c', '--version'], {timeoutMs: 60_000})
      } catch (error) {
        if (error instanceof ImgcacheError && error.code === 'NODE_PROGRAM_MISSING') {
          return {
            missing: new ImgcacheError('NODE_NO_ARIA2C', `${node.name}: aria2c is not installed on the node`, {
              node: node.name,
              suggestions: [
                'Install aria2 on the node (Debian/Ubuntu: apt install aria2), or let it fall back to relay (--p2p-fallback relay).',
              ],
            }),
          }
        }

        throw error
      }

      const {stdout} = await node.run(['printenv', 'SSH_CONNECTION'], {reject: false, timeoutMs: 60_000})
      return {reachedAt: stdout.trim().split(/\s+/)[0] || undefined}
    })()
    probes.set(node, found)
    // A failed look (a dropped connection) is tried again at the next attempt.
    found.catch(() => probes.delete(node))
  }

  return found
}

/**
 * precache --via p2p (DESIGN §11): imgcache reads the image once into the spool (verified and
 * inspected there, the piece hashes computed from the same bytes), then each node downloads it with
 * aria2c from the seed and from each other, every piece checked against those hashes: a node's
 * `.part` then holds exactly the verified bytes, and the spool's digest and inspection are its own.
 * The nodes never talk to the image service, so no token reaches them. The local host, and a node
 * without aria2c (unless the fallback is `none`), get the relay instead.
 */
export function p2pTransfer(spool: () => Spool, swarms: Swarms, options: P2pOptions): Transfer {
  const relay = relayTransfer(spool, options.stallMs)
  return async (input) => {
    const {image, node, part} = input
    if (node.isLocal || !node.fetchTorrent) return relay(input)
    const found = await probe(node)
    if (found.missing) {
      if (options.fallback === 'none') throw found.missing
      options.onFallback(node.name, 'aria2c is not installed on the node')
      return relay(input)
    }

    const source = spool()
    const origin = await source.result()
    const {reachedAt} = found
    if (!reachedAt && !swarms.hasAddress) {
      throw new ImgcacheError(
        'P2P_NO_ADDRESS',
        `${node.name}: cannot tell the address the node reaches this machine at`,
        {
          node: node.name,
          suggestions: ['Give it: --p2p-address ADDRESS (an address of this machine the nodes reach).'],
        },
      )
    }

    const swarm = await swarms.get(source, posix.basename(part), reachedAt ?? '')
    try {
      await node.fetchTorrent(
        {
          dest: part,
          listenPorts: options.listenPorts,
          seedSeconds: options.seedSeconds,
          stallSeconds: options.stallMs / 1000,
          torrent: swarm.torrent.bytes,
          torrentPath: `${part}.torrent`,
        },
        {
          onProgress: (p) => input.onBytes(p.bytes, 'downloading', {peers: p.peers}),
          signal: input.signal,
          total: origin.bytes,
        },
      )
    } catch (error) {
      throw transferError(error, input)
    }

    const bytes = (await node.stat(part))?.size ?? 0
    if (bytes !== origin.bytes) {
      throw new ImgcacheError(
        'WRITE_INCOMPLETE',
        `${part} on ${node.name} holds ${bytes} bytes but the image has ${origin.bytes}`,
        {
          image: image.id,
          node: node.name,
          path: part,
        },
      )
    }

    return {bytes, digest: origin.digest, downloaded: bytes, inspection: origin.inspection}
  }
}
