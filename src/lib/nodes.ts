import type {AggregateConfig, ImgcacheConfig, NodeConfig} from './config/schema.js'
import type {Node} from './node/types.js'

import {UsageError} from './errors.js'
import {LocalNode} from './node/local.js'
import {SshNodeFactory} from './node/ssh-factory.js'

/** A node chosen on the command line, before it is connected. */
export interface NodeSpec {
  /** Node settings from the config (ssh and cache settings). */
  config?: NodeConfig
  kind: 'local' | 'ssh'
  name: string
}

function listOrNone(names: string[]): string {
  return names.length > 0 ? names.join(', ') : '(none: add them to the config file)'
}

/** Parse `ssh://[user@]host[:port]` into a node spec. */
export function parseSshUrl(value: string): NodeSpec | undefined {
  const m = /^ssh:\/\/(?:([^@/:]+)@)?(\[[^\]]+\]|[^/:@]+)(?::(\d+))?\/?$/.exec(value)
  if (!m) return undefined
  const port = m[3] ? Number(m[3]) : undefined
  if (port !== undefined && (port < 1 || port > 65_535)) return undefined
  const host = (m[2] as string).replace(/^\[(.*)\]$/, '$1')
  return {config: {host, port, user: m[1]}, kind: 'ssh', name: value}
}

function specFor(name: string, config: ImgcacheConfig): NodeSpec | undefined {
  const node = config.nodes?.[name]
  if (node) return {config: node, kind: node.host ? 'ssh' : 'local', name}
  if (name === 'local') return {kind: 'local', name}
  return parseSshUrl(name)
}

export function findAggregate(config: ImgcacheConfig, name: string): AggregateConfig {
  const aggregate = config.aggregates?.[name]
  if (!aggregate) {
    throw new UsageError(
      'UNKNOWN_AGGREGATE',
      `unknown aggregate ${JSON.stringify(name)}; known aggregates: ${listOrNone(Object.keys(config.aggregates ?? {}))}`,
      {
        field: '--aggregate',
        suggestions: ['Name an aggregate of the config file\'s "aggregates" section.'],
      },
    )
  }

  return aggregate
}

/**
 * The nodes a command works on: `--node` values (config names, `local`, `ssh://user@host:port`)
 * and the members of `--aggregate`; the local host when neither is given. Unknown names are a usage
 * error that lists the known ones.
 */
export function selectNodes(config: ImgcacheConfig, selection: {aggregate?: string; nodes?: string[]}): NodeSpec[] {
  const names = [...(selection.nodes ?? [])]
  if (selection.aggregate) {
    const aggregate = findAggregate(config, selection.aggregate)
    for (const member of aggregate.nodes) {
      if (!config.nodes?.[member] && member !== 'local') {
        throw new UsageError(
          'UNKNOWN_NODE',
          `aggregate ${selection.aggregate} names node ${JSON.stringify(member)}, which the config does not define; known nodes: ${listOrNone(Object.keys(config.nodes ?? {}))}`,
          {
            field: `aggregates.${selection.aggregate}.nodes`,
            node: member,
            suggestions: ['Define the node under "nodes" or remove it from the aggregate.'],
          },
        )
      }
    }

    names.push(...aggregate.nodes)
  }

  if (names.length === 0) return [{kind: 'local', name: 'local'}]
  const specs: NodeSpec[] = []
  for (const name of names) {
    const spec = specFor(name, config)
    if (!spec) {
      throw new UsageError(
        'UNKNOWN_NODE',
        `unknown node ${JSON.stringify(name)}; known nodes: ${listOrNone(['local', ...Object.keys(config.nodes ?? {})])}`,
        {
          field: '--node',
          node: name,
          suggestions: ['Use a node name from the config, "local", or ssh://user@host:port.'],
        },
      )
    }

    if (!specs.some((s) => s.name === spec.name)) specs.push(spec)
  }

  return specs
}

/** Connect-free construction of a node; SSH nodes connect on first use. */
export function createNode(spec: NodeSpec, ssh: SshNodeFactory): Node {
  if (spec.kind === 'local') return new LocalNode(spec.name)
  return ssh.create(spec.name, spec.config ?? {})
}
