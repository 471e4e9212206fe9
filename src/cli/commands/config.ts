import { renderExampleConfig } from '../../config/example.js';
import { CONFIG_SCHEMA } from '../../config/schema.js';
import { maskSecrets } from '../../config/validate.js';
import { AgentError } from '../../core/errors.js';
import { COMMON_OPTIONS, loadFor, out, parse } from '../args.js';

export const CONFIG_HELP = `vehicle-agent config example   print the documented example config (every option at its default)
vehicle-agent config check [FILE | --config FILE]   validate a config (and environment overrides) and print the result
                                             (secrets such as the admin token are masked)`;

export async function config(argv: readonly string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === 'example') {
    process.stdout.write(renderExampleConfig());
    return 0;
  }
  if (sub === 'check') {
    const { values, positionals } = parse(rest, COMMON_OPTIONS);
    // `config check FILE` and `config check --config FILE` say the same; both at once must agree.
    if (positionals.length > 1)
      throw new AgentError('bad_arguments', `config check takes one file\n\n${CONFIG_HELP}`);
    const [file] = positionals;
    if (file !== undefined && values.config !== undefined && file !== values.config)
      throw new AgentError(
        'bad_arguments',
        `config check was given two files: ${file} and --config ${values.config}`,
      );
    const loaded = loadFor({ ...values, config: file ?? values.config });
    out(
      JSON.stringify(
        {
          file: loaded.file ?? null,
          stateDir: loaded.stateDir,
          socketPath: loaded.socketPath,
          // Secrets (the admin token) are masked: this output ends up in terminals and tickets.
          config: maskSecrets(CONFIG_SCHEMA, loaded.config as unknown as Record<string, unknown>),
        },
        null,
        2,
      ),
    );
    return 0;
  }
  throw new AgentError('bad_arguments', `config needs example or check\n\n${CONFIG_HELP}`);
}
