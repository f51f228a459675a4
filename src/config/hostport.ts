/** "HOST:PORT", "[IPv6]:PORT" listener and authority parsing. */
import * as net from 'node:net';

export interface HostPort {
  host: string;
  port: number;
}

export function parseHostPort(text: string): HostPort {
  let host: string;
  let portText: string;
  if (text.startsWith('[')) {
    const end = text.indexOf(']');
    if (end < 0 || text[end + 1] !== ':') throw new Error(`"${text}" is not [IPv6]:PORT`);
    host = text.slice(1, end);
    portText = text.slice(end + 2);
    if (!net.isIPv6(host)) throw new Error(`"${host}" in "${text}" is not an IPv6 address`);
  } else {
    const colon = text.lastIndexOf(':');
    if (colon <= 0) throw new Error(`"${text}" is not HOST:PORT (write IPv6 as [::1]:3128)`);
    host = text.slice(0, colon);
    portText = text.slice(colon + 1);
    if (host.includes(':')) throw new Error(`"${text}": write IPv6 addresses in brackets, as [::1]:3128`);
  }
  if (!/^\d{1,5}$/.test(portText) || Number(portText) > 65535) throw new Error(`"${text}" has a bad port (0 to 65535)`);
  return { host, port: Number(portText) };
}

export function formatHostPort(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}
