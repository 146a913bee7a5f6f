import got from 'got'
import {chmod, link, mkdir, mkdtemp, rm, writeFile} from 'node:fs/promises'
import {join} from 'node:path'

import type {Spool, SpoolResult} from '../fetch/spool.js'

import {ImgcacheError} from '../errors.js'
import {freePort, type HostProcess, startSeed, startTracker} from '../node/swarm-host.js'
import {makeTorrent, type Torrent} from './torrent.js'

/** What the seeds know of the run (precache's P2pSettings). */
export interface SwarmSettings {
  /** The address the nodes reach this machine on, when the operator gave it (--p2p-address). */
  address?: string
  /** The nodes' link rate in bytes a second, when the operator declared it (linkSpeeds.node). */
  nodeRate?: number
  /** The bytes of all the run's images at once (their records' sizes), when known. */
  totalBytes?: number
}

/**
 * What the seeds of a run send at most, together, in nodes' links: every node takes each piece in
 * once, so the swarm cannot go faster than one node's link, and the seed need only pass each piece
 * on about once at that rate for the nodes to copy it among themselves. Sending faster sends the
 * same piece to several nodes (measured: 3.4× the images off the bastion at 8 nodes without a
 * limit). A margin over one link keeps the seed from being the slowest part when a node lags.
 */
export const SEED_LINKS = 1.5

/** One image's swarm: its torrent, its tracker and its seed on this machine. */
export interface ImageSwarm {
  torrent: Torrent
}

/**
 * The swarms of one `precache --via p2p` run (DESIGN §11), one per image, made when the first node
 * needs the image and its spool is complete (the piece hashes are of the whole verified image): a
 * private torrent, opentracker on the address the nodes reach this machine on, allowing only that
 * torrent's info hash, and aria2c seeding the spool. dispose() stops them all and removes their files:
 * no port of this run stays open after it.
 */
export class Swarms {
  private dir?: Promise<string>
  private disposed = false
  private readonly processes: HostProcess[] = []
  private readonly swarms = new Map<Spool, Promise<ImageSwarm>>()

  constructor(
    /** Where the run's files go (the spool directory). */
    private readonly parent: string,
    private readonly settings: SwarmSettings = {},
  ) {}

  /** Whether the operator gave the address (--p2p-address). */
  get hasAddress(): boolean {
    return this.settings.address !== undefined
  }

  async dispose(): Promise<void> {
    this.disposed = true
    await Promise.all(this.processes.map((p) => p.stop()))
    if (this.dir) await rm(await this.dir.catch(() => ''), {force: true, recursive: true}).catch(() => undefined)
  }

  /**
   * The swarm of a spool's image; `name` is the file name the nodes download into (the cache's
   * `.part`), `reachedAt` the address the asking node sees this machine at (used when no address was given).
   */
  async get(spool: Spool, name: string, reachedAt: string): Promise<ImageSwarm> {
    let swarm = this.swarms.get(spool)
    if (!swarm) {
      swarm = this.start(spool, name, this.settings.address ?? reachedAt)
      this.swarms.set(spool, swarm)
    }

    return swarm
  }

  private async start(spool: Spool, name: string, address: string): Promise<ImageSwarm> {
    const result: SpoolResult = await spool.result()
    if (!result.pieces) throw new ImgcacheError('BUG', 'the spool has no piece hashes (not a p2p run)')
    if (this.disposed) throw new ImgcacheError('INTERRUPTED', 'the run is ending')
    this.dir ??= mkdtemp(join(this.parent, 'imgcache-p2p-'))
    // 0755: opentracker chroots here and reads its whitelist as an unprivileged user. The image's
    // bytes stay 0600 (the spool's mode, shared by the link), the torrent too.
    const dir = join(await this.dir, spool.image.id.replaceAll(/[^\w.-]/g, '_'))
    await mkdir(dir, {mode: 0o755})
    await chmod(dir, 0o755)
    const host = address.includes(':') ? `[${address}]` : address
    const whitelist = join(dir, 'whitelist')
    // The tracker's port is in the torrent (its announce URL) and the torrent's info hash in the
    // tracker's whitelist: pick the port, make the torrent, then start the tracker on that port.
    let tracker: HostProcess | undefined
    let torrent: Torrent | undefined
    for (let attempt = 0; !tracker; attempt++) {
      // eslint-disable-next-line no-await-in-loop
      const port = await freePort(address)
      torrent = makeTorrent({
        announce: `http://${host}:${port}/announce`,
        length: result.bytes,
        name,
        pieceLength: result.pieces.length,
        pieces: result.pieces.hashes,
      })
      // eslint-disable-next-line no-await-in-loop
      await writeFile(whitelist, `${torrent.infoHash}\n`, {mode: 0o644})
      try {
        // eslint-disable-next-line no-await-in-loop
        tracker = await startTracker(address, port, whitelist)
      } catch (error) {
        // Another program took the port meanwhile: another one (a few times).
        if (attempt >= 4) throw error
      }
    }

    this.processes.push(tracker)
    const torrentFile = join(dir, `${torrent!.infoHash}.torrent`)
    await writeFile(torrentFile, torrent!.bytes, {mode: 0o600})
    await link(spool.path, join(dir, name))
    const seed = await startSeed(address, dir, torrentFile, {uploadLimit: this.uploadLimit(result.bytes)})
    this.processes.push(seed)
    if (this.disposed) await this.dispose()
    await seeded(host, tracker.port, torrent!.infoHash)
    return {torrent: torrent!}
  }

  /**
   * The seed's share of SEED_LINKS node links, by its image's part of the run's bytes: the images'
   * swarms run at once and share each node's link, so they end together when each seed sends in
   * proportion. Unlimited when the nodes' rate is not declared.
   */
  private uploadLimit(bytes: number): number | undefined {
    const {nodeRate, totalBytes} = this.settings
    if (nodeRate === undefined) return undefined
    const share = totalBytes && totalBytes >= bytes ? bytes / totalBytes : 1
    // aria2c's limit is in whole bytes a second; a tiny image still gets 64 KiB/s.
    return Math.max(64 * 1024, SEED_LINKS * nodeRate * share)
  }
}

/**
 * Waits (at most 10 s) until the tracker lists the seed: a node that announced before would hear of
 * no peer and wait for the tracker's next interval. The tracker's scrape says how many seeds it has.
 */
async function seeded(host: string, port: number, infoHash: string): Promise<void> {
  const escaped = infoHash.replaceAll(/../g, '%$&')
  for (let i = 0; i < 100; i++) {
    try {
      // eslint-disable-next-line no-await-in-loop
      const response = await got(`http://${host}:${port}/scrape?info_hash=${escaped}`, {
        responseType: 'buffer',
        retry: {limit: 0},
        throwHttpErrors: false,
        timeout: {request: 2000},
      })
      const body = response.body.toString('latin1')
      if (/8:completei[1-9]/.test(body)) return
    } catch {
      // Not yet.
    }

    // eslint-disable-next-line no-await-in-loop
    await new Promise((resolve) => {
      setTimeout(resolve, 100)
    })
  }
}
