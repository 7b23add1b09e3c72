// The output of the operator commands (npm run rotate-keys, npm run recount): progress and
// problems on stderr prefixed with the command's name, results on stdout, and a usage error
// that prints the usage and exits with status 1.
export interface CliOutput {
  err: (line: string) => void
  out: (line?: string) => void
  usageError: (line: string) => never
}

export function cliOutput (name: string, usage: string): CliOutput {
  const err = (line: string): void => { process.stderr.write(`${name}: ${line}\n`) }
  return {
    err,
    out: (line = '') => { process.stdout.write(`${line}\n`) },
    usageError: (line) => {
      err(line)
      process.stderr.write(`${usage}\n`)
      process.exit(1)
    }
  }
}
