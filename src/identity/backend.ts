/** What an account source (htpasswd file, LDAP directory) answers for one login attempt. */
export type LoginResult =
  | { kind: 'ok'; groups: string[] }
  | { kind: 'unknown-user' }
  | { kind: 'bad-password' }
  /** the source could not answer (directory down, timeout): neither yes nor no */
  | { kind: 'unavailable'; detail: string };

export interface Backend {
  readonly name: string;
  login(user: string, password: string): Promise<LoginResult>;
}
