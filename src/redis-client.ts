// Builds the ioredis client from the config: standalone URL, Sentinel or Cluster, with their
// credentials and TLS, and request-path settings so a dead Redis gives fast errors instead of
// hung requests.
import { createSecureContext, rootCertificates, type ConnectionOptions } from 'node:tls'
import { Redis, Cluster, SentinelConnector, type RedisOptions } from 'ioredis'
import { StandaloneConnector } from 'ioredis/built/connectors/index.js'
import type { RedisConfig, RedisSecurity } from './config.js'

export type RedisClient = Redis | Cluster

export const REDIS_COMMAND_TIMEOUT_MS = 1000

const requestPathOptions: RedisOptions = {
  commandTimeout: REDIS_COMMAND_TIMEOUT_MS,
  connectTimeout: 2000,
  maxRetriesPerRequest: 1,
  // No offline queue: while Redis is away, commands fail at once (503) instead of piling up.
  enableOfflineQueue: false,
  retryStrategy: (times) => Math.min(50 * 2 ** times, 1000)
}

/** Gives the socket an 'error' listener of its own (see TlsStandaloneConnector). */
function absorbLateErrors<S extends NodeJS.EventEmitter> (stream: S): S {
  stream.on('error', () => {})
  return stream
}

/**
 * ioredis listens for only the first 'error' of a socket (once). A TLS socket ended during its
 * handshake (a disconnect, e.g. at shutdown, while the handshake fails) can emit a second one, the
 * server's alert, which would be an uncaught exception. ioredis still handles the first error.
 */
class TlsStandaloneConnector extends StandaloneConnector {
  override async connect (emitter: Parameters<StandaloneConnector['connect']>[0]): ReturnType<StandaloneConnector['connect']> {
    return absorbLateErrors(await super.connect(emitter))
  }
}

class TlsSentinelConnector extends SentinelConnector {
  override async connect (emitter: Parameters<SentinelConnector['connect']>[0]): ReturnType<SentinelConnector['connect']> {
    return absorbLateErrors(await super.connect(emitter))
  }
}

/**
 * Node's TLS options: the server certificate is always verified, against the system roots plus the
 * configured CA. One context for every connection: building one from the roots blocks the event loop.
 */
function tlsOptions (tls: RedisSecurity['tls']): ConnectionOptions | undefined {
  if (tls === undefined) return undefined
  return tls.ca === undefined ? {} : { secureContext: createSecureContext({ ca: [...rootCertificates, tls.ca] }) }
}

/** The data nodes' AUTH and TLS options (a key only when it applies, so ioredis keeps its defaults otherwise). */
function securityOptions (cfg: RedisConfig): RedisOptions {
  const tls = tlsOptions(cfg.tls)
  return {
    ...(cfg.username === undefined ? {} : { username: cfg.username }),
    ...(cfg.password === undefined ? {} : { password: cfg.password }),
    // ioredis types a Connector's options as unknown; it passes the client's own options.
    ...(tls === undefined ? {} : { tls, Connector: (cfg.mode === 'sentinel' ? TlsSentinelConnector : TlsStandaloneConnector) as RedisOptions['Connector'] })
  }
}

export function createRedisClient (cfg: RedisConfig, overrides: RedisOptions = {}): RedisClient {
  const options = { ...requestPathOptions, ...securityOptions(cfg), ...overrides }
  switch (cfg.mode) {
    case 'cluster':
      // Every node connection, the slot refresher and the subscriber take redisOptions.
      return new Cluster(cfg.nodes, { redisOptions: options, enableOfflineQueue: options.enableOfflineQueue, clusterRetryStrategy: options.retryStrategy })
    case 'sentinel': {
      const sentinelTLS = options.tls
      return new Redis({
        ...options,
        sentinels: cfg.sentinels,
        name: cfg.name,
        ...(cfg.sentinelUsername === undefined ? {} : { sentinelUsername: cfg.sentinelUsername }),
        ...(cfg.sentinelPassword === undefined ? {} : { sentinelPassword: cfg.sentinelPassword }),
        // ioredis ignores `tls` for the master and replicas unless enableTLSForSentinelMode; the Sentinels take sentinelTLS.
        ...(sentinelTLS === undefined ? {} : { enableTLSForSentinelMode: true, sentinelTLS })
      })
    }
    default:
      // The URL's own credentials would win over options in ioredis; the config forbids giving both.
      return new Redis(cfg.url, options)
  }
}

/**
 * What a client's 'error' event says, for the log: a Cluster's "Failed to refresh slots cache."
 * names the last node's error too (NOAUTH, WRONGPASS, a certificate code…). Redis's own error
 * messages never quote a password.
 */
export function redisErrorReason (err: Error): string {
  const own = (err as { code?: string }).code ?? err.message
  const last = (err as { lastNodeError?: Error | null }).lastNodeError
  return last == null ? own : `${own} (${redisErrorReason(last)})`
}

/** Resolves when the client is ready, or after timeoutMs (the service then starts degraded). */
export async function waitReady (client: RedisClient, timeoutMs: number): Promise<boolean> {
  if (client.status === 'ready') return true
  return await new Promise(resolve => {
    const timer = setTimeout(() => { client.off('ready', onReady); resolve(false) }, timeoutMs)
    const onReady = (): void => { clearTimeout(timer); resolve(true) }
    client.once('ready', onReady)
  })
}

/**
 * A second connection for SUBSCRIBE; it keeps an offline queue so SUBSCRIBE is replayed after a reconnect.
 * duplicate() copies every option, so the subscriber authenticates and uses TLS as the main client does.
 */
export function createSubscriber (client: RedisClient): RedisClient {
  return client instanceof Cluster
    ? client.duplicate(undefined, { enableOfflineQueue: true })
    : client.duplicate({ enableOfflineQueue: true })
}
