import {describe, expect, it} from 'vitest'

import {classifyNova, classifyTemporary} from '../../src/lib/cache/classify.js'
import {cacheName, ephemeralExtension, lockName} from '../../src/lib/cache/naming.js'

// Reference nova-imagecache.md §6, cases 1 and 3–6 (Nova's own unit tests).
describe('cache naming (case 1)', () => {
  it.each([
    ['fd0cb2f1-8375-44c9-b1f4-3e1f4c4a8ef0', '0d5e6b61602d758984b3bf038267614d6016eb2a'],
    ['1', '356a192b7913b04c54574d18c28d46e6395428ab'],
    ['21', '472b07b9fcf2c2451e8781e944bf5f77cd8457c8'],
    ['22', '12c6fc06c99a462375eeb3f43dfd832b08ca9e17'],
    ['42', '92cfceb39d57d914ed8b14d0e37643de0797ae56'],
  ])('image %s is cached as %s', (id, name) => {
    expect(cacheName(id)).toBe(name)
  })

  it('names the lock nova-<basename>', () => {
    expect(lockName('0d5e6b61602d758984b3bf038267614d6016eb2a')).toBe('nova-0d5e6b61602d758984b3bf038267614d6016eb2a')
    expect(lockName('swap_2048')).toBe('nova-swap_2048')
  })

  it.each([
    ['vfat', '0706d66'],
    ['ext4', '40d1d2c'],
    ['ext3', '66f137c'],
    ['xfs', '310201b'],
    ['ntfs', '68e98b8'],
  ])('ephemeral extension of %s is %s', (fs, ext) => {
    expect(ephemeralExtension(fs)).toBe(ext)
  })
})

const sha = (n: number) => cacheName(String(n))

describe("Nova's classification of cache dir entries", () => {
  it('case 3: originals, resized, swap and ephemeral from a mixed listing', () => {
    const names = [
      '00000001',
      'ephemeral_20_abcdefg',
      '00000004',
      'swap_1000',
      `${sha(1)}_sm`,
      `${sha(2)}_sm`,
      sha(3),
      sha(4),
      `${sha(5)}_5368709120`,
      `${sha(5)}_10737418240`,
    ]
    const kinds = Object.fromEntries(names.map((n) => [n, classifyNova(n, true)]))
    expect(kinds).toEqual({
      '00000001': undefined,
      '00000004': undefined,
      [`${sha(1)}_sm`]: 'resized',
      [`${sha(2)}_sm`]: 'resized',
      [sha(3)]: 'original',
      [sha(4)]: 'original',
      [`${sha(5)}_5368709120`]: 'resized',
      [`${sha(5)}_10737418240`]: 'resized',
      ephemeral_20_abcdefg: 'ephemeral',
      swap_1000: 'swap',
    })
  })

  it('case 4: swap names', () => {
    const swaps = ['swap_', 'swap_123', 'swap_456', 'swap_abc', '123_swap', 'swap_129_'].filter(
      (n) => classifyNova(n, true) === 'swap',
    )
    expect(swaps).toEqual(['swap_123', 'swap_456'])
  })

  it('case 5: ephemeral names', () => {
    const names = [
      'ephemeral_',
      'ephemeral_123',
      'ephemeral_456_40d1d2c',
      'ephemeral_abc_40d1f2e',
      '123_ephemeral_40e1d2d',
      'ephemeral_129_',
    ]
    expect(names.filter((n) => classifyNova(n, true) === 'ephemeral')).toEqual(['ephemeral_456_40d1d2c'])
  })

  it('case 6: one-character suffixes, temporaries, directories and other files are not cache entries', () => {
    expect(classifyNova(`${sha(1)}_5`, true)).toBeUndefined()
    expect(classifyNova(`${sha(1)}.part`, true)).toBeUndefined()
    expect(classifyNova(`${sha(1)}.converted`, true)).toBeUndefined()
    expect(classifyNova(sha(1), false)).toBeUndefined()
    expect(classifyNova('random.txt', true)).toBeUndefined()
    expect(classifyNova('z'.repeat(40), true)).toBe('original')
  })

  it('recognises imgcache temporaries only for names Nova would cache', () => {
    expect(classifyTemporary(`${sha(1)}.part`)).toEqual({finalName: sha(1), kind: 'part'})
    expect(classifyTemporary(`${sha(1)}.converted`)).toEqual({finalName: sha(1), kind: 'converted'})
    expect(classifyTemporary('notes.part')).toBeUndefined()
    expect(classifyTemporary(`${sha(1)}.info`)).toBeUndefined()
  })
})
