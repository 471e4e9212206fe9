import type { Credential } from '../core/types.js';

/** What a reader may know about a credential it found. */
export interface CredentialStatus {
  readonly credential: Credential;
  readonly revoked: boolean;
  /** Why the credential is denied as suspect (its stored state is damaged; see Keyring.markSuspect). */
  readonly suspect?: string;
}

/** Read-only keyring view for readers: key material to run their protocol against. */
export interface CredentialLookup {
  byId(id: string): CredentialStatus | undefined;
  /** Credentials of NFC kinds registered under a salted UID hash (see crypto/keys.ts uidHash). */
  byUidHash(hash: string): readonly CredentialStatus[];
}
