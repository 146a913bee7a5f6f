import type {Probe} from './probe.js'
import type {DiskFormat} from './types.js'

import {probeIso} from './probes/iso.js'
import {probeLuks} from './probes/luks.js'
import {probeMbr} from './probes/mbr.js'
import {probeQcow2} from './probes/qcow2.js'
import {probeQed} from './probes/qed.js'
import {probeVdi} from './probes/vdi.js'
import {probeVhd} from './probes/vhd.js'
import {probeVhdx} from './probes/vhdx.js'
import {probeVmdk} from './probes/vmdk.js'

/** Every format but raw (the fallback), in DISK_FORMATS order. */
export const PROBES: ReadonlyArray<readonly [Exclude<DiskFormat, 'raw'>, Probe]> = [
  ['qcow2', probeQcow2],
  ['qed', probeQed],
  ['vmdk', probeVmdk],
  ['vhd', probeVhd],
  ['vhdx', probeVhdx],
  ['vdi', probeVdi],
  ['luks', probeLuks],
  ['iso', probeIso],
  ['gpt', probeMbr],
]
