import {ImgcacheError} from '../errors.js'
import {PRIVATE_SWARM} from './swarm-host.js'

/** A BitTorrent download a node makes with aria2c into its cache's `.part` (precache --via p2p). */
export interface TorrentFetch {
  /** The `.part` to download into; the torrent's name must be its base name. */
  dest: string
  /** Ports aria2c may listen on for its peers (a range: nodes on one host each take one). */
  listenPorts: string
  /** Seed to the others for at most this long after the download (default: until the run ends). */
  seedSeconds?: number
  /** Give up when nothing arrives for this long (a seed and peers that went away silently). */
  stallSeconds: number
  /** The .torrent's bytes. */
  torrent: Buffer
  /** Where the .torrent goes on the node while aria2c starts (beside the `.part`, as its owner). */
  torrentPath: string
}

/** What aria2c's summary line says of a download. */
export interface Aria2Progress {
  bytes: number
  /** The download is complete and aria2c now seeds. */
  complete: boolean
  peers: number
  /** Bytes a second. */
  speed?: number
}

/** aria2c into `dir` (the cache dir), checking every piece against the torrent, in a private swarm. */
export function aria2Argv(request: TorrentFetch, dir: string): string[] {
  return [
    'aria2c',
    `--dir=${dir}`,
    // Every piece is checked against its SHA-1 from the torrent, a file already there included.
    '--check-integrity=true',
    '--bt-hash-check-seed=true',
    '--bt-seed-unverified=false',
    // The name is the `.part` imgcache made: never another name beside it.
    '--auto-file-renaming=false',
    '--allow-overwrite=false',
    '--file-allocation=none',
    '--seed-ratio=0.0',
    // Minutes. Until the run ends, unless --seed-until says less (aria2c ends by itself then).
    `--seed-time=${request.seedSeconds === undefined ? 100_000 : Math.max(request.seedSeconds / 60, 0.001).toFixed(3)}`,
    ...PRIVATE_SWARM,
    `--listen-port=${request.listenPorts}`,
    `--bt-stop-timeout=${Math.max(1, Math.round(request.stallSeconds))}`,
    '--bt-tracker-connect-timeout=10',
    '--bt-tracker-timeout=10',
    '--summary-interval=1',
    '--show-console-readout=false',
    '--console-log-level=warn',
    '--enable-color=false',
    '--auto-save-interval=0',
    request.torrentPath,
  ]
}

const UNITS: Record<string, number> = {B: 1, GiB: 1024 ** 3, KiB: 1024, MiB: 1024 ** 2, TiB: 1024 ** 4}

function size(text: string | undefined): number | undefined {
  const match = /^([\d.]+)(B|KiB|MiB|GiB|TiB)$/.exec(text ?? '')
  return match ? Math.round(Number(match[1]) * UNITS[match[2]!]!) : undefined
}

/**
 * The last summary line in aria2c's output, e.g. `[#8cea63 5.3MiB/20MiB(26%) CN:1 SD:1 DL:2.5MiB ETA:5s]`
 * while downloading and `[#8cea63 SEED(0.0) CN:2 SD:0]` once complete. Undefined before the first.
 */
export function parseAria2Summary(output: string, total: number): Aria2Progress | undefined {
  const lines = output.match(/^\[#[\da-f]+ [^\n]*\]$/gm)
  const last = lines?.at(-1)
  if (!last) return undefined
  const peers = Number(/ CN:(\d+)/.exec(last)?.[1] ?? 0)
  if (/ SEED\(/.test(last)) return {bytes: total, complete: true, peers}
  const bytes = size(/ ([\d.]+\w*B)\/[\d.]+\w*B/.exec(last)?.[1]) ?? 0
  return {bytes: Math.min(bytes, total), complete: false, peers, speed: size(/ DL:([\d.]+\w*B)/.exec(last)?.[1])}
}

/** Why aria2c ended before its download was complete, by its exit status (aria2c(1) EXIT STATUS). */
export function aria2Error(
  node: string,
  dest: string,
  exitCode: number,
  output: string,
  stallSeconds: number,
): ImgcacheError {
  const said = output
    .split('\n')
    .findLast((l) => /\[(ERROR|WARN)\]|Exception:|errorCode=/.test(l))
    ?.trim()
  const tail = said ? ` (aria2c: ${said})` : ''
  const make = (code: string, message: string, suggestions: string[]) =>
    new ImgcacheError(code, `${node}: ${message}${tail}`, {node, path: dest, suggestions})
  switch (exitCode) {
    case 7: {
      // aria2c stops a download with no progress for --bt-stop-timeout seconds this way.
      return make('TRANSFER_STALLED', `no piece arrived from the swarm for ${stallSeconds} s`, [
        'Check that the node reaches the seed (this machine) and its peers on their BitTorrent ports; run again, or use --via relay.',
      ])
    }

    case 9: {
      return make('NO_SPACE', `no space left for ${dest}`, [
        'Free space in the cache dir on that node (imgcache prune) and try again.',
      ])
    }

    case 127: {
      return make('NODE_NO_ARIA2C', 'aria2c is not installed on the node', [
        'Install aria2 on the node (Debian/Ubuntu: apt install aria2), or use --via relay.',
      ])
    }

    default: {
      return make('TRANSFER_FAILED', `aria2c exited with status ${exitCode} before the download was complete`, [
        'Run the same command again; see the aria2c message for the cause.',
      ])
    }
  }
}
