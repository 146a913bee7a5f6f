import {afterEach, beforeEach, describe, expect, it, vi} from 'vitest'

import type {WorkEvent} from '../../src/lib/events.js'

import {type ProgressView, throttleProgress} from '../../src/lib/ui/views.js'

/** A view that records what reaches it: each progress event is one redraw of a live view. */
function recorder(): ProgressView & {events: WorkEvent[]} {
  const events: WorkEvent[] = []
  return {
    events,
    onEvent(event) {
      events.push(event)
    },
    async stop() {},
  }
}

const progress = (bytes: number, phase: 'downloading' | 'verifying' = 'downloading', image = 'img'): WorkEvent => ({
  bytes,
  image,
  node: 'n1',
  phase,
  total: 1000 * 65_536,
  type: 'progress',
})

beforeEach(() => {
  vi.useFakeTimers()
})

afterEach(() => {
  vi.useRealTimers()
})

describe('throttleProgress', () => {
  it('passes at most about 10 progress redraws a second for a burst of one per millisecond', () => {
    const inner = recorder()
    const view = throttleProgress(inner)
    for (let i = 1; i <= 1000; i++) {
      view.onEvent(progress(i * 65_536))
      vi.advanceTimersByTime(1)
    }

    const redraws = inner.events.filter((e) => e.type === 'progress').length
    expect(redraws).toBeGreaterThanOrEqual(9)
    expect(redraws).toBeLessThanOrEqual(11)
  })

  it('passes a change of phase at once, and the last bytes before an item ends', () => {
    const inner = recorder()
    const view = throttleProgress(inner)
    view.onEvent(progress(1))
    view.onEvent(progress(2))
    view.onEvent(progress(3))
    view.onEvent(progress(3, 'verifying'))
    view.onEvent(progress(4, 'verifying'))
    view.onEvent({image: 'img', node: 'n1', state: 'cached', type: 'item'})
    expect(inner.events).toEqual([
      progress(1),
      progress(3, 'verifying'),
      progress(4, 'verifying'),
      {image: 'img', node: 'n1', state: 'cached', type: 'item'},
    ])
  })

  it('throttles each (node, image) on its own', () => {
    const inner = recorder()
    const view = throttleProgress(inner)
    view.onEvent(progress(1, 'downloading', 'a'))
    view.onEvent(progress(1, 'downloading', 'b'))
    expect(inner.events).toHaveLength(2)
  })
})
