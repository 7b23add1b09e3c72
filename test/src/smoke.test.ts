import t from 'tap'
import { decodeJwtPayload } from '../../src/cybersource/jwt.js'
t.equal(decodeJwtPayload('a.' + Buffer.from('{"a":1}').toString('base64url') + '.c')?.a, 1)
