import {Listr, ListrLogger, ProcessOutput} from 'listr2'
import {Writable} from 'node:stream'
import {afterEach, beforeEach, describe, expect, it, vi} from 'vitest'

import {FrameGate} from '../../src/lib/ui/frame-gate.js'
import {FrameLimitedRenderer} from '../../src/lib/ui/views.js'

describe('FrameGate', () => {
  beforeEach(() => {
    vi.useFakeTimers()
  })
  afterEach(() => {
    vi.useRealTimers()
  })

  it('draws at once after a quiet interval, and folds a burst into one draw at its end', () => {
    const draw = vi.fn()
    const gate = new FrameGate(draw, 100)
    gate.request()
    expect(draw).toHaveBeenCalledTimes(1)
    for (let i = 0; i < 50; i++) {
      gate.request()
      vi.advanceTimersByTime(1)
    }

    expect(draw).toHaveBeenCalledTimes(1)
    vi.advanceTimersByTime(50)
    expect(draw).toHaveBeenCalledTimes(2)
    vi.advanceTimersByTime(1000)
    expect(draw).toHaveBeenCalledTimes(2)
  })

  it('draws at most once per interval for a request every millisecond', () => {
    const draw = vi.fn()
    const gate = new FrameGate(draw, 100)
    for (let i = 0; i < 1000; i++) {
      gate.request()
      vi.advanceTimersByTime(1)
    }

    expect(draw.mock.calls.length).toBeGreaterThanOrEqual(9)
    expect(draw.mock.calls.length).toBeLessThanOrEqual(11)
  })

  it('cancel drops the draw still waiting', () => {
    const draw = vi.fn()
    const gate = new FrameGate(draw, 100)
    gate.request()
    gate.request()
    gate.cancel()
    vi.advanceTimersByTime(1000)
    expect(draw).toHaveBeenCalledTimes(1)
  })
})

/** A terminal for listr2 to draw on (a mock: the test counts its frames), 120×40. */
class FakeTerminal extends Writable {
  columns = 120
  isTTY = true
  rows = 40
  text = ''
  writes = 0

  override _write(chunk: Buffer | string, _encoding: string, callback: () => void): void {
    this.writes++
    this.text += chunk.toString()
    callback()
  }
}

/** listr2 draws its live view only when process.stdout is a terminal, or for a renderer that says it needs none. */
class OnAnyStream extends FrameLimitedRenderer {
  static override nonTTY = true
}

describe('FrameLimitedRenderer', () => {
  it('draws a handful of frames for 500 changes of a task’s output, then the final state', async () => {
    const terminal = new FakeTerminal()
    const stream = terminal as unknown as NodeJS.WriteStream
    const logger = new ListrLogger({processOutput: new ProcessOutput(stream, stream)})
    const listr = new Listr(
      [
        {
          async task(_ctx, task) {
            for (let i = 1; i <= 500; i++) task.output = `downloading ${i} of 500`
            task.title = 'image: cached'
          },
          title: 'image',
        },
      ],
      {renderer: OnAnyStream, rendererOptions: {logger}},
    )
    await listr.run()
    // listr2's own renderer draws each change: some 500 frames here.
    expect(terminal.writes).toBeLessThan(50)
    expect(terminal.text).toContain('image: cached')
  })
})
