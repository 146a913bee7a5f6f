import {execa} from 'execa'
import {describe, expect, it} from 'vitest'

import {AGENT_BOOT_PY, AGENT_PY} from '../../src/lib/node/agent-py.js'

/**
 * An SSH node's agent reaches python3 on stdin, not in the command line (a driver of hundreds of
 * nodes would otherwise quote and escape its ~20 KiB once per node). Real python3, as on a node.
 */
describe('agent loader', () => {
  it('keeps the command line small and runs the program read from stdin', async () => {
    const program = Buffer.from(AGENT_PY)
    const argv = ['-c', AGENT_BOOT_PY, String(program.length)]
    expect(argv.join(' ').length).toBeLessThan(512)
    // The program, then requests on the same stdin: none of them may be lost to the loader's read.
    const requests = [
      {id: 1, op: 'stat', path: '/'},
      {id: 2, op: 'read_text', path: '/nonexistent/imgcache-test'},
    ]
    const input = Buffer.concat([program, Buffer.from(requests.map((r) => `${JSON.stringify(r)}\n`).join(''))])
    const {exitCode, stdout} = await execa('python3', argv, {input, reject: false})
    expect(exitCode).toBe(0)
    const replies = stdout.split('\n').map((line) => JSON.parse(line) as {id?: number; ok?: boolean; ready?: boolean})
    expect(replies[0]?.ready).toBe(true)
    expect(replies.slice(1).map((r) => [r.id, r.ok])).toEqual([
      [1, true],
      [2, true],
    ])
  })

  it('ends quietly when its stdin closes before the whole program came', async () => {
    const {exitCode, stdout} = await execa('python3', ['-c', AGENT_BOOT_PY, '100000'], {
      input: 'import sys',
      reject: false,
    })
    expect(exitCode).toBe(0)
    expect(stdout).toBe('')
  })
})
