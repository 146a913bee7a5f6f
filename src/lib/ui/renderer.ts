/** How progress is shown: one pure decision, tested by a table (STYLE: lint-staged's getRenderer). */
export type RendererKind = 'bar' | 'lines' | 'listr' | 'silent'

export interface RendererInput {
  /** The terminal's width as it reports it (process.stderr.columns); 0 or undefined when it reports none. */
  columns?: number
  env: {CI?: string; TERM?: string}
  /** Items of work to show (node × image pairs). */
  items: number
  json: boolean
  /** Several nodes: listr2 groups images under their node even for one image. */
  multiNode?: boolean
  quiet: boolean
  /** The terminal's height (process.stderr.rows). */
  rows?: number
  stderrIsTTY: boolean
  stdoutIsTTY: boolean
}

/**
 * --json/--quiet: nothing. A non-terminal stderr, CI, a dumb terminal or one that reports no size
 * (0x0: a redraw would wrap one character per line): log lines (one per state change, throttled
 * byte progress). One image on a terminal: a cli-progress bar. Several: listr2's
 * live renderer, which also needs stdout to be a terminal (otherwise log lines), and a terminal
 * taller than the work: listr2 holds a task per (node, image) pair and redraws every one, so a fleet
 * of hundreds of nodes would cost memory per node and scroll out of sight; it gets log lines.
 */
export function chooseRenderer(input: RendererInput): RendererKind {
  if (input.json || input.quiet) return 'silent'
  const sizeless = !input.columns || !input.rows
  const dumb = !input.stderrIsTTY || Boolean(input.env.CI) || input.env.TERM === 'dumb' || sizeless
  if (dumb) return 'lines'
  if (input.items <= 1 && !input.multiNode) return 'bar'
  return input.stdoutIsTTY && input.items <= (input.rows ?? 0) ? 'listr' : 'lines'
}
