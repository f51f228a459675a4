/**
 * One small base class with stable codes (after undici's lib/core/errors.js).
 * Messages are lower-case, name the action and the bad input.
 * Scripts and tests match on `code`, never on the message text.
 */
export class GardefouError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = 'GardefouError';
  }
}

/** Invalid configuration: the message names the key and the bad value. */
export class ConfigError extends GardefouError {
  constructor(message: string) {
    super('GARDEFOU_CONFIG', message);
    this.name = 'ConfigError';
  }
}

/** Bad input given on the command line or in a file (not the config). */
export class InputError extends GardefouError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('GARDEFOU_INPUT', message, options);
    this.name = 'InputError';
  }
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
