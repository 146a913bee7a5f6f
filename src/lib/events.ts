import type {FetchPhase} from './fetch/progress.js'

/** The final state of one (node, image) pair, in Nova's words (reference §4.3). */
export type ItemStatus = 'cached' | 'error' | 'existing' | 'skipped'

/**
 * What fleet work reports as it goes, for whichever renderer is on (listr2, a progress bar, log
 * lines, nothing). Domain code emits these and never prints.
 */
export type WorkEvent =
  | {bytes: number; image: string; node: string; peers?: number; phase: FetchPhase; total?: number; type: 'progress'}
  | {image: string; message?: string; node: string; state: 'queued' | 'running' | ItemStatus; type: 'item'}
  | {
      message?: string
      node: string
      state: 'done' | 'failed' | 'queued' | 'retrying' | 'running' | 'skipped'
      type: 'node'
    }

export type EventListener = (event: WorkEvent) => void
