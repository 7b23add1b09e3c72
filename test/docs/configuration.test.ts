// docs/configuration.md is checked against the one configuration schema (src/config.ts), both
// ways, so the two cannot drift apart: every variable of the schema is documented with its
// default, and no variable is documented that the schema does not have.
import t from 'tap'
import { EnvSchema, SECRET_VARIABLES } from '../../src/config.js'
import { read, section, tableRows } from './markdown.js'

const doc = read('docs/configuration.md')
const variables = section(doc, '## Variables') ?? ''
const fromFiles = section(doc, '## Secrets from files') ?? ''

const schema = EnvSchema.properties as Record<string, { default?: unknown }>
const schemaVars = Object.keys(schema)
const required = new Set<string>(EnvSchema.required ?? [])
// The secret variables, which may also be given as NAME_FILE.
const secretVars: readonly string[] = SECRET_VARIABLES

/** Variable rows of the tables: the names in the first cell, the default cell, the meaning. */
const rows = tableRows(variables)
  .map(cells => ({ names: [...(cells[0] ?? '').matchAll(/`([A-Z][A-Z0-9_]+)`/g)].map(m => m[1]), defaultCell: cells[1] ?? '', meaning: cells[2] ?? '' }))
  .filter(r => r.names.length > 0)
const documented = new Set(rows.flatMap(r => r.names))
const isFileForm = (name: string): boolean => name.endsWith('_FILE') && secretVars.includes(name.slice(0, -'_FILE'.length))

t.ok(variables.length > 0, 'docs/configuration.md has a "## Variables" section')
t.ok(documented.size > 20, `the section documents variables in tables (${documented.size})`)

t.same(schemaVars.filter(v => !documented.has(v)), [], 'every variable of the schema is documented')
t.same([...documented].filter(v => !schemaVars.includes(v) && !isFileForm(v)), [],
  'no variable is documented that the schema does not have (NAME_FILE of a secret aside)')

t.test('the default column matches the schema', async t => {
  for (const { names, defaultCell } of rows) {
    if (names.length !== 1 || !schemaVars.includes(names[0])) continue
    const name = names[0]
    const dflt = schema[name].default
    if (dflt !== undefined) t.ok(defaultCell.includes(`\`${String(dflt)}\``), `${name}: default \`${String(dflt)}\` (doc: ${defaultCell})`)
    else if (required.has(name)) t.equal(defaultCell, 'required', `${name}: required`)
    else t.not(defaultCell, 'required', `${name}: optional`)
  }
})

t.test('exactly the secret variables are marked "Secret."', async t => {
  const marked = rows.filter(r => /\bSecret\./.test(r.meaning)).flatMap(r => r.names)
  t.same([...marked].sort(), [...secretVars].sort())
})

t.test('the NAME_FILE convention lists exactly the secret variables', async t => {
  const listed = [...fromFiles.matchAll(/^- `([A-Z][A-Z0-9_]+)_FILE`/gm)].map(m => m[1])
  t.same([...listed].sort(), [...secretVars].sort(), '"Secrets from files" lists NAME_FILE for each secret, and for no other variable')
  for (const name of secretVars) t.ok(schemaVars.includes(name), `${name} is a variable of the schema`)
})
