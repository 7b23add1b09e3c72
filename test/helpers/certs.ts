// Throwaway PKI for mutual-TLS tests, made with the openssl CLI in a temp dir once per process
// and removed when the process exits. No key material ever lives in the repository.
import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { randomBytes } from 'node:crypto'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

export interface PemPair { cert: string, key: string, certFile: string, keyFile: string }

export interface TestCerts {
  dir: string
  /** CA that signs the server certificate and the trusted client certificate. */
  ca: { cert: string, certFile: string }
  /** Server certificate for 127.0.0.1 / localhost. */
  server: PemPair
  /** Client certificate signed by `ca`, with its key in clear and encrypted with `passphrase`. */
  client: PemPair & { subjectCN: string, encryptedKey: string, encryptedKeyFile: string, passphrase: string }
  /** A second CA and a client certificate it signed: not trusted by the server. */
  rogueCa: { cert: string, certFile: string }
  rogueClient: PemPair
}

const CONFIG = `
[req]
distinguished_name = dn
prompt = no
[dn]
CN = placeholder
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
`

let cached: TestCerts | undefined

export function testCerts (): TestCerts {
  if (cached !== undefined) return cached
  const dir = mkdtempSync(join(tmpdir(), 'cybs-certs-'))
  process.once('exit', () => rmSync(dir, { recursive: true, force: true }))
  const file = (name: string): string => join(dir, name)
  const openssl = (...args: string[]): void => { execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] }) }
  const config = file('openssl.cnf')
  writeFileSync(config, CONFIG)
  const newKey = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes']

  const makeCa = (name: string, cn: string): { cert: string, certFile: string } => {
    openssl('req', '-x509', '-new', ...newKey, '-keyout', file(`${name}.key`), '-out', file(`${name}.crt`),
      '-days', '2', '-subj', `/CN=${cn}`, '-config', config, '-extensions', 'ca')
    return { cert: readFileSync(file(`${name}.crt`), 'utf8'), certFile: file(`${name}.crt`) }
  }
  const makeLeaf = (name: string, cn: string, ca: string, extensions: string): PemPair => {
    openssl('req', '-new', ...newKey, '-keyout', file(`${name}.key`), '-out', file(`${name}.csr`), '-subj', `/CN=${cn}`, '-config', config)
    openssl('x509', '-req', '-in', file(`${name}.csr`), '-CA', file(`${ca}.crt`), '-CAkey', file(`${ca}.key`),
      '-set_serial', `0x${randomBytes(8).toString('hex')}`, '-days', '2', '-extfile', config, '-extensions', extensions, '-out', file(`${name}.crt`))
    return { cert: readFileSync(file(`${name}.crt`), 'utf8'), key: readFileSync(file(`${name}.key`), 'utf8'), certFile: file(`${name}.crt`), keyFile: file(`${name}.key`) }
  }

  const ca = makeCa('ca', 'cybs-test-ca')
  const server = makeLeaf('server', 'localhost', 'ca', 'server')
  const subjectCN = 'cybs-test-partner'
  const client = makeLeaf('client', subjectCN, 'ca', 'client')
  const passphrase = randomBytes(12).toString('hex')
  openssl('pkey', '-in', client.keyFile, '-aes-256-cbc', '-passout', `pass:${passphrase}`, '-out', file('client.enc.key'))
  const rogueCa = makeCa('rogue-ca', 'rogue-ca')
  const rogueClient = makeLeaf('rogue-client', subjectCN, 'rogue-ca', 'client')

  cached = {
    dir,
    ca,
    server,
    client: { ...client, subjectCN, encryptedKey: readFileSync(file('client.enc.key'), 'utf8'), encryptedKeyFile: file('client.enc.key'), passphrase },
    rogueCa,
    rogueClient
  }
  return cached
}
