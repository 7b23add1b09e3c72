// The README's environment reference is checked against the one configuration schema, so the
// two cannot drift apart.
import t from 'tap'
import { readFileSync } from 'node:fs'
import { EnvSchema } from '../../src/config.js'

const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8')
const section = readme.split(/^## Configuration$/m)[1]?.split(/^## /m)[0] ?? ''
const documented = new Set<string>()
for (const line of section.split('\n').filter(l => l.startsWith('| `'))) {
  const firstCell = line.split('|')[1]
  for (const m of firstCell.matchAll(/`([A-Z][A-Z0-9_]+)`/g)) documented.add(m[1])
}

t.ok(documented.size > 10, 'the README has a configuration table')
const schemaVars = Object.keys(EnvSchema.properties).filter(k => k !== 'NODE_ENV')
t.same([...schemaVars].filter(v => !documented.has(v)), [], 'every variable of the schema is documented')
t.same([...documented].filter(v => !schemaVars.includes(v)), [], 'the README documents no variable the schema does not have')
