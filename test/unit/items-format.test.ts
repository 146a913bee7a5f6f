import {describe, expect, it} from 'vitest'

import type {ItemResult} from '../../src/lib/populate.js'

import {formatItems, totalsLine} from '../../src/lib/report/items.js'

describe('the per-node, per-image report', () => {
  it('names where each next step applies as "node: image", never gluing a path to the node name', () => {
    const text = formatItems([
      {
        image: {id: '0d5e', ref: '/tmp/images/jammy.raw'},
        message: 'locked',
        nextStep: 'Run again later.',
        node: 'local',
        status: 'error',
      },
      {
        image: {id: '7b1a', name: 'ubuntu', ref: 'ubuntu'},
        message: 'locked',
        nextStep: 'Run again later.',
        node: 'cmp-1',
        status: 'error',
      },
    ])
    expect(text).toContain('→ Run again later. (local: /tmp/images/jammy.raw, cmp-1: ubuntu)')
    expect(text).not.toContain('local//tmp')
  })
})

describe('the tally of node-image pairs', () => {
  const pair = (node: string, status: ItemResult['status'], code?: string): ItemResult => ({
    code,
    image: {id: '3c1e2f4a-5b6c-4d7e-8f90-a1b2c3d4e5f6', ref: 'cirros'},
    node,
    status,
  })

  it.each<[string, ItemResult[], string]>([
    ['all cached', ['a', 'b', 'c', 'd', 'e', 'f'].map((n) => pair(n, 'cached')), '6 of 6 node-image pairs cached'],
    ['one pair, one failure', [pair('local', 'error')], '1 of 1 node-image pair failed'],
    [
      'mixed, zero counts left out',
      [pair('a', 'cached'), pair('b', 'existing'), pair('c', 'existing'), pair('d', 'error')],
      '1 of 4 node-image pairs cached, 2 already cached, 1 failed',
    ],
    [
      'an unreachable node skips its pairs: pairs and nodes each counted as what they are',
      [pair('a', 'existing'), pair('ghost', 'skipped', 'SSH_REFUSED'), pair('ghost', 'skipped', 'SSH_REFUSED')],
      '1 of 3 node-image pairs already cached, 2 skipped (1 node unreachable)',
    ],
    [
      'a backend that needs no cache',
      [pair('a', 'cached'), pair('b', 'skipped', 'RBD_CLONE')],
      "1 of 2 node-image pairs cached, 1 not needed on the node's storage backend",
    ],
    ['nothing', [], 'no node-image pairs'],
  ])('%s', (_name, items, line) => {
    expect(totalsLine(items)).toBe(line)
  })

  it('the table closes with one tally: the default, or the summary line given instead', () => {
    const items = [pair('a', 'cached'), pair('b', 'cached')]
    expect(
      formatItems(items)
        .split('\n')
        .filter((l) => l.includes('node-image pairs')),
    ).toEqual(['2 of 2 node-image pairs cached'])
    const text = formatItems(
      items,
      'Image pre-cache of 1 image on aggregate web completed in 1s: 2 of 2 node-image pairs cached',
    )
    expect(text.split('\n').filter((l) => l.includes('node-image pairs'))).toHaveLength(1)
  })
})
