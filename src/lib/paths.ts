/**
 * `dir/name` for a name listed in `dir` (never empty, `.`, `..` or with a slash) and a normalised
 * dir: what path.join returns, without the normalising pass it makes over the whole string. Scans
 * build tens of thousands of these (bench/inspect.bench.ts).
 */
export function childPath(dir: string, name: string): string {
  return dir.endsWith('/') ? dir + name : `${dir}/${name}`
}
