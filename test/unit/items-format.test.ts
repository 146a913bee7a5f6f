import {describe, expect, it} from 'vitest'

import {formatItems} from '../../src/lib/report/items.js'

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
