/** What a fetch is doing, for progress renderers (listr2, cli-progress, line logs). */
export type FetchPhase =
  | 'checking'
  | 'converting'
  | 'done'
  | 'downloading'
  | 'inspecting'
  | 'renaming'
  | 'resuming'
  | 'verifying'
  | 'waiting-for-lock'

export interface FetchProgress {
  /** Bytes in the `.part` file so far (including resumed bytes). */
  bytes: number
  image: string
  node: string
  /** Peers a BitTorrent download is connected to (precache --via p2p). */
  peers?: number
  phase: FetchPhase
  /** Bytes expected in all, when the source said. */
  total?: number
}

export type ProgressListener = (progress: FetchProgress) => void
