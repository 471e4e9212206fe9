/**
 * Every stable code the agent emits: in AgentError, in decisions, in logs, in MQTT results and in
 * the audit log. Codes are part of the public contract: add new ones, never rename or reuse.
 */
export const CODES = {
  // ── access decisions (denials) ─────────────────────────────────────────────
  unknown_credential: 'no grant in the keyring matches the presented credential',
  revoked: 'the credential was revoked',
  not_yet_valid: 'the credential is not valid before its notBefore time',
  expired: 'the credential expired (notAfter passed)',
  bad_proof: 'the cryptographic proof did not verify',
  replay: 'the answer was replayed from an earlier exchange',
  rate_limited:
    'refused by a rate limit: this credential is locked out after failed proofs, or UID-only grants are throttled after unknown cards',
  clone_suspected: 'the signature counter did not rise: the credential may be cloned',
  timeout: 'the answer came after the deadline',
  role_not_allowed: 'the credential role does not allow this action',
  intent_required: 'no explicit user intent and passive unlock is not enabled for this key',
  insecure_uid_disabled: 'UID-only credential not marked insecureUid',
  wrong_vehicle: 'the message names another vehicle',
  card_removed: 'the card left the field during the exchange',
  malformed: 'the presented frame or message is malformed',
  unsupported: 'the credential or card type is not supported',
  credential_suspect:
    'what the vehicle stored about this credential (a keyring operation or its signature counter) is damaged in every copy; it is denied until `vehicle-agent state repair`',
  user_verification_required:
    'the passkey did not verify its user (no fingerprint, face or PIN: the UV flag is clear); the vehicle needs it',
  origin_not_allowed:
    'the passkey was used from a web page whose origin the vehicle does not accept (ble.phoneApp.origins)',
  challenge_expired:
    'the answer came after the deadline counted from the challenge read; read a new challenge',
  no_challenge:
    'no challenge of this connection matches the answer: read the challenge first (each read replaces the last)',
  enrollment_pending: 'the enrollment request waits for an owner to approve it',
  // ── configuration and state ────────────────────────────────────────────────
  config_invalid: 'the configuration is invalid',
  config_unreadable: 'the configuration file cannot be read or parsed',
  not_provisioned: 'the state directory holds no provisioned vehicle (run `vehicle-agent init`)',
  already_provisioned: 'the state directory is already provisioned',
  state_corrupt: 'a state file is corrupt',
  state_io: 'a state file could not be read or written',
  state_repaired: 'a damaged state file was rebuilt from its other copy',
  key_invalid: 'a key file or key encoding is invalid',
  backup_invalid:
    'the file is not a backup this agent can read: not a backup, an unsupported format or parameters, or content that does not check out',
  backup_truncated: 'the backup file is cut short',
  backup_auth_failed:
    'the backup does not open: wrong passphrase, or the file was changed after it was written',
  restore_conflict:
    'the state directory holds another vehicle, or state without an identity, that a restore would overwrite (--force moves it aside)',
  import_invalid: 'a row or operation of an import file is invalid; nothing was imported',
  // ── keyring operations ─────────────────────────────────────────────────────
  op_malformed: 'a keyring operation is malformed',
  op_bad_signature: 'a keyring operation signature did not verify',
  op_unknown_signer: 'a keyring operation is signed by a key the keyring does not know',
  op_signer_not_allowed: 'the signer role may not perform this keyring operation',
  op_wrong_vehicle: 'a keyring operation names another vehicle',
  op_root_irrevocable: 'the pinned owner root key cannot be revoked',
  enrollment_closed: 'no enrollment request is open at the vehicle (none was opened, or it expired)',
  already_enrolled: 'the card or key is already in the keyring (a revoked one cannot be enrolled again)',
  // ── signed commands (cloud and local) ──────────────────────────────────────
  jws_malformed: 'the JWS could not be parsed',
  unknown_kid: 'the JWS key id names no key in the keyring',
  revoked_kid: 'the JWS key id names a revoked key',
  bad_signature: 'the JWS signature did not verify',
  command_expired: 'the command exp has passed',
  lifetime_too_long: 'the command exp - iat exceeds the allowed lifetime',
  counter_replay: 'the command counter is not above the last one accepted for this key',
  retained_command: 'commands must not arrive as retained messages',
  unknown_command: 'the command is not known',
  bad_arguments: 'the command arguments are invalid',
  command_not_yet_valid: 'the command iat is further ahead of the vehicle clock than allowed',
  // ── cloud link (MQTT) ──────────────────────────────────────────────────────
  broker_unavailable: 'the MQTT broker could not be reached or refused the connection',
  result_timeout: 'no command result arrived in time',
  message_too_large: 'an MQTT message exceeds the size limit of its topic (cloud.intake)',
  cloud_budget_exceeded:
    'an MQTT message arrived beyond its topic budget (messages or bytes per second, cloud.intake) and was dropped',
  keyring_chunk_mismatch:
    'a part of a chunked keyring set does not agree with its topic or its own manifest (part, parts, counts)',
  keyring_set_inconsistent:
    'the parts of a chunked keyring set do not add up to the set digest and count their signed manifests name',
  // ── local control socket ───────────────────────────────────────────────────
  control_bad_request: 'the control socket request is not valid',
  control_unavailable: 'the agent control socket is not reachable (is the agent running?)',
  unauthorized: 'the request lacks the required authorisation',
  // ── local status page (HTTP) ───────────────────────────────────────────────
  not_found: 'no such resource',
  method_not_allowed: 'the resource does not support this method',
  request_too_large: 'the request body or headers exceed the size limit',
  unavailable: 'the agent is starting or stopping; try again shortly',
  host_not_allowed: 'the request names a host this server does not answer for (DNS rebinding?)',
  request_timeout: 'the request did not arrive whole in time',
  // ── hardware ───────────────────────────────────────────────────────────────
  relay_failed: 'a relay could not be switched',
  relay_watchdog: 'a relay was held past its maximum on-time and was released',
  relay_guard_released:
    'the relay guard released a relay by itself: the agent had not released it in time (its loop stalled, stopped or late), or the guard was signalled',
  relay_guard_lost:
    'the relay guard process exited or stopped answering: its relays were released and it is being restarted',
  reader_error: 'a reader failed',
  reader_timeout: 'a reader did not answer in time',
  frame_checksum: 'a frame failed its checksum',
  frame_too_large: 'a frame exceeds the maximum size',
  adapter_missing:
    'the Bluetooth adapter is not there: BlueZ lists no such adapter, or bluetoothd is not on the bus',
  adapter_off: 'the Bluetooth adapter is powered off (rfkill, or switched off)',
  bluez_refused: 'BlueZ refused to register the GATT application or the LE advertisement',
  // ── audit ──────────────────────────────────────────────────────────────────
  audit_chain_broken: 'the audit hash chain is broken',
  audit_event_rejected: 'an audit event was refused (a forbidden or reserved field, or not JSON-safe)',
  audit_retention_exceeded:
    'audit records the cloud outbox had not sent were deleted: keeping them would pass the disk budget (audit.maxFiles)',
  record_too_large: 'a record exceeds the maximum size of its journal or log',
  // ── scenario runner (vehicle-agent scenario run, docs/scenarios.md) ────────
  scenario_invalid:
    'the scenario file is not valid: unreadable, not YAML, or a field or step the format does not allow',
  sim_required: 'the step needs the simulated hardware, and the agent is not running in sim mode',
  // ── generic ────────────────────────────────────────────────────────────────
  busy: 'the resource is busy',
  internal: 'an internal error',
} as const;

export type Code = keyof typeof CODES;

export function isCode(value: unknown): value is Code {
  return typeof value === 'string' && Object.hasOwn(CODES, value);
}

/** The denial reasons a decision can carry. */
export type DenialCode = Extract<
  Code,
  | 'unknown_credential'
  | 'revoked'
  | 'not_yet_valid'
  | 'expired'
  | 'bad_proof'
  | 'replay'
  | 'rate_limited'
  | 'clone_suspected'
  | 'timeout'
  | 'role_not_allowed'
  | 'intent_required'
  | 'insecure_uid_disabled'
  | 'wrong_vehicle'
  | 'card_removed'
  | 'malformed'
  | 'frame_too_large'
  | 'unsupported'
  | 'credential_suspect'
  | 'reader_error'
  | 'state_io'
>;
