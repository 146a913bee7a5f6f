import pLimit from 'p-limit'

import type {ImgcacheConfig} from './config/schema.js'
import type {Node} from './node/types.js'

import {SshNodeFactory} from './node/ssh-factory.js'
import {createNode, type NodeSpec} from './nodes.js'

export type NodeOutcome<T> = {error: unknown; node: string; ok: false} | {node: string; ok: true; value: T}

/**
 * Run `fn` on every node with at most `concurrency` at once, as a sliding window (a slow node never
 * idles the other slots). Every node's outcome is collected; one node's failure does not stop the
 * others. Each node is closed (locks released, connections ended) when its work ends.
 */
export async function forEachNode<T>(
  specs: NodeSpec[],
  options: {concurrency: number; config: ImgcacheConfig; signal?: AbortSignal},
  fn: (node: Node, spec: NodeSpec) => Promise<T>,
): Promise<Array<NodeOutcome<T>>> {
  const limit = pLimit(options.concurrency)
  const ssh = new SshNodeFactory(options.config)
  try {
    return await Promise.all(
      specs.map((spec) =>
        limit(async (): Promise<NodeOutcome<T>> => {
          if (options.signal?.aborted) return {error: options.signal.reason, node: spec.name, ok: false}
          let node: Node | undefined
          try {
            node = createNode(spec, ssh)
            return {node: spec.name, ok: true, value: await fn(node, spec)}
          } catch (error) {
            return {error, node: spec.name, ok: false}
          } finally {
            await node?.close().catch(() => {})
          }
        }),
      ),
    )
  } finally {
    ssh.dispose()
  }
}
