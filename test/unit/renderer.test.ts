import {describe, expect, it} from 'vitest'

import {chooseRenderer, type RendererInput, type RendererKind} from '../../src/lib/ui/renderer.js'

const terminal: RendererInput = {
  columns: 120,
  env: {TERM: 'xterm'},
  items: 1,
  json: false,
  quiet: false,
  rows: 40,
  stderrIsTTY: true,
  stdoutIsTTY: true,
}

describe('chooseRenderer', () => {
  it.each<[string, Partial<RendererInput>, RendererKind]>([
    ['one image on a terminal', {}, 'bar'],
    ['several images on a terminal', {items: 3}, 'listr'],
    ['one image on several nodes (listr2 groups by node)', {multiNode: true}, 'listr'],
    ['--json', {items: 3, json: true}, 'silent'],
    ['--quiet', {quiet: true}, 'silent'],
    ['--json wins over a terminal and CI', {env: {CI: 'true'}, json: true}, 'silent'],
    ['stderr piped to a log (cron)', {items: 3, stderrIsTTY: false}, 'lines'],
    ['stderr piped, one image', {stderrIsTTY: false}, 'lines'],
    ['CI set, on a terminal', {env: {CI: 'true', TERM: 'xterm'}, items: 3}, 'lines'],
    ['CI set to the empty string is not CI', {env: {CI: '', TERM: 'xterm'}, items: 3}, 'listr'],
    ['TERM=dumb', {env: {TERM: 'dumb'}}, 'lines'],
    ['several images, stdout piped (listr2 redraws stdout)', {items: 3, stdoutIsTTY: false}, 'lines'],
    ['one image, stdout piped: the bar is on stderr', {stdoutIsTTY: false}, 'bar'],
    ['nothing to do on a terminal', {items: 0}, 'bar'],
    // A terminal that reports no size (0x0: a serial console, some CI ptys) wraps a redraw one character per line.
    ['a terminal of 0x0, several images', {columns: 0, items: 3, rows: 0}, 'lines'],
    ['a terminal of 0x0, one image', {columns: 0, rows: 0}, 'lines'],
    ['a terminal without a size at all', {columns: undefined, items: 3, rows: undefined}, 'lines'],
    ['a terminal 0 columns wide', {columns: 0, items: 3}, 'lines'],
    // listr2 keeps a task per pair and redraws them all: a fleet taller than the terminal scrolls away.
    ['a fleet that fits the terminal', {items: 39, multiNode: true}, 'listr'],
    ['a fleet taller than the terminal (hundreds of nodes)', {items: 400, multiNode: true}, 'lines'],
  ])('%s → %s', (_name, change, expected) => {
    expect(chooseRenderer({...terminal, ...change})).toBe(expected)
  })
})
