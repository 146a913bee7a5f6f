/**
 * Bencode (BEP 3), the encoding of .torrent files: just the encoder, for the torrents imgcache
 * writes. Integers, byte strings, lists and dictionaries (keys sorted as raw bytes, as BEP 3 requires:
 * the info hash is the SHA-1 of the info dictionary's exact bytes, so any other order names another torrent).
 */
export type Bencodable = Bencodable[] | Buffer | number | string | {[key: string]: Bencodable | undefined}

export function bencode(value: Bencodable): Buffer {
  const parts: Buffer[] = []
  encode(value, parts)
  return Buffer.concat(parts)
}

function encode(value: Bencodable, out: Buffer[]): void {
  if (typeof value === 'number') {
    if (!Number.isSafeInteger(value)) throw new TypeError(`bencode: ${value} is not an integer`)
    out.push(Buffer.from(`i${value}e`))
  } else if (typeof value === 'string' || Buffer.isBuffer(value)) {
    const bytes = typeof value === 'string' ? Buffer.from(value, 'utf8') : value
    out.push(Buffer.from(`${bytes.length}:`), bytes)
  } else if (Array.isArray(value)) {
    out.push(Buffer.from('l'))
    for (const item of value) encode(item, out)
    out.push(Buffer.from('e'))
  } else {
    out.push(Buffer.from('d'))
    const keys = Object.keys(value)
      .filter((k) => value[k] !== undefined)
      .map((k) => Buffer.from(k, 'utf8'))
      .sort(Buffer.compare)
    for (const key of keys) {
      encode(key, out)
      encode(value[key.toString('utf8')]!, out)
    }

    out.push(Buffer.from('e'))
  }
}
