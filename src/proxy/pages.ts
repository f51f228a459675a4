/**
 * Pages the proxy answers itself: the block page (template in rules/, customisable by the
 * school) and short explanatory pages for refusals. All values are HTML-escaped; no page ever
 * echoes the path or query of the request.
 */
import * as fs from 'node:fs';
import type { Decision } from '../policy/types';
import { InputError } from '../errors';

const ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
export function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ESCAPES[c] ?? c);
}

// built on first use: a formatter with a time zone loads ICU data (~10-20 ms of every start)
let parisTime: Intl.DateTimeFormat | null = null;

/** "lundi 30 novembre 2026 à 09:12:03 (Europe/Paris) – 2026-11-30T08:12:03.000Z" */
export function formatPageTime(ms: number): string {
  parisTime ??= new Intl.DateTimeFormat('fr-FR', { timeZone: 'Europe/Paris', dateStyle: 'full', timeStyle: 'medium' });
  return `${parisTime.format(ms)} (Europe/Paris) – ${new Date(ms).toISOString()}`;
}

export interface BlockPageValues {
  host: string;
  decision: Decision;
  ref: string;
  atMs: number;
  /** the authenticated user, when the client logged in (proxy authentication) */
  user?: string | null | undefined;
}

export class BlockPage {
  private readonly parts: Array<string | keyof typeof FIELDS>;

  constructor(template: string) {
    this.parts = [];
    const re = /\{\{(\w+)\}\}/g;
    let last = 0;
    for (let m = re.exec(template); m !== null; m = re.exec(template)) {
      const name = m[1] ?? '';
      if (!(name in FIELDS)) throw new InputError(`block page template: unknown placeholder {{${name}}} (known: ${Object.keys(FIELDS).join(', ')})`);
      this.parts.push(template.slice(last, m.index), name as keyof typeof FIELDS);
      last = m.index + m[0].length;
    }
    this.parts.push(template.slice(last));
  }

  static fromFile(file: string): BlockPage {
    let text: string;
    try {
      text = fs.readFileSync(file, 'utf8');
    } catch (err) {
      throw new InputError(`reading block page template ${file}: ${(err as Error).message}`);
    }
    return new BlockPage(text);
  }

  render(v: BlockPageValues): string {
    let out = '';
    for (let i = 0; i < this.parts.length; i++) {
      const p = this.parts[i] as string;
      // even indexes are literal text, odd ones placeholder names
      out += i % 2 === 0 ? p : escapeHtml(FIELDS[p as keyof typeof FIELDS](v));
    }
    return out;
  }
}

const FIELDS = {
  host: (v: BlockPageValues) => v.host,
  category: (v: BlockPageValues) => v.decision.category ?? '',
  categoryFr: (v: BlockPageValues) => categoryLabel(v.decision, 'fr'),
  categoryEn: (v: BlockPageValues) => categoryLabel(v.decision, 'en'),
  profile: (v: BlockPageValues) => v.decision.profile,
  reason: (v: BlockPageValues) => v.decision.reason,
  time: (v: BlockPageValues) => formatPageTime(v.atMs),
  ref: (v: BlockPageValues) => v.ref,
  user: (v: BlockPageValues) => v.user ?? '—',
};

function categoryLabel(d: Decision, lang: 'fr' | 'en'): string {
  const name = lang === 'fr' ? d.categoryFr : d.categoryEn;
  if (d.category === null) return lang === 'fr' ? reasonFr(d.reason) : reasonEn(d.reason);
  return name ? `${name} (${d.category})` : d.category;
}

function reasonFr(reason: string): string {
  switch (reason) {
    case 'not-whitelisted': return "site hors de la liste autorisée pour ce profil";
    case 'local-deny': return "bloqué par l'établissement";
    case 'schedule': return 'en dehors des horaires autorisés';
    case 'bad-host': return 'adresse de site invalide';
    case 'ip-literal': return 'adresse IP au lieu d’un nom de site (ce profil n’accepte que les noms)';
    default: return reason;
  }
}
function reasonEn(reason: string): string {
  switch (reason) {
    case 'not-whitelisted': return 'not on the allowed list for this profile';
    case 'local-deny': return 'blocked by the school';
    case 'schedule': return 'outside allowed hours';
    case 'bad-host': return 'invalid site address';
    case 'ip-literal': return 'an IP address instead of a site name (this profile takes names only)';
    default: return reason;
  }
}

/** A short page for refusals that are not policy blocks (status, French + English text). */
export function infoPage(title: string, fr: string, en: string, ref: string | null): string {
  const refLine = ref ? `<p>Référence / reference: <code>${escapeHtml(ref)}</code></p>` : '';
  return `<!doctype html><html lang="fr"><head><meta charset="utf-8"><title>${escapeHtml(title)}</title></head>` +
    `<body style="font-family:system-ui,sans-serif;max-width:40rem;margin:3rem auto"><h1>${escapeHtml(title)}</h1>` +
    `<p>${fr}</p><p lang="en" style="color:#555">${en}</p>${refLine}</body></html>\n`;
}

/** The page for origin-form requests: someone talked to the proxy as if it were a web server. */
export function usagePage(proxyAddress: string): string {
  const a = escapeHtml(proxyAddress);
  return infoPage(
    'gardefou : ceci est un proxy',
    `Ce serveur est le proxy filtrant de l'établissement, pas un site web. Configurez votre navigateur pour utiliser le proxy <code>${a}</code> (HTTP et HTTPS), ou testez avec <code>curl -x http://${a} http://example.com/</code>.`,
    `This server is the school's filtering proxy, not a web site. Set your browser's HTTP and HTTPS proxy to <code>${a}</code>, or try <code>curl -x http://${a} http://example.com/</code>.`,
    null,
  );
}
