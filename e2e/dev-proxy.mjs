// Serves assets/dashboard/ from disk at / and /assets/<file>, and forwards every other request
// (API, SSE, downloads) to a modelpress server. Used by the e2e suite when the server build does
// not embed the dashboard, and handy when editing the dashboard without rebuilding the server:
//
//   node e2e/dev-proxy.mjs http://127.0.0.1:8080 [port]

import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ASSETS = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../assets/dashboard');
const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.txt': 'text/plain; charset=utf-8',
};

export function startProxy(upstream, port = 0) {
  const up = new URL(upstream);
  const server = http.createServer((req, res) => {
    const u = new URL(req.url, 'http://proxy');
    let file = null;
    if (u.pathname === '/' || u.pathname === '/index.html') file = 'index.html';
    else if (u.pathname.startsWith('/assets/')) file = path.basename(u.pathname);
    if (file) {
      const p = path.join(ASSETS, file);
      if (!fs.existsSync(p)) { res.writeHead(404); res.end(); return; }
      res.writeHead(200, { 'content-type': TYPES[path.extname(p)] || 'application/octet-stream', 'cache-control': 'no-store' });
      fs.createReadStream(p).pipe(res);
      return;
    }
    const preq = http.request({ host: up.hostname, port: up.port, method: req.method, path: req.url, headers: req.headers }, (pres) => {
      res.writeHead(pres.statusCode, pres.headers);
      pres.pipe(res);
    });
    preq.on('error', (e) => { res.writeHead(502); res.end(String(e)); });
    req.pipe(preq);
  });
  return new Promise((resolve) => server.listen(port, '127.0.0.1', () => resolve(server)));
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const upstream = process.argv[2];
  if (!upstream) { console.error('usage: node e2e/dev-proxy.mjs http://127.0.0.1:8080 [port]'); process.exit(2); }
  const server = await startProxy(upstream, Number(process.argv[3] || 0));
  console.log(`dashboard at http://127.0.0.1:${server.address().port}/ (API from ${upstream})`);
}
