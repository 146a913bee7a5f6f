import {describe, expect, it} from 'vitest'

import {aria2Argv, aria2Error, parseAria2Summary} from '../../src/lib/node/aria2.js'

// aria2c's summary lines as aria2 1.36 prints them to a pipe (seen on this machine).
const MiB = 1024 * 1024
const output = ` *** Download Progress Summary as of Mon Dec  7 22:15:21 2026 ***
===============================================================================
[#8cea63 5.3MiB/20MiB(26%) CN:3 SD:1 DL:2.5MiB ETA:5s]
FILE: dl/img.part
-------------------------------------------------------------------------------
`

describe('aria2c on a node', () => {
  it("reads bytes, peers and speed from aria2c's last summary line, and a complete download from SEED", () => {
    expect(parseAria2Summary('', 20 * MiB)).toBeUndefined()
    expect(parseAria2Summary(output, 20 * MiB)).toEqual({
      bytes: Math.round(5.3 * MiB),
      complete: false,
      peers: 3,
      speed: Math.round(2.5 * MiB),
    })
    const seeding = `${output}\n[#8cea63 SEED(0.0) CN:2 SD:0]\nFILE: dl/img.part\n`
    expect(parseAria2Summary(seeding, 20 * MiB)).toEqual({bytes: 20 * MiB, complete: true, peers: 2})
  })

  it('downloads in a private swarm, checking every piece, never under another name', () => {
    const argv = aria2Argv(
      {
        dest: '/c/_base/x.part',
        listenPorts: '6881-6999',
        stallSeconds: 60,
        torrent: Buffer.alloc(0),
        torrentPath: '/c/_base/x.part.torrent',
      },
      '/c/_base',
    )
    expect(argv).toEqual(
      expect.arrayContaining([
        '--dir=/c/_base',
        '--check-integrity=true',
        '--auto-file-renaming=false',
        '--enable-dht=false',
        '--bt-enable-lpd=false',
        '--enable-peer-exchange=false',
        '--bt-stop-timeout=60',
      ]),
    )
    expect(argv.at(-1)).toBe('/c/_base/x.part.torrent')
  })

  it('names a stall, a full disk and a missing aria2c by their exit status', () => {
    expect(aria2Error('n1', '/p', 7, '', 60)).toMatchObject({code: 'TRANSFER_STALLED'})
    expect(aria2Error('n1', '/p', 9, '', 60)).toMatchObject({code: 'NO_SPACE'})
    expect(aria2Error('n1', '/p', 127, '', 60)).toMatchObject({code: 'NODE_NO_ARIA2C'})
    expect(aria2Error('n1', '/p', 1, '12/07 [ERROR] Exception: boom', 60).message).toContain('boom')
  })
})
