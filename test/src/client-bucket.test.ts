// The bucket of a client address: IPv4 as is, IPv4-mapped IPv6 as the IPv4, other IPv6 as one
// key per /64 whatever the spelling, and one shared bucket for anything that is not an address.
import t from 'tap'
import fc from 'fast-check'
import { bucketOf, UNKNOWN_BUCKET } from '../../src/client-bucket.js'

t.test('IPv4 and IPv4-mapped IPv6', async t => {
  t.equal(bucketOf('203.0.113.7'), '203.0.113.7')
  t.equal(bucketOf('::ffff:203.0.113.7'), '203.0.113.7', 'dotted mapped form')
  t.equal(bucketOf('::FFFF:cb00:7107'), '203.0.113.7', 'hex mapped form')
  t.equal(bucketOf('0:0:0:0:0:ffff:203.0.113.7'), '203.0.113.7', 'uncompressed mapped form')
  t.equal(bucketOf('::ffff:127.0.0.1'), bucketOf('127.0.0.1'))
  t.not(bucketOf('203.0.113.7'), bucketOf('203.0.113.8'), 'every IPv4 address is its own bucket')
  // Not mapped: the IPv4-compatible (deprecated) and NAT64 forms are ordinary IPv6 addresses.
  t.equal(bucketOf('::203.0.113.7'), '0:0:0:0::/64')
  t.equal(bucketOf('64:ff9b::203.0.113.7'), '64:ff9b:0:0::/64')
})

t.test('IPv6: one bucket per /64, whatever the spelling', async t => {
  const spellings = [
    '2001:db8:0:1::1',
    '2001:DB8:0:1:0:0:0:1',
    '2001:0db8:0000:0001:ffff:ffff:ffff:ffff',
    '2001:db8::1:abcd:0:0:7',
    '2001:db8:0:1:1::',
    '2001:db8:0:1::1%eth0',
    '2001:db8:0:1::10.0.0.1'
  ]
  for (const s of spellings) t.equal(bucketOf(s), '2001:db8:0:1::/64', s)
  t.equal(bucketOf('2001:db8:0:2::1'), '2001:db8:0:2::/64', 'the next /64 is another bucket')
  t.equal(bucketOf('2001:db8::'), '2001:db8:0:0::/64')
  t.equal(bucketOf('::1'), '0:0:0:0::/64')
  t.equal(bucketOf('::'), '0:0:0:0::/64')
})

t.test('not an address: the one unknown bucket', async t => {
  for (const s of [undefined, '', 'unknown', '[::1]', '1.2.3.4:80', '1.2.3', '2001:db8::1::2', 'x'.repeat(5000), '::ffff:1.2.3.400']) {
    t.equal(bucketOf(s), UNKNOWN_BUCKET, JSON.stringify(s?.slice(0, 20)))
  }
})

// Any spelling of an address (compressed at any zero run, padded, upper case) gives the bucket
// of its first four groups; addresses that differ in the first 64 bits never share one.
const group = fc.integer({ min: 0, max: 0xffff })
const address = fc.array(group, { minLength: 8, maxLength: 8 })

function spell (g: number[], opts: { pad: boolean, upper: boolean, compress: boolean }): string {
  const hex = g.map(x => {
    const h = opts.pad ? x.toString(16).padStart(4, '0') : x.toString(16)
    return opts.upper ? h.toUpperCase() : h
  })
  if (!opts.compress) return hex.join(':')
  // Compress the longest run of zero groups (any run of length ≥ 1 is a valid spelling).
  let best = [-1, 0]
  for (let i = 0; i < 8; i++) {
    let j = i
    while (j < 8 && g[j] === 0) j++
    if (j - i > best[1]) best = [i, j - i]
  }
  if (best[0] < 0) return hex.join(':')
  return `${hex.slice(0, best[0]).join(':')}::${hex.slice(best[0] + best[1]).join(':')}`
}

const expected = (g: number[]): string =>
  g.slice(0, 5).every(x => x === 0) && g[5] === 0xffff
    ? [g[6] >> 8, g[6] & 0xff, g[7] >> 8, g[7] & 0xff].join('.')
    : `${g.slice(0, 4).map(x => x.toString(16)).join(':')}::/64`

t.test('property: every spelling of an address has the bucket of its /64', async t => {
  fc.assert(fc.property(address, fc.boolean(), fc.boolean(), fc.boolean(), (g, pad, upper, compress) => {
    return bucketOf(spell(g, { pad, upper, compress })) === expected(g)
  }), { numRuns: 2000 })
  t.pass('2000 addresses')
})

t.test('property: two addresses share a bucket exactly when their /64 (or mapped IPv4) is equal', async t => {
  const mostlyZero = fc.oneof(fc.constant(0), group)
  const addr = fc.array(mostlyZero, { minLength: 8, maxLength: 8 })
  fc.assert(fc.property(addr, addr, (a, b) => {
    const same = bucketOf(spell(a, { pad: false, upper: false, compress: true })) === bucketOf(spell(b, { pad: true, upper: true, compress: false }))
    return same === (expected(a) === expected(b))
  }), { numRuns: 2000 })
  t.pass('2000 pairs')
})
