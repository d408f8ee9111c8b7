// Builds the chat page into src/martlet_molt/web/static/ (committed, so serving never needs
// Node): app.js (bundled with marked and DOMPurify), app.css, index.html (with content
// hashes in the asset URLs). Run with `npm ci && npm run build` in this folder.
import { createHash } from 'node:crypto';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import * as esbuild from 'esbuild';

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, '..', 'src', 'martlet_molt', 'web', 'static');

const common = {
  bundle: true,
  minify: true,
  write: false,
  legalComments: 'eof',
  logLevel: 'warning',
};

const [js, css] = await Promise.all([
  esbuild.build({
    ...common,
    entryPoints: [join(here, 'src', 'app.js')],
    format: 'esm',
    target: ['es2022'],
  }),
  esbuild.build({
    ...common,
    entryPoints: [join(here, 'src', 'app.css')],
    target: ['chrome100', 'firefox100', 'safari15'],
  }),
]);

const jsText = js.outputFiles[0].text;
const cssText = css.outputFiles[0].text;
const hash = (text) => createHash('sha256').update(text).digest('hex').slice(0, 12);
const html = (await readFile(join(here, 'src', 'index.html'), 'utf8'))
  .replace('__JS_HASH__', hash(jsText))
  .replace('__CSS_HASH__', hash(cssText));

await rm(out, { recursive: true, force: true });
await mkdir(out, { recursive: true });
await Promise.all([
  writeFile(join(out, 'app.js'), jsText),
  writeFile(join(out, 'app.css'), cssText),
  writeFile(join(out, 'index.html'), html),
]);
console.log(`built ${out}: app.js ${jsText.length} B, app.css ${cssText.length} B`);
