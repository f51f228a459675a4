/**
 * Weekly schedules in a time zone (Europe/Paris by default): "school hours" windows.
 *
 * Local time comes from Intl. formatToParts allocates, so the zone's UTC offset is computed
 * once per UTC hour and cached (time-zone transitions happen on UTC hour boundaries in every
 * zone France uses); the per-request path is integer arithmetic.
 */
export const DAYS = ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'] as const;
export type Day = (typeof DAYS)[number];

export interface Window {
  days: Day[];
  /** "HH:MM", 00:00 to 24:00; from < to */
  from: string;
  to: string;
}

const MIN_PER_DAY = 1440;

export class LocalClock {
  private readonly fmt: Intl.DateTimeFormat;
  private cachedHour = Number.NaN;
  private cachedOffsetMs = 0;

  /** Throws RangeError on an unknown time zone. */
  constructor(readonly timeZone: string) {
    this.fmt = new Intl.DateTimeFormat('en-GB', {
      timeZone,
      hourCycle: 'h23',
      year: 'numeric',
      month: 'numeric',
      day: 'numeric',
      hour: 'numeric',
      minute: 'numeric',
    });
  }

  private offsetMs(ms: number): number {
    const hour = Math.floor(ms / 3_600_000);
    if (hour === this.cachedHour) return this.cachedOffsetMs;
    const at = hour * 3_600_000;
    const p: Record<string, number> = {};
    for (const part of this.fmt.formatToParts(at)) if (part.type !== 'literal') p[part.type] = Number(part.value);
    const local = Date.UTC(p['year']!, p['month']! - 1, p['day']!, p['hour']!, p['minute']!);
    this.cachedHour = hour;
    this.cachedOffsetMs = local - at;
    return this.cachedOffsetMs;
  }

  /** Minutes since Monday 00:00 local time (0 .. 10079). */
  minuteOfWeek(ms: number): number {
    const local = ms + this.offsetMs(ms);
    const days = Math.floor(local / 86_400_000);
    const dow = (((days + 3) % 7) + 7) % 7; // 1970-01-01 was a Thursday: Monday = 0
    const minute = Math.floor((local - days * 86_400_000) / 60_000);
    return dow * MIN_PER_DAY + minute;
  }
}

/** Parses "HH:MM" to minutes; null when invalid. */
export function parseClock(t: string): number | null {
  const m = /^(\d{2}):(\d{2})$/.exec(t);
  if (!m) return null;
  const h = Number(m[1]);
  const mi = Number(m[2]);
  if (mi > 59 || h > 24 || (h === 24 && mi !== 0)) return null;
  return h * 60 + mi;
}

/** A schedule as flat [start, end) minute-of-week ranges. */
export class Schedule {
  private readonly ranges: Int32Array;

  constructor(readonly name: string, readonly clock: LocalClock, windows: Window[]) {
    const r: number[] = [];
    for (const w of windows) {
      const from = parseClock(w.from)!;
      const to = parseClock(w.to)!;
      for (const d of w.days) {
        const base = DAYS.indexOf(d) * MIN_PER_DAY;
        r.push(base + from, base + to);
      }
    }
    this.ranges = Int32Array.from(r);
  }

  contains(ms: number): boolean {
    const m = this.clock.minuteOfWeek(ms);
    const r = this.ranges;
    for (let i = 0; i < r.length; i += 2) if (m >= r[i]! && m < r[i + 1]!) return true;
    return false;
  }
}
