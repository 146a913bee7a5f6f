import {describe, expect, it} from 'vitest'

import type {ImageRecord} from '../../src/lib/image-source/types.js'

import {expectedHash, parseChecksum} from '../../src/lib/image-source/checksum.js'

const hex = (n: number) => 'ab'.repeat(n / 2)

describe('parseChecksum', () => {
  it.each([
    ['md5', 32],
    ['sha1', 40],
    ['sha256', 64],
    ['sha384', 96],
    ['sha512', 128],
  ])('accepts %s with %i hex digits', (algorithm, digits) => {
    expect(parseChecksum(`${algorithm}:${hex(digits)}`)).toEqual({algorithm, value: hex(digits)})
  })

  it('lowercases the algorithm and the digest and trims blanks', () => {
    expect(parseChecksum(` SHA256:${hex(64).toUpperCase()} `)).toEqual({algorithm: 'sha256', value: hex(64)})
  })

  it.each([
    ['', 'expected ALGO:HEX'],
    [hex(64), 'expected ALGO:HEX'],
    [`crc32:${hex(8)}`, 'unknown algorithm "crc32"'],
    [`sha256:${hex(62)}`, 'a sha256 digest has 64 hex digits, not 62'],
    [`sha256:${'zz'.repeat(32)}`, 'must be hexadecimal'],
    [`md5:${hex(64)}`, 'a md5 digest has 32 hex digits, not 64'],
  ])('refuses %j: %s', (text, why) => {
    expect(() => parseChecksum(text, 'images.ubuntu.checksum')).toThrow(
      expect.objectContaining({
        code: 'CHECKSUM_INVALID',
        exitCode: 2,
        message: expect.stringContaining(why),
        subject: {field: 'images.ubuntu.checksum'},
      }),
    )
  })

  it('names --checksum by default and the value in the message', () => {
    expect(() => parseChecksum('sha256:abc')).toThrow(/^--checksum "sha256:abc" is not a checksum/)
  })
})

describe('expectedHash', () => {
  const base: ImageRecord = {id: 'i', source: 'glance', status: 'active'}

  it('prefers the multihash over the MD5 checksum', () => {
    expect(
      expectedHash({...base, checksum: hex(32), osHashAlgo: 'sha512', osHashValue: hex(128).toUpperCase()}),
    ).toEqual({
      algorithm: 'sha512',
      value: hex(128),
    })
  })

  it('falls back to MD5 when the multihash is absent, unknown or malformed', () => {
    const md5 = {algorithm: 'md5', value: hex(32)}
    expect(expectedHash({...base, checksum: hex(32)})).toEqual(md5)
    expect(expectedHash({...base, checksum: hex(32), osHashAlgo: 'sha3_512', osHashValue: hex(128)})).toEqual(md5)
    expect(expectedHash({...base, checksum: hex(32), osHashAlgo: 'sha512', osHashValue: hex(64)})).toEqual(md5)
  })

  it('is undefined when the source declares nothing usable', () => {
    expect(expectedHash(base)).toBeUndefined()
    expect(expectedHash({...base, checksum: 'not-hex'})).toBeUndefined()
  })
})
