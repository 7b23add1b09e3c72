// The documents stay whole: every relative link of README.md, docs/*.md and the folder READMEs
// points at a file of the repository (and at a heading of it, for #anchors), none leaves the
// repository, none refers to files that only exist outside it, and the README stays short.
import t from 'tap'
import { existsSync, statSync } from 'node:fs'
import { dirname, isAbsolute, join, relative, resolve } from 'node:path'
import { ROOT, anchors, documents, links, prose, read, slug } from './markdown.js'

const README_MAX_BYTES = 12_288
const EXTERNAL = /^(?:https?:|mailto:)/i

/** Why a link of `doc` is broken, or undefined when it is fine. */
function problem (doc: string, target: string): string | undefined {
  if (EXTERNAL.test(target)) return undefined
  if (/^[a-z][a-z0-9+.-]*:/i.test(target)) return 'a scheme other than http(s) or mailto'
  const hash = target.indexOf('#')
  const pathPart = hash < 0 ? target : target.slice(0, hash)
  const anchor = hash < 0 ? undefined : decodeURIComponent(target.slice(hash + 1))
  let file = doc
  if (pathPart !== '') {
    const decoded = decodeURIComponent(pathPart.split('?')[0])
    // GitHub resolves /path from the repository root.
    const abs = decoded.startsWith('/') ? resolve(ROOT, `.${decoded}`) : resolve(ROOT, dirname(doc), decoded)
    const rel = relative(ROOT, abs)
    if (rel.startsWith('..') || isAbsolute(rel)) return 'leaves the repository'
    if (!existsSync(abs)) return 'no such file'
    file = rel
  }
  if (anchor === undefined || anchor === '') return undefined
  if (!file.endsWith('.md') || statSync(join(ROOT, file)).isDirectory()) return undefined
  return anchors(read(file)).has(anchor) ? undefined : `no heading #${anchor} in ${file}`
}

t.test('the documents checked', async t => {
  const docs = documents()
  for (const required of ['README.md', 'docs/api.md', 'docs/configuration.md', 'docs/operations.md', 'docs/architecture.md']) {
    t.ok(docs.includes(required), `${required} is checked`)
  }
})

t.test('README.md is at most 12 KB', async t => {
  const size = Buffer.byteLength(read('README.md'))
  t.ok(size <= README_MAX_BYTES, `README.md is ${size} bytes (at most ${README_MAX_BYTES})`)
})

for (const doc of documents()) {
  t.test(`${doc}: links`, async t => {
    const found = links(read(doc))
    if (doc === 'README.md') t.ok(found.length > 5, 'links are found at all')
    const broken = found
      .map(l => ({ ...l, why: problem(doc, l.target) }))
      .filter(l => l.why !== undefined)
      .map(l => `${doc}:${l.line} ${l.target}: ${l.why ?? ''}`)
    t.same(broken, [], 'every relative link resolves inside the repository')
  })

  t.test(`${doc}: no reference to files outside the repository`, async t => {
    const text = read(doc)
    for (const outside of ['../shared', 'SPEC.md', 'cybersource-oauth.md', 'SPEC §']) {
      t.notOk(text.includes(outside), `does not mention ${outside}`)
    }
  })
}

t.test('the checker itself', async t => {
  t.equal(slug('`GET /oauth/callback`'), 'get-oauthcallback')
  t.equal(slug('Where things live'), 'where-things-live')
  t.equal(slug('Secrets from files'), 'secrets-from-files')
  t.equal(slug('`npm run dev`'), 'npm-run-dev')
  t.equal(slug('Keys and callers: [more](x.md)'), 'keys-and-callers-more')
  t.same([...anchors('# A\n## A\n```sh\n# not a heading\n```\n### B b\n')], ['a', 'a-1', 'b-b'])
  t.same(links('[x](a.md) `[y](b.md)` ![i](c.png "t")\n```\n[z](d.md)\n```\n[ref]: e.md\n<a href="f.md">f</a>').map(l => l.target),
    ['a.md', 'c.png', 'e.md', 'f.md'])
  t.notOk(prose('```\nsecret\n```').includes('secret'))
  t.equal(problem('README.md', '../shared/SPEC.md'), 'leaves the repository')
  t.equal(problem('docs/api.md', '../../outside.md'), 'leaves the repository')
  t.equal(problem('docs/api.md', '/etc/passwd'), 'no such file')
  t.equal(problem('README.md', 'docs/no-such-file.md'), 'no such file')
  t.equal(problem('README.md', '#no-such-heading'), 'no heading #no-such-heading in README.md')
  t.equal(problem('README.md', 'javascript:alert(1)'), 'a scheme other than http(s) or mailto')
  t.equal(problem('README.md', 'https://example.com/x'), undefined)
  t.equal(problem('README.md', 'LICENSE'), undefined)
  t.equal(problem('docs/api.md', '../README.md#known-limitations'), undefined)
})
