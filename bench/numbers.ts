// Medians, and numbers as the report and the progress lines write them.

export const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b)
  const m = Math.floor(s.length / 2)
  return s.length === 0 ? NaN : s.length % 2 === 1 ? s[m] : (s[m - 1] + s[m]) / 2
}

export const num = (n: number, digits = 0): string => Number.isNaN(n) ? 'n/a' : n.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits })

/** Instructions of one window per request. */
export const perRequest = (instructions: number, requests: number): string => num(instructions / requests)
