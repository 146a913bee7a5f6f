import {execFileSync} from 'node:child_process'
import {randomBytes} from 'node:crypto'
import {mkdtemp, readFile, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import path from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {bencode} from '../../src/lib/p2p/bencode.js'
import {makeTorrent, PieceHasher, pieceLengthFor} from '../../src/lib/p2p/torrent.js'

// Our torrents against the real tools: mktorrent builds one of the same file, aria2c -S reads
// ours. The same info hash means any BitTorrent client sees the same torrent.

const MiB = 1024 * 1024
const announce = 'http://127.0.0.1:6969/announce'
let dir: string

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'imgcache-torrent-'))
})

afterAll(async () => {
  await rm(dir, {force: true, recursive: true})
})

/** Feeds the bytes in uneven chunks, as a network stream delivers them. */
function ours(name: string, data: Buffer, pieceLength = MiB) {
  const hasher = new PieceHasher(pieceLength)
  for (let offset = 0, step = 1; offset < data.length; step = (step * 7919) % 300_000 || 1) {
    hasher.update(data.subarray(offset, offset + step))
    offset += step
  }

  return makeTorrent({announce, length: data.length, name, pieceLength, pieces: hasher.finish()})
}

const aria2Hash = (file: string) =>
  /Info Hash: ([\da-f]{40})/.exec(execFileSync('aria2c', ['-S', file], {encoding: 'utf8'}))?.[1]

describe('torrent', () => {
  for (const size of [5 * MiB + 12_345, 3 * MiB, 1000]) {
    it(`has mktorrent's info hash for a file of ${size} bytes (private, 1 MiB pieces)`, async () => {
      const name = `f${size}.part`
      const data = randomBytes(size)
      await writeFile(path.join(dir, name), data)
      const theirs = path.join(dir, `${name}.mk.torrent`)
      execFileSync('mktorrent', ['-p', '-l', '20', '-a', announce, '-o', theirs, path.join(dir, name)], {
        stdio: 'ignore',
      })
      const torrent = ours(name, data)
      const mine = path.join(dir, `${name}.ours.torrent`)
      await writeFile(mine, torrent.bytes)
      expect(aria2Hash(theirs)).toBe(torrent.infoHash)
      expect(aria2Hash(mine)).toBe(torrent.infoHash)
      // And aria2c reads ours as private with the right pieces.
      const shown = execFileSync('aria2c', ['-S', mine], {encoding: 'utf8'})
      expect(shown).toContain(`Total Length:`)
      expect(shown).toContain(`Name: ${name}`)
      expect(shown).toContain(`The Number of Pieces: ${Math.ceil(size / MiB)}`)
      expect(shown).toContain(announce)
    })
  }

  it('changes its info hash when one byte changes (the pieces are those bytes)', () => {
    const data = randomBytes(2 * MiB)
    const before = ours('x', data).infoHash
    data[MiB + 5]! ^= 1
    expect(ours('x', data).infoHash).not.toBe(before)
  })

  it('refuses piece hashes that do not cover the length', () => {
    expect(() =>
      makeTorrent({announce, length: 3 * MiB, name: 'x', pieceLength: MiB, pieces: Buffer.alloc(40)}),
    ).toThrow(/2 piece hashes for 3145728 bytes/)
  })

  it('scales the piece length with the size, 1 to 16 MiB', () => {
    expect(pieceLengthFor(0)).toBe(MiB)
    expect(pieceLengthFor(2048 * MiB)).toBe(MiB)
    expect(pieceLengthFor(2049 * MiB)).toBe(2 * MiB)
    expect(pieceLengthFor(10 * 1024 * 1024 * MiB)).toBe(16 * MiB)
  })

  it('bencodes as BEP 3 says: sorted keys by bytes, lengths in bytes', async () => {
    expect(bencode({b: 1, a: ['é', Buffer.from([0])], c: undefined}).toString('latin1')).toBe(
      'd1:al2:\u00C3\u00A91:\u0000e1:bi1ee',
    )
    expect(() => bencode(1.5)).toThrow(/not an integer/)
    expect((await readFile(path.join(dir, 'f1000.part'))).length).toBe(1000)
  })
})
