import Table from 'cli-table3'

import {printable} from './printable.js'

/**
 * A plain, borderless, aligned table (readable in a terminal, in cron mail and in a pager). Every
 * cell is one printable line: a control character in a name is shown escaped (printable.ts).
 */
export function renderTable(head: string[], rows: string[][]): string {
  const table = new Table({
    chars: {
      bottom: '',
      'bottom-left': '',
      'bottom-mid': '',
      'bottom-right': '',
      left: '',
      'left-mid': '',
      mid: '',
      'mid-mid': '',
      middle: '  ',
      right: '',
      'right-mid': '',
      top: '',
      'top-left': '',
      'top-mid': '',
      'top-right': '',
    },
    head: head.map((h) => printable(h)),
    style: {border: [], compact: true, head: [], 'padding-left': 0, 'padding-right': 0},
  })
  table.push(...rows.map((row) => row.map((cell) => printable(cell))))
  return table
    .toString()
    .split('\n')
    .map((line) => line.trimEnd())
    .join('\n')
}
