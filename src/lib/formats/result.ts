import type {Need, ProbeContext, ProbeMatch, ProbeOutcome} from './probe.js'

import {
  DEFAULT_VMDK_ALLOWED_TYPES,
  type DiskFormat,
  type InspectionResult,
  type InspectOptions,
  type SafetyFailure,
} from './types.js'

export function probeContext(options: InspectOptions = {}): ProbeContext {
  return {vmdkAllowedTypes: [...(options.vmdkAllowedTypes ?? DEFAULT_VMDK_ALLOWED_TYPES)]}
}

/**
 * Turns the final probe outcomes (in DISK_FORMATS order) into one result. Raw is the fallback and
 * never a candidate next to another format; more than one match is refused, except that an ISO
 * with a partition table (a hybrid ISO) is an ISO, as Nova accepts.
 */
export function assembleResult(
  outcomes: ReadonlyArray<readonly [Exclude<DiskFormat, 'raw'>, ProbeOutcome]>,
  actualSize: number,
): InspectionResult {
  const matches: Array<[DiskFormat, ProbeMatch]> = []
  for (const [format, outcome] of outcomes) {
    switch (outcome.status) {
      case 'match': {
        matches.push([format, outcome])
        break
      }

      case 'need': {
        // Only reachable when a region had streamed past before a header pointed at it.
        const message = `${format} header points at data that could not be read: ${describeNeeds(outcome.needs)}`
        matches.push([format, {details: {}, failures: [{check: 'incomplete', message}], status: 'match'}])
        break
      }

      case 'no-match': {
        break
      }
    }
  }

  if (matches.length === 0) {
    return {
      actualSize,
      candidates: ['raw'],
      details: {},
      failures: [],
      format: 'raw',
      safe: true,
      virtualSize: actualSize,
    }
  }

  const candidates = matches.map(([format]) => format)
  const hybridIso = candidates.length === 2 && candidates.includes('iso') && candidates.includes('gpt')
  const [chosenFormat, chosen] = (hybridIso ? matches.find(([format]) => format === 'iso') : matches[0])!
  const failures: SafetyFailure[] = []
  if (candidates.length > 1 && !hybridIso) {
    failures.push({check: 'multiple_formats', message: `Multiple formats detected: ${candidates.join(', ')}`})
    for (const [, outcome] of matches) failures.push(...outcome.failures)
  } else {
    failures.push(...chosen.failures)
  }

  const result: InspectionResult = {
    actualSize,
    candidates,
    details: chosen.details,
    failures,
    format: chosenFormat,
    safe: failures.length === 0,
  }
  if (chosen.virtualSize !== undefined) result.virtualSize = chosen.virtualSize
  return result
}

function describeNeeds(needs: Need[]): string {
  return needs
    .map((n) => ('tail' in n ? `the last ${n.tail} bytes` : `${n.length} bytes at offset ${n.offset}`))
    .join(', ')
}
