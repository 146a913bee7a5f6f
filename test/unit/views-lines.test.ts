import {describe, expect, it} from 'vitest'

import {LinesView} from '../../src/lib/ui/views.js'

const LOCK = '/var/lib/nova/instances/locks/nova-7e769ed412df3d6eeec411a62403255d7339e108'
const BUSY = `${LOCK} is locked by another process (waited 1 s)`

function lines(): {out: string[]; view: LinesView} {
  const out: string[] = []
  const plan = {nodes: [{images: [{id: 'i1', label: 'cirros'}], name: 'cmp-1'}]}
  return {
    out,
    view: new LinesView(
      plan,
      (line) => out.push(line),
      10_000,
      () => 0,
    ),
  }
}

describe('the line view (logs, cron, a pipe)', () => {
  it('says a message once: retries that fail the same way say so instead of repeating it', () => {
    const {out, view} = lines()
    view.onEvent({image: 'i1', node: 'cmp-1', state: 'running', type: 'item'})
    view.onEvent({image: 'i1', message: `${BUSY}; retrying in 1s`, node: 'cmp-1', state: 'running', type: 'item'})
    view.onEvent({image: 'i1', message: `${BUSY}; retrying in 2s`, node: 'cmp-1', state: 'running', type: 'item'})
    view.onEvent({image: 'i1', message: BUSY, node: 'cmp-1', state: 'error', type: 'item'})
    expect(out.join('\n').split(LOCK)).toHaveLength(2)
    expect(out.slice(1)).toEqual([
      `00:00:00 cmp-1 cirros: running: ${BUSY}; retrying in 1s`,
      '00:00:00 cmp-1 cirros: running: failed the same way again; retrying in 2s',
      '00:00:00 cmp-1 cirros: error: failed the same way again',
    ])
  })

  it('a different message is printed in full', () => {
    const {out, view} = lines()
    view.onEvent({image: 'i1', message: `${BUSY}; retrying in 1s`, node: 'cmp-1', state: 'running', type: 'item'})
    view.onEvent({image: 'i1', message: 'image service unreachable', node: 'cmp-1', state: 'error', type: 'item'})
    expect(out.at(-1)).toBe('00:00:00 cmp-1 cirros: error: image service unreachable')
    view.onEvent({message: 'connection refused; retrying in 1s', node: 'cmp-1', state: 'retrying', type: 'node'})
    view.onEvent({message: 'connection refused', node: 'cmp-1', state: 'skipped', type: 'node'})
    expect(out.slice(-2)).toEqual([
      '00:00:00 cmp-1: retrying: connection refused; retrying in 1s',
      '00:00:00 cmp-1: skipped: failed the same way again',
    ])
  })
})
