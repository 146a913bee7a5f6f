/**
 * A name or path as one printable piece of a human line: control characters (a newline in a file
 * name someone planted, an escape sequence) are shown escaped, so that no file name can forge a line
 * of a report or a log, or steer the terminal. JSON output needs none of this: JSON.stringify escapes.
 */
export function printable(text: string): string {
  // eslint-disable-next-line no-control-regex
  return text.replaceAll(/[\u0000-\u001F\u007F-\u009F\u2028\u2029]/g, (c) => {
    const named: Record<string, string> = {'\n': String.raw`\n`, '\r': String.raw`\r`, '\t': String.raw`\t`}
    const code = c.codePointAt(0) ?? 0
    return (
      named[c] ??
      (code <= 0xff ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u${code.toString(16).padStart(4, '0')}`)
    )
  })
}
