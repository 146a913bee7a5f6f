import {createHash, type Hash} from 'node:crypto'

import {bencode} from './bencode.js'

/** Smallest piece: 1 MiB, what mktorrent -l 20 makes and aria2 handles well. */
const MIN_PIECE = 1024 * 1024
/** Largest piece: pieces beyond 16 MiB make a retried (tampered, lost) piece costly. */
const MAX_PIECE = 16 * 1024 * 1024
/** About this many pieces at most, so the torrent (20 bytes a piece) stays small for large images. */
const TARGET_PIECES = 2048

/** The piece length for an image of `size` bytes: a power of two, 1 MiB up to 16 MiB. */
export function pieceLengthFor(size: number): number {
  let length = MIN_PIECE
  while (length < MAX_PIECE && size / length > TARGET_PIECES) length *= 2
  return length
}

/**
 * BitTorrent v1 piece hashes (SHA-1 of each `pieceLength` bytes, the last piece shorter) of a byte
 * stream fed in chunks of any size: nothing is buffered beyond the hash state.
 */
export class PieceHasher {
  bytes = 0
  private current: Hash = createHash('sha1')
  private inPiece = 0
  private readonly pieces: Buffer[] = []

  constructor(readonly pieceLength: number) {}

  /** The concatenated piece hashes, once every byte has been fed (call once). */
  finish(): Buffer {
    if (this.inPiece > 0) this.pieces.push(this.current.digest())
    this.inPiece = 0
    return Buffer.concat(this.pieces)
  }

  update(chunk: Buffer): void {
    let offset = 0
    while (offset < chunk.length) {
      const take = Math.min(this.pieceLength - this.inPiece, chunk.length - offset)
      this.current.update(chunk.subarray(offset, offset + take))
      this.inPiece += take
      offset += take
      if (this.inPiece === this.pieceLength) {
        this.pieces.push(this.current.digest())
        this.current = createHash('sha1')
        this.inPiece = 0
      }
    }

    this.bytes += chunk.length
  }
}

export interface TorrentInput {
  /** Tracker announce URL. */
  announce: string
  length: number
  /** The file's name on the downloading side (aria2c writes `--dir`/name). */
  name: string
  pieceLength: number
  /** Concatenated SHA-1 piece hashes (PieceHasher.finish). */
  pieces: Buffer
}

export interface Torrent {
  /** The .torrent file's bytes. */
  bytes: Buffer
  /** SHA-1 of the bencoded info dictionary, 40 lower-case hex characters (what trackers whitelist). */
  infoHash: string
}

/**
 * A single-file, private (BEP 27) BitTorrent v1 torrent: peers come from the tracker only (clients
 * turn off DHT and peer exchange for it), so the swarm is this run's nodes and its seed.
 */
export function makeTorrent(input: TorrentInput): Torrent {
  if (input.pieces.length !== 20 * Math.ceil(input.length / input.pieceLength)) {
    throw new Error(`torrent ${input.name}: ${input.pieces.length / 20} piece hashes for ${input.length} bytes`)
  }

  const info = {
    length: input.length,
    name: input.name,
    'piece length': input.pieceLength,
    pieces: input.pieces,
    private: 1,
  }
  const infoBytes = bencode(info)
  // Encoding is canonical (sorted keys), so the info dictionary has the same bytes inside the file.
  const bytes = bencode({announce: input.announce, 'created by': 'imgcache', info})
  return {bytes, infoHash: createHash('sha1').update(infoBytes).digest('hex')}
}
