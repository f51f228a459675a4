/**
 * Operational log: pino, JSON lines on stdout (journald keeps them under systemd).
 * Rule: never a path, a query string, a header or a body of a user's request. Log hosts,
 * ports, reference ids and reason codes only.
 */
import pino from 'pino';

export type Logger = pino.Logger;

export function createLogger(level: string, destination?: pino.DestinationStream): Logger {
  return pino(
    {
      level,
      base: { service: 'gardefou' },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    destination ?? pino.destination({ dest: 1, sync: false }),
  );
}

/** A logger that drops everything: for command-line tools that print their own output. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
