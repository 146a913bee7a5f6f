/**
 * The CLI's entry (bin/run.js): @oclif/core as bundled with the commands, so that the commands and
 * the code that runs them share one copy of it.
 */
export {execute} from '@oclif/core'
