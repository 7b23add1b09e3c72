// The part of autocannon's programmatic API the benchmark uses (the package ships no types, and
// @types/autocannon lags behind autocannon 8/9).
declare module 'autocannon' {
  export interface Options {
    url: string
    connections?: number
    pipelining?: number
    /** Seconds. */
    duration?: number
    /** Stop after this many requests (instead of a duration). */
    amount?: number
    headers?: Record<string, string>
    /** Seconds before a request counts as timed out (10). */
    timeout?: number
    /** Requests per second over all connections (a fixed rate instead of as fast as possible). */
    overallRate?: number
  }

  /** Percentiles as autocannon reports them (hdr-histogram-percentiles-obj). */
  export interface Histogram {
    average: number
    mean: number
    stddev: number
    min: number
    max: number
    total: number
    p50: number
    p90: number
    p97_5: number
    p99: number
  }

  export interface Result {
    duration: number
    errors: number
    timeouts: number
    non2xx: number
    '2xx': number
    /** Milliseconds. */
    latency: Histogram
    /** Requests per second (per-second samples). */
    requests: Histogram & { sent: number }
    /** Bytes per second. */
    throughput: Histogram
  }

  export interface Instance extends PromiseLike<Result> {
    stop: () => void
  }

  export default function autocannon (opts: Options): Instance
}
