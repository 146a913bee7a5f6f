import {describe, expect, it} from 'vitest'

import type {ImageRecord} from '../../src/lib/image-source/types.js'

import {conversionOf, planVerification} from '../../src/lib/verify.js'

const SHA512 = 'ab'.repeat(64)
const MD5 = 'cd'.repeat(16)

function record(fields: Partial<ImageRecord> = {}): ImageRecord {
  return {
    id: 'img-1',
    osHashAlgo: 'sha512',
    osHashValue: SHA512,
    size: 4096,
    source: 'glance',
    status: 'active',
    ...fields,
  }
}

describe('inspect --verify: what can be compared', () => {
  it.each<
    [
      string,
      string | undefined,
      string | undefined,
      undefined | {format?: string; sourceFormat?: string},
      string | undefined,
    ]
  >([
    [
      'imgcache converted it (its record says so)',
      'raw',
      'qcow2',
      {format: 'raw', sourceFormat: 'qcow2'},
      'converted from qcow2 to raw when cached',
    ],
    ['imgcache cached it as downloaded', 'raw', 'raw', {format: 'raw', sourceFormat: 'raw'}, undefined],
    [
      'a qcow2 kept as qcow2 (force_raw_images off)',
      'qcow2',
      'qcow2',
      {format: 'qcow2', sourceFormat: 'qcow2'},
      undefined,
    ],
    [
      'Nova converted it (raw file, qcow2 image, no record)',
      'raw',
      'qcow2',
      undefined,
      'converted from qcow2 to raw when cached',
    ],
    ['Nova converted a vmdk', 'raw', 'VMDK', undefined, 'converted from vmdk to raw when cached'],
    ['an iso is raw to qemu', 'raw', 'iso', undefined, undefined],
    ['a qcow2 file where a raw image belongs: for the digest to judge', 'qcow2', 'raw', undefined, undefined],
    ['no declared format', 'raw', undefined, undefined, undefined],
  ])('%s', (_label, fileFormat, diskFormat, sidecar, expected) => {
    expect(conversionOf(fileFormat, {diskFormat}, sidecar)).toBe(expected)
  })

  it('plans the strongest declared digest, refuses a wrong size without hashing, and says why it cannot compare', () => {
    const entry = {apparentBytes: 4096, format: 'raw'}
    expect(planVerification(entry, record({diskFormat: 'raw'}), undefined)).toEqual({
      algorithm: 'sha512',
      value: SHA512,
    })
    expect(
      planVerification(
        entry,
        record({checksum: MD5, diskFormat: 'raw', osHashAlgo: undefined, osHashValue: undefined}),
        undefined,
      ),
    ).toEqual({algorithm: 'md5', value: MD5})
    expect(planVerification({...entry, apparentBytes: 4000}, record({diskFormat: 'raw'}), undefined)).toEqual({
      algorithm: 'sha512',
      expected: SHA512,
      outcome: 'mismatch',
      reason: 'it holds 4000 bytes, image img-1 has 4096',
    })
    // Without a size from the image service, only the digest decides.
    expect(planVerification({...entry, apparentBytes: 4000}, record({size: undefined}), undefined)).toEqual({
      algorithm: 'sha512',
      value: SHA512,
    })
    expect(planVerification(entry, record({osHashAlgo: undefined, osHashValue: undefined}), undefined)).toEqual({
      outcome: 'unverifiable',
      reason: 'the image service declares no digest for image img-1',
    })
    expect(planVerification(entry, record({diskFormat: 'qcow2', size: 999}), undefined)).toEqual({
      outcome: 'unverifiable',
      reason: "converted from qcow2 to raw when cached: the image service's digest is of the qcow2 bytes",
    })
  })
})
