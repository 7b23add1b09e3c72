// The bucket a client address is counted in by the rate limits and the state quota: an IPv4
// address itself, an IPv4-mapped IPv6 address as its IPv4, and any other IPv6 address as its /64,
// because one subscriber usually holds a whole /64 and could otherwise rotate through 2^64 buckets.
import { isIPv4, isIPv6 } from 'node:net'

/** Anything that is not an IP address (a garbled forwarded entry): one bucket for all of them. */
export const UNKNOWN_BUCKET = 'unknown'

/** The eight 16-bit groups of a valid IPv6 address (zone id already removed). */
function groups (address: string): number[] {
  // A trailing dotted quad (::ffff:1.2.3.4) as the two groups it stands for.
  const text = address.replace(/(\d+)\.(\d+)\.(\d+)\.(\d+)$/, (_m, a, b, c, d) =>
    `${((Number(a) << 8) | Number(b)).toString(16)}:${((Number(c) << 8) | Number(d)).toString(16)}`)
  const parse = (part: string): number[] => part === '' ? [] : part.split(':').map(h => parseInt(h, 16))
  const [head, tail] = text.split('::')
  if (tail === undefined) return parse(head)
  const left = parse(head)
  const right = parse(tail)
  return [...left, ...new Array<number>(8 - left.length - right.length).fill(0), ...right]
}

/** The bucket of request.ip: `1.2.3.4`, or `2001:db8:0:1::/64` (one spelling per /64). */
export function bucketOf (address: string | undefined): string {
  if (address === undefined) return UNKNOWN_BUCKET
  if (isIPv4(address)) return address
  const bare = address.split('%')[0]
  if (!isIPv6(address) || !isIPv6(bare)) return UNKNOWN_BUCKET
  const g = groups(bare.toLowerCase())
  if (g.slice(0, 5).every(x => x === 0) && g[5] === 0xffff) {
    return [g[6] >> 8, g[6] & 0xff, g[7] >> 8, g[7] & 0xff].join('.')
  }
  return `${g.slice(0, 4).map(x => x.toString(16)).join(':')}::/64`
}
