import {UsageError} from '../errors.js'
import {type ExpectedHash, type HashAlgorithm, hashAlgorithms, type ImageRecord} from './types.js'

/** Hex digits of each digest. */
export const digestLength: Record<HashAlgorithm, number> = {md5: 32, sha1: 40, sha256: 64, sha384: 96, sha512: 128}

export function isHashAlgorithm(value: string): value is HashAlgorithm {
  return (hashAlgorithms as readonly string[]).includes(value)
}

function isDigest(algorithm: HashAlgorithm, value: string): boolean {
  return value.length === digestLength[algorithm] && /^[\da-f]+$/i.test(value)
}

/**
 * `ALGO:HEX` (as `--checksum` and the config's `images.*.checksum` take it) → ExpectedHash.
 * `field` names where the value came from, for the error message.
 */
export function parseChecksum(text: string, field = '--checksum'): ExpectedHash {
  const shown = text.length > 80 ? `${text.slice(0, 77)}...` : text
  const fail = (why: string) =>
    new UsageError('CHECKSUM_INVALID', `${field} "${shown}" is not a checksum: ${why}`, {
      field,
      suggestions: [
        `Write it as ALGO:HEX with ALGO one of ${hashAlgorithms.join(', ')}, e.g. sha256:$(sha256sum FILE | cut -d" " -f1).`,
      ],
    })
  const match = /^([\w-]+):(.*)$/.exec(text.trim())
  if (!match) throw fail('expected ALGO:HEX')
  const algorithm = (match[1] as string).toLowerCase()
  const value = (match[2] as string).toLowerCase()
  if (!isHashAlgorithm(algorithm)) throw fail(`unknown algorithm "${match[1]}"`)
  if (!/^[\da-f]*$/.test(value)) throw fail('the digest must be hexadecimal')
  if (value.length !== digestLength[algorithm]) {
    throw fail(`a ${algorithm} digest has ${digestLength[algorithm]} hex digits, not ${value.length}`)
  }

  return {algorithm, value}
}

/** The strongest digest the record declares: Glance's multihash first, then the MD5 checksum. */
export function expectedHash(image: ImageRecord): ExpectedHash | undefined {
  const algorithm = image.osHashAlgo?.toLowerCase()
  if (algorithm && image.osHashValue && isHashAlgorithm(algorithm) && isDigest(algorithm, image.osHashValue)) {
    return {algorithm, value: image.osHashValue.toLowerCase()}
  }

  if (image.checksum && isDigest('md5', image.checksum)) return {algorithm: 'md5', value: image.checksum.toLowerCase()}
  return undefined
}

/** The record fields that carry a declared digest (inverse of expectedHash). */
export function hashFields(
  hash: ExpectedHash | undefined,
): Pick<ImageRecord, 'checksum' | 'osHashAlgo' | 'osHashValue'> {
  if (!hash) return {}
  if (hash.algorithm === 'md5') return {checksum: hash.value}
  return {osHashAlgo: hash.algorithm, osHashValue: hash.value}
}
