import type {ImgcacheConfig} from '../../src/lib/config/schema.js'
import type {TestNodes} from './nodes.js'

export interface FleetConfigOptions {
  /** Aggregate name (default `fleet`). */
  aggregate?: string
  /** `images` aliases of the config. */
  images?: ImgcacheConfig['images']
  imageService?: ImgcacheConfig['imageService']
  /** The aggregate's members (default: every node). */
  members?: string[]
}

/**
 * An imgcache config that names the test nodes as SSH nodes (address, port, the harness's client
 * key and known_hosts, instances path) and puts them in one aggregate. Multiplexing sockets are
 * left to imgcache's own per-run directory, as in production.
 */
export function fleetConfig(nodes: TestNodes, options: FleetConfigOptions = {}): ImgcacheConfig {
  const first = nodes.nodes[0]
  if (!first) throw new Error('fleetConfig: no nodes')
  return {
    aggregates: {[options.aggregate ?? 'fleet']: {nodes: options.members ?? nodes.nodes.map((n) => n.name)}},
    defaults: {ssh: {identityFile: first.identityFile, knownHostsFile: first.knownHostsFile, user: first.user}},
    ...(options.images ? {images: options.images} : {}),
    ...(options.imageService ? {imageService: options.imageService} : {}),
    nodes: Object.fromEntries(
      nodes.nodes.map((n) => [n.name, {host: n.host, instancesPath: n.instancesPath, port: n.port}]),
    ),
  }
}
