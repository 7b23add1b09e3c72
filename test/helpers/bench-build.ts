// The compiled benchmark for the smoke tests. `npm test` compiles it before any test runs
// (pretest): compiling here, while other test files run the built service from dist/, would
// rewrite files under them. A test file run on its own compiles it when it is missing.
import { execFileSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

export const ROOT = fileURLToPath(new URL('../..', import.meta.url))

/** The path of a compiled benchmark entry point (`run.js`, `scale.js`…), compiled if missing. */
export function benchEntry (name: string): string {
  const entry = join(ROOT, 'dist', 'bench', name)
  if (!existsSync(entry)) execFileSync('npx', ['tsc', '-p', 'tsconfig.bench.json'], { cwd: ROOT, stdio: 'inherit' })
  return entry
}
