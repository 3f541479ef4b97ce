// Builds the dashboard into api/internal/web/dist, which the api embeds.
import { defineConfig } from 'vite';
import { fileURLToPath } from 'node:url';

const outDir = fileURLToPath(new URL('../internal/web/dist', import.meta.url));

export default defineConfig({
  base: '/',
  esbuild: { jsx: 'automatic' },
  build: { outDir, emptyOutDir: true, chunkSizeWarningLimit: 2000 },
  server: {
    // `npm run dev` proxies the API to a running api on 127.0.0.1:8080.
    proxy: { '/api': { target: 'http://127.0.0.1:8080', ws: true } },
  },
});
