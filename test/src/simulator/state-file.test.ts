// The simulator's state file: what a restart of `npm run dev` must not forget.
import t from 'tap'
import { readFileSync, readdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { TOKEN_PATH, buildSimulator, type Simulator, type SimulatorOptions } from '../../../src/simulator/app.js'
import { openStateFile, tokenDigest } from '../../../src/simulator/state-file.js'

const CLIENT_ID = 'sim-client'
const CLIENT_SECRET = 'sim-secret-value'
type Test = { teardown: (fn: () => unknown) => void }

interface Started extends Simulator { warnings: string[] }

/** A simulator that is closed by the test itself (closing flushes the file) or at teardown. */
function start (t: Test, stateFile: string, overrides: Partial<SimulatorOptions> = {}): Started {
  const warnings: string[] = []
  const sim = buildSimulator({ clientId: CLIENT_ID, clientSecret: CLIENT_SECRET, stateFile, warn: m => warnings.push(m), ...overrides })
  t.teardown(async () => { await sim.app.close() })
  return { ...sim, warnings }
}

async function token (sim: Simulator, fields: Record<string, string>) {
  const res = await sim.app.inject({
    method: 'POST',
    url: TOKEN_PATH,
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    payload: new URLSearchParams({ client_id: CLIENT_ID, client_secret: CLIENT_SECRET, ...fields }).toString()
  })
  return { status: res.statusCode, body: res.json() as Record<string, unknown> }
}
const exchange = async (sim: Simulator, merchantId: string): Promise<string> => {
  const r = await token(sim, { grant_type: 'authorization_code', code: sim.control.issueCode(merchantId) })
  return String(r.body.refresh_token)
}
const refresh = async (sim: Simulator, refreshToken: string) => await token(sim, { grant_type: 'refresh_token', refresh_token: refreshToken })

t.test('refresh tokens issued before a restart still refresh after it', async t => {
  const file = join(t.testdir(), 'simulator-state.json')
  const first = start(t, file)
  t.match(first.warnings, [/does not exist yet/], 'a missing file starts empty, with a warning')
  const rt = await exchange(first, 'm1')
  const other = await exchange(first, 'm2')
  await first.app.close()

  const text = readFileSync(file, 'utf8')
  t.notMatch(text, rt, 'the file holds no token')
  t.notMatch(text, other, 'the file holds no token')
  t.match(text, tokenDigest(rt))
  t.same(readdirSync(join(file, '..')), ['simulator-state.json'], 'no temporary file left behind')

  const second = start(t, file)
  t.same(second.warnings, [])
  const r = await refresh(second, rt)
  t.equal(r.status, 200)
  t.equal(r.body.refresh_token, rt)
  t.equal((await refresh(second, other)).status, 200)
  t.equal((await refresh(second, 'never-issued')).body.error, 'invalid_grant')
})

t.test('rotations and revocations survive a restart', async t => {
  const file = join(t.testdir(), 'state.json')
  const first = start(t, file, { rotateRefreshTokens: true })
  const rt0 = await exchange(first, 'm1')
  const rt1 = String((await refresh(first, rt0)).body.refresh_token)
  const revoked = await exchange(first, 'm_gone')
  t.equal(first.control.revokeRefreshTokens('m_gone'), 1)
  await first.app.close()

  const second = start(t, file, { rotateRefreshTokens: true })
  t.equal((await refresh(second, rt0)).body.error, 'invalid_grant', 'a rotated-away token stays invalid')
  t.equal((await refresh(second, revoked)).body.error, 'invalid_grant', 'a revoked token stays invalid')
  const r2 = await refresh(second, rt1)
  t.equal(r2.status, 200, 'the newest token of the chain refreshes')
  const rt2 = String(r2.body.refresh_token)
  await second.app.close()

  const third = start(t, file, { rotateRefreshTokens: true })
  t.equal((await refresh(third, rt1)).body.error, 'invalid_grant', 'the rotation made after the first restart was kept')
  t.equal((await refresh(third, rt2)).status, 200)
})

t.test('expiry survives a restart, and expired grants are not written', async t => {
  const file = join(t.testdir(), 'state.json')
  const clock = { ms: Date.UTC(2030, 0, 1) }
  const opts = { refreshTokenTtlSeconds: 100, now: () => clock.ms }
  const first = start(t, file, opts)
  const short = await exchange(first, 'm1')
  clock.ms += 60_000
  const later = await exchange(first, 'm2')
  t.equal((await refresh(first, later)).status, 200)
  await first.app.close()

  clock.ms += 50_000 // short: 110 s old; later: refreshed 50 s ago
  const second = start(t, file, opts)
  t.equal((await refresh(second, short)).body.error, 'invalid_grant', 'expired while the simulator was down')
  t.equal((await refresh(second, later)).status, 200)
  await second.app.close()
  t.notMatch(readFileSync(file, 'utf8'), tokenDigest(short), 'expired grants are dropped from the file')
})

t.test('a corrupt file starts empty with a warning and is replaced', async t => {
  const dir = t.testdir()
  const corrupt = [
    '{"version":1,"refresh_tokens":',
    '[]',
    '{"version":2,"refresh_tokens":{}}',
    '{"version":1,"refresh_tokens":{"short":{"client_id":"c","merchant_id":"m","expires_at":1}}}',
    `{"version":1,"refresh_tokens":{"${'A'.repeat(43)}":{"client_id":"c","merchant_id":"bad id","expires_at":1}}}`
  ]
  for (const [i, content] of corrupt.entries()) {
    const file = join(dir, `state-${i}.json`)
    writeFileSync(file, content)
    const sim = start(t, file)
    t.match(sim.warnings, [/is corrupt; starting with no refresh tokens/], content)
    const rt = await exchange(sim, 'm1')
    await sim.app.close()
    const again = start(t, file)
    t.same(again.warnings, [], `${content}: replaced by a valid file`)
    t.equal((await refresh(again, rt)).status, 200)
  }
})

t.test('writes are behind the requests, and close flushes them', async t => {
  const file = join(t.testdir(), 'state.json')
  const sim = start(t, file)
  await exchange(sim, 'm1')
  t.throws(() => readFileSync(file), { code: 'ENOENT' }, 'not written synchronously by the request')
  await sim.app.close()
  t.equal(Object.keys((JSON.parse(readFileSync(file, 'utf8')) as { refresh_tokens: object }).refresh_tokens).length, 1)
})

t.test('the debounced write lands without a close', async t => {
  const file = join(t.testdir(), 'state.json')
  const state = openStateFile(file, { warn: () => {}, now: Date.now, debounceMs: 10 })
  state.grants.set(tokenDigest('a'), { clientId: 'c', merchantId: 'm1', expiresAt: Date.now() + 60_000 })
  state.changed()
  state.changed()
  for (let i = 0; i < 500; i++) {
    try {
      readFileSync(file)
      break
    } catch {
      await new Promise(resolve => setTimeout(resolve, 10))
    }
  }
  const reopened = openStateFile(file, { warn: () => {}, now: Date.now })
  t.same([...reopened.grants.keys()], [tokenDigest('a')])
})

t.test('an unwritable file is a warning, not a crash', async t => {
  const dir = t.testdir({ blocker: 'a file where a directory should be' })
  const sim = start(t, join(dir, 'blocker', 'state.json'))
  await exchange(sim, 'm1')
  await sim.app.close()
  t.match(sim.warnings, [/does not exist yet|cannot read/, /cannot write state file/])
})
