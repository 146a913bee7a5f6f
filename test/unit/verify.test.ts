import {describe, expect, it} from 'vitest'

import type {ImageRecord} from '../../src/lib/image-source/types.js'

import {ExitCode} from '../../src/lib/exit-codes.js'
import {
  type Comparability,
  comparability,
  planVerification,
  verifyExit,
  type VerifyTotals,
} from '../../src/lib/verify.js'

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

type Sidecar = undefined | {format?: string; sourceFormat?: string}

describe('inspect --verify: how far a digest comparison can be trusted', () => {
  it.each<[string, string | undefined, string | undefined, Sidecar, boolean, Comparability]>([
    // imgcache's record of the entry says what it did, in Glance's names and qemu's.
    [
      'imgcache converted a qcow2',
      'raw',
      'qcow2',
      {format: 'raw', sourceFormat: 'qcow2'},
      true,
      {converted: 'converted from qcow2 to raw when cached'},
    ],
    ['imgcache cached a raw as it came', 'raw', 'raw', {format: 'raw', sourceFormat: 'raw'}, true, {reliable: true}],
    ['an iso is raw to qemu', 'raw', 'iso', {format: 'raw', sourceFormat: 'iso'}, true, {reliable: true}],
    ['an ami is raw to qemu', 'raw', 'ami', {format: 'raw', sourceFormat: 'ami'}, true, {reliable: true}],
    [
      'a vhd kept as it is (qemu calls it vpc)',
      'raw',
      'vhd',
      {format: 'vpc', sourceFormat: 'vhd'},
      false,
      {reliable: true},
    ],
    [
      'imgcache converted a vhd',
      'raw',
      'vhd',
      {format: 'raw', sourceFormat: 'vhd'},
      true,
      {converted: 'converted from vhd to raw when cached'},
    ],
    [
      'a qcow2 kept (force_raw_images off)',
      'qcow2',
      'qcow2',
      {format: 'qcow2', sourceFormat: 'qcow2'},
      false,
      {reliable: true},
    ],
    // Without a record (Nova cached it): the formats and force_raw_images.
    [
      'Nova converted a qcow2',
      'raw',
      'qcow2',
      undefined,
      false,
      {converted: 'converted from qcow2 to raw when cached'},
    ],
    ['Nova cached a raw', 'raw', 'RAW', undefined, true, {reliable: true}],
    ['a qcow2 file where a raw image belongs: Nova never makes one', 'qcow2', 'raw', undefined, true, {reliable: true}],
    ['a qcow2 file for a vmdk image: Nova never makes one', 'qcow2', 'vmdk', undefined, true, {reliable: true}],
    [
      'Nova converted a vmdk (force_raw_images on)',
      'raw',
      'vmdk',
      undefined,
      true,
      {converted: 'converted from vmdk to raw when cached'},
    ],
    [
      'a vmdk with force_raw_images off: kept, unless the setting was on when it was cached',
      'raw',
      'vmdk',
      undefined,
      false,
      {
        unsure:
          'a vmdk image kept as it is, unless it was converted to raw when cached (force_raw_images on at the time)',
      },
    ],
    [
      'no declared format',
      'raw',
      undefined,
      undefined,
      true,
      {unsure: "the image's format is not declared, so the file may be a conversion of it"},
    ],
    ['unreadable first bytes', undefined, 'vmdk', undefined, false, {unsure: 'its first bytes could not be read'}],
  ])('%s', (_label, fileFormat, diskFormat, sidecar, forceRaw, expected) => {
    expect(comparability(fileFormat, diskFormat, sidecar, forceRaw)).toEqual(expected)
  })
})

describe('inspect --verify: the plan for one entry', () => {
  const entry = {apparentBytes: 4096, format: 'raw'}

  it('is the strongest declared digest, with how far a difference can be trusted', () => {
    expect(planVerification(entry, record({diskFormat: 'raw'}), undefined, true)).toEqual({
      comparability: {reliable: true},
      hash: {algorithm: 'sha512', value: SHA512},
    })
    expect(
      planVerification(
        entry,
        record({checksum: MD5, diskFormat: 'raw', osHashAlgo: undefined, osHashValue: undefined}),
        undefined,
        true,
      ),
    ).toMatchObject({hash: {algorithm: 'md5', value: MD5}})
    expect(planVerification(entry, record({diskFormat: undefined}), undefined, true)).toMatchObject({
      comparability: {unsure: expect.any(String)},
    })
  })

  it('refuses a wrong size without hashing, only where the file should be the bytes as uploaded', () => {
    expect(planVerification({...entry, apparentBytes: 4000}, record({diskFormat: 'raw'}), undefined, true)).toEqual({
      algorithm: 'sha512',
      expected: SHA512,
      outcome: 'mismatch',
      reason: 'it holds 4000 bytes, image img-1 has 4096',
    })
    // A vmdk maybe kept, maybe converted: its size proves nothing; nor does a size the service does not give.
    expect(
      planVerification({...entry, apparentBytes: 4000}, record({diskFormat: 'vmdk'}), undefined, false),
    ).toMatchObject({
      hash: {algorithm: 'sha512'},
    })
    expect(
      planVerification({...entry, apparentBytes: 4000}, record({diskFormat: 'raw', size: undefined}), undefined, true),
    ).toMatchObject({
      comparability: {reliable: true},
    })
  })

  it('says why it cannot compare', () => {
    expect(
      planVerification(
        entry,
        record({diskFormat: 'raw', osHashAlgo: undefined, osHashValue: undefined}),
        undefined,
        true,
      ),
    ).toEqual({
      outcome: 'unverifiable',
      reason: 'no digest is declared for image img-1',
    })
    expect(planVerification(entry, record({diskFormat: 'qcow2', size: 999}), undefined, true)).toEqual({
      outcome: 'unverifiable',
      reason: 'converted from qcow2 to raw when cached: the declared digest is of the qcow2 bytes',
    })
  })
})

describe('inspect --verify: the exit code', () => {
  const node = (totals: Partial<VerifyTotals> | undefined) => ({
    totals: {
      bytes: 0,
      entries: 0,
      inUse: 0,
      reclaimableBytes: 0,
      temporaries: 0,
      unknown: 0,
      unsound: 0,
      verified: totals && {failed: 0, interrupted: 0, match: 0, mismatch: 0, unverifiable: 0, ...totals},
    },
  })

  it.each<[string, Array<Partial<VerifyTotals> | undefined>, number | undefined]>([
    ['nothing to say: the run decides', [{match: 3, unverifiable: 2}], undefined],
    ['without --verify', [undefined], undefined],
    [
      'a mismatch wins over everything else',
      [{failed: 2, interrupted: 1, mismatch: 1, unverifiable: 3}, {match: 1}],
      ExitCode.Refused,
    ],
    ['errors stopped some checks, others matched', [{failed: 1, match: 1, unverifiable: 1}], ExitCode.Partial],
    ['errors stopped every check', [{failed: 2, unverifiable: 2}, {unverifiable: 1}], ExitCode.Failed],
    ['interrupted after some matched', [{interrupted: 2, match: 1, unverifiable: 2}], ExitCode.Partial],
    ['interrupted before any matched', [{interrupted: 2, unverifiable: 2}], ExitCode.Interrupted],
  ])('%s', (_label, nodes, expected) => {
    expect(verifyExit(nodes.map((t) => node(t)))).toBe(expected)
  })
})
