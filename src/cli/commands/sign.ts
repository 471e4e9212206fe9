import { AgentError } from '../../core/errors.js';
import { out, parse } from '../args.js';
import {
  buildCommand,
  buildGrant,
  buildKeyringSet,
  buildRevoke,
  COMMAND_OPTIONS,
  commandName,
  GRANT_OPTIONS,
  readOpsFiles,
} from './signing.js';

export const SIGN_HELP = `vehicle-agent sign command CMD --key KEY.pem --vehicle VID [--args JSON] [--ops FILE]...
                             [--ttl SECONDS] [--counter N] [--jti ID] [--json]
vehicle-agent sign grant --key OWNER.pem --vehicle VID --kind phone|signer --public KEY.pub.pem --role ROLE
                         [--name TEXT] [--not-before TIME] [--not-after TIME] [--passive]
vehicle-agent sign grant --key OWNER.pem --vehicle VID --kind uid --uid HEX --role ROLE --insecure-uid [...]
vehicle-agent sign grant --key OWNER.pem --vehicle VID --kind passkey --public KEY.pub.pem
                         --credential-id B64URL --rp-id HOST --role ROLE [...]
vehicle-agent sign revoke --key KEY.pem --vehicle VID --id CREDENTIAL_ID [--reason TEXT]
vehicle-agent sign keyring --key KEY.pem --vehicle VID --ops FILE...

Prints what the cloud sends to a vehicle, signed with --key, for use with mosquitto_pub
(docs/mqtt.md). CMD is unlock, lock, keys.grant, keys.revoke, keys.list or state.refresh;
keys.grant and keys.revoke carry the signed operations read from --ops files (one JWS per line,
as printed by sign grant / sign revoke). --ttl is the command lifetime (default 30 s); --counter
defaults to the current time in milliseconds (it must rise with every command from one key).
sign keyring prints the message for the retained <base>/keyring topic.`;

export async function sign(argv: readonly string[]): Promise<number> {
  const [sub, ...rest] = argv;
  switch (sub) {
    case 'command': {
      const { values, positionals } = parse(rest, { ...COMMAND_OPTIONS, json: { type: 'boolean' } });
      const built = buildCommand(commandName(positionals[0]), values);
      out(
        values.json ? JSON.stringify({ jws: built.jws, kid: built.kid, payload: built.payload }) : built.jws,
      );
      return 0;
    }
    case 'grant': {
      const { values } = parse(rest, GRANT_OPTIONS, false);
      out(buildGrant(values));
      return 0;
    }
    case 'revoke': {
      const { values } = parse(
        rest,
        {
          key: { type: 'string', short: 'k' },
          vehicle: { type: 'string' },
          id: { type: 'string' },
          reason: { type: 'string' },
        },
        false,
      );
      out(buildRevoke(values));
      return 0;
    }
    case 'keyring': {
      const { values } = parse(
        rest,
        {
          key: { type: 'string', short: 'k' },
          vehicle: { type: 'string' },
          ops: { type: 'string', multiple: true },
        },
        false,
      );
      out(buildKeyringSet(values, readOpsFiles(values.ops ?? [])));
      return 0;
    }
    default:
      throw new AgentError('bad_arguments', `sign needs command, grant, revoke or keyring\n\n${SIGN_HELP}`);
  }
}
