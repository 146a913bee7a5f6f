import Table from 'cli-table3'

/** A plain, borderless, aligned table (readable in a terminal, in cron mail and in a pager). */
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
    head,
    style: {border: [], compact: true, head: [], 'padding-left': 0, 'padding-right': 0},
  })
  table.push(...rows)
  return table
    .toString()
    .split('\n')
    .map((line) => line.trimEnd())
    .join('\n')
}
