// Prints the SHA-256 of the dashboard's sources: every file of src/ and
// index.html, package.json, package-lock.json, tsconfig.json,
// vite.config.js, in byte order of their paths, each as
// path NUL content NUL. build.sh stores it in dist/.source-sha256; a Go test
// (api/internal/web) computes the same and fails when the committed bundle
// is stale.
import { createHash } from 'node:crypto';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = dirname(fileURLToPath(import.meta.url));
const files = ['index.html', 'package.json', 'package-lock.json', 'tsconfig.json', 'vite.config.js'];
const walk = (dir) => {
  for (const name of readdirSync(join(root, dir))) {
    const p = `${dir}/${name}`;
    if (statSync(join(root, p)).isDirectory()) walk(p);
    else files.push(p);
  }
};
walk('src');
files.sort((a, b) => (Buffer.from(a) < Buffer.from(b) ? -1 : Buffer.from(a) > Buffer.from(b) ? 1 : 0));
const h = createHash('sha256');
for (const f of files) {
  h.update(f);
  h.update('\0');
  h.update(readFileSync(join(root, f)));
  h.update('\0');
}
console.log(h.digest('hex'));
