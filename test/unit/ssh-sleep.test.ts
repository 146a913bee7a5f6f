import {getEventListeners} from 'node:events'
import {describe, expect, it} from 'vitest'

import {sleep} from '../../src/lib/node/ssh.js'

describe('the poll delay of a node-side download', () => {
  it('leaves no listener on the attempt’s signal once it has slept (a long download polls thousands of times)', async () => {
    const controller = new AbortController()
    for (let i = 0; i < 20; i++) await sleep(1, controller.signal)
    expect(getEventListeners(controller.signal, 'abort')).toHaveLength(0)
  })

  it('ends at once when the signal aborts', async () => {
    const controller = new AbortController()
    const slept = sleep(60_000, controller.signal)
    controller.abort()
    await expect(slept).resolves.toBeUndefined()
  })
})
