/** How progress is shown: one pure decision, tested by a table (STYLE: lint-staged's getRenderer). */
export type RendererKind = 'bar' | 'lines' | 'listr' | 'silent'

export interface RendererInput {
  env: {CI?: string; TERM?: string}
  /** Items of work to show (node × image pairs). */
  items: number
  json: boolean
  /** Several nodes: listr2 groups images under their node even for one image. */
  multiNode?: boolean
  quiet: boolean
  stderrIsTTY: boolean
  stdoutIsTTY: boolean
}

/**
 * --json/--quiet: nothing. A non-terminal stderr, CI or a dumb terminal: log lines (one per state
 * change, throttled byte progress). One image on a terminal: a cli-progress bar. Several: listr2's
 * live renderer, which also needs stdout to be a terminal (otherwise log lines).
 */
export function chooseRenderer(input: RendererInput): RendererKind {
  if (input.json || input.quiet) return 'silent'
  const dumb = !input.stderrIsTTY || Boolean(input.env.CI) || input.env.TERM === 'dumb'
  if (dumb) return 'lines'
  if (input.items <= 1 && !input.multiNode) return 'bar'
  return input.stdoutIsTTY ? 'listr' : 'lines'
}
