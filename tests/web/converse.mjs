// Runs the Converse.js web client (the full UI build from npm) in headless Chromium and has it
// log in to an XMPP server over WebSocket, send one chat message to a peer by typing it into the
// chat window, and wait until the peer's reply shows up in that window.
//
//   node converse.mjs WEBSOCKET_URL JID PASSWORD PEER_JID [SENT_BODY] [REPLY_BODY]
//
// Each argument can also come from the environment: CONVERSE_WEBSOCKET_URL, CONVERSE_JID,
// CONVERSE_PASSWORD, CONVERSE_PEER, CONVERSE_SENT_BODY, CONVERSE_REPLY_BODY. CHROMIUM_PATH
// overrides /usr/bin/chromium and CONVERSE_TIMEOUT_MS the overall limit (60 s); with
// CONVERSE_SCREENSHOT=FILE.png it saves what the page showed at the end.
//
// Progress goes to stdout, one line per step, so that a test can follow along:
//   page loaded / connected <full JID> / sent <body> / received <body>
// It exits 0 once the reply has been received. On failure or timeout it prints the reason, what
// the page showed and the browser's console (which holds every stanza, Converse logging at
// debug level) on stderr, and exits 1. With CONVERSE_CONSOLE set it prints the console on success
// too.

import { createServer } from 'node:http';
import { readFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { dirname, extname, join, normalize, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, 'node_modules', 'converse.js', 'dist');

const [argUrl, argJid, argPassword, argPeer, argSent, argReply] = process.argv.slice(2);
const websocketUrl = argUrl ?? process.env.CONVERSE_WEBSOCKET_URL;
const jid = argJid ?? process.env.CONVERSE_JID;
const password = argPassword ?? process.env.CONVERSE_PASSWORD;
const peer = argPeer ?? process.env.CONVERSE_PEER;
const sentBody = argSent ?? process.env.CONVERSE_SENT_BODY ?? 'Hello from Converse.js';
const replyBody = argReply ?? process.env.CONVERSE_REPLY_BODY ?? 'Hello back from the peer';
const chromiumPath = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const timeoutMs = Number(process.env.CONVERSE_TIMEOUT_MS ?? 60_000);

const consoleLines = [];
let browser;
let server;
let page;

let failing = false;
let done = false;

// Reports the failure and exits 1. A second failure while the first is reported, or one after
// success (the page going away as the browser closes), waits for the exit under way.
async function fail(reason) {
  if (failing || done) return new Promise(() => {});
  failing = true;
  process.stderr.write(`converse.mjs: FAILED: ${reason}\n`);
  await screenshot();
  if (page) {
    try {
      const shown = await page.evaluate(() => document.body?.innerText ?? '');
      process.stderr.write(`--- page text ---\n${shown.trim()}\n`);
    } catch {
      // The page may be gone already.
    }
  }
  process.stderr.write(`--- browser console (${consoleLines.length} lines) ---\n`);
  for (const line of consoleLines) process.stderr.write(`${line}\n`);
  await cleanup();
  process.exit(1);
}

async function screenshot() {
  const path = process.env.CONVERSE_SCREENSHOT;
  if (page && path) await page.screenshot({ path, fullPage: true }).catch(() => {});
}

async function cleanup() {
  await browser?.close().catch(() => {});
  server?.close();
}

function step(line) {
  process.stdout.write(`${line}\n`);
}

// Converse logs each stanza as ('%c%s', 'color: darkcyan' or 'color: darkgoldenrod', xml):
// the first colour is for what it sends, the second for what it receives.
function consoleLine(msg) {
  const text = msg
    .text()
    .replace(/^%c%s color: darkcyan /, 'SENT ')
    .replace(/^%c%s color: darkgoldenrod /, 'RECV ');
  return `[${msg.type()}] ${text}`;
}

// Waits until `locator` is visible, failing at once should Converse be disconnected meanwhile.
async function visible(locator, what) {
  const disconnected = page
    .waitForFunction(() => window.rookeryTest.disconnected, null, { timeout: 0, polling: 100 })
    .then(
      () => fail(`Converse was disconnected while waiting for ${what}`),
      () => new Promise(() => {}),
    );
  await Promise.race([locator.waitFor({ state: 'visible', timeout: 0 }), disconnected]);
}

if (!websocketUrl || !jid || !password || !peer) {
  process.stderr.write(
    'usage: node converse.mjs WEBSOCKET_URL JID PASSWORD PEER_JID [SENT_BODY] [REPLY_BODY]\n',
  );
  process.exit(2);
}
if (!existsSync(join(dist, 'converse.min.js'))) {
  process.stderr.write(`converse.mjs: ${dist} is missing: run \`npm ci --prefix tests/web\`\n`);
  process.exit(2);
}
if (!existsSync(chromiumPath)) {
  process.stderr.write(`converse.mjs: no Chromium at ${chromiumPath}: install Debian's chromium\n`);
  process.exit(2);
}

const overall = setTimeout(() => {
  fail(`not done within ${timeoutMs} ms`);
}, timeoutMs);

// The page: Converse's own build and a tiny plugin that exposes its API to this script.
// Converse starts logging in as soon as it is initialised (auto_login with jid and password).
const settings = {
  websocket_url: websocketUrl,
  discover_connection_methods: false,
  authentication: 'login',
  auto_login: true,
  auto_reconnect: false,
  jid,
  password,
  view_mode: 'fullscreen',
  assets_path: '/dist/',
  loglevel: 'debug',
  persistent_store: 'sessionStorage',
  play_sounds: false,
  show_desktop_notifications: false,
  allow_non_roster_messaging: true,
  whitelisted_plugins: ['rookery-test'],
};
const page_html = `<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Converse.js against rookery</title>
  <link rel="stylesheet" href="/dist/converse.min.css">
</head>
<body class="converse-fullscreen">
<script type="module">
  // Converse's build is an ES module since version 12.
  import converse from '/dist/converse.min.js';
  window.rookeryTest = { connected: null, disconnected: null, received: [] };
  converse.plugins.add('rookery-test', {
    initialize() {
      const { api } = this._converse;
      window.rookeryTest.api = api;
      api.listen.on('connected', () => {
        window.rookeryTest.connected = api.connection.get().jid;
      });
      api.listen.on('disconnected', () => {
        window.rookeryTest.disconnected = 'disconnected';
      });
      api.listen.on('message', (data) => {
        const { attrs } = data;
        if (attrs?.body) window.rookeryTest.received.push({ from: attrs.from, body: attrs.body });
      });
    },
  });
  converse.initialize(${JSON.stringify(settings).replace(/</g, '\\u003c')});
</script>
</body>
</html>
`;

const types = {
  '.js': 'text/javascript',
  '.mjs': 'text/javascript',
  '.css': 'text/css',
  '.json': 'application/json',
  '.wasm': 'application/wasm',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.woff': 'font/woff',
  '.woff2': 'font/woff2',
  '.ttf': 'font/ttf',
  '.map': 'application/json',
};

// Serves the page and Converse's dist/ on an ephemeral loopback port, to this machine only.
server = createServer(async (req, res) => {
  const path = decodeURIComponent(new URL(req.url, 'http://localhost').pathname);
  if (path === '/') {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(page_html);
    return;
  }
  {
    // dist/ also at the root: OMEMO's WebAssembly is fetched from there.
    const rel = path.startsWith('/dist/') ? path.slice('/dist/'.length) : path.slice(1);
    const file = normalize(join(dist, rel));
    if (file.startsWith(dist + sep)) {
      try {
        const body = await readFile(file);
        res.writeHead(200, { 'content-type': types[extname(file)] ?? 'application/octet-stream' });
        res.end(body);
        return;
      } catch {
        // Falls through to 404.
      }
    }
  }
  res.writeHead(404);
  res.end();
});
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const pageUrl = `http://127.0.0.1:${server.address().port}/`;

try {
  browser = await chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    // Chromium's sandbox cannot start as root, as on CI.
    args: process.getuid?.() === 0 ? ['--no-sandbox'] : [],
  });
  page = await browser.newPage();
  // Nothing leaves this machine: the login page links a few pictures on the project's site.
  await page.route(
    (url) => !['127.0.0.1', 'localhost', '[::1]'].includes(url.hostname),
    (route) => route.abort('blockedbyclient'),
  );
  page.on('console', (msg) => consoleLines.push(consoleLine(msg)));
  page.on('pageerror', (err) => consoleLines.push(`[pageerror] ${err.stack ?? err}`));
  page.on('requestfailed', (r) =>
    consoleLines.push(`[requestfailed] ${r.url()}: ${r.failure()?.errorText}`),
  );

  await page.goto(pageUrl);
  step('page loaded');

  const state = await page.waitForFunction(
    () => window.rookeryTest.connected ?? (window.rookeryTest.disconnected && 'DISCONNECTED'),
    null,
    { timeout: 0, polling: 100 },
  );
  const connected = await state.jsonValue();
  if (connected === 'DISCONNECTED') await fail('Converse disconnected before it was connected');
  step(`connected ${connected}`);

  // Opens the chat with the peer and types the message into its text area, as a person would.
  await page.evaluate((peer) => window.rookeryTest.api.chats.open(peer, {}, true), peer);
  const textarea = page.locator(`converse-chat[jid="${peer}"] textarea.chat-textarea`);
  await visible(textarea, 'the chat window');
  await textarea.fill(sentBody);
  await textarea.press('Enter');
  await visible(
    page
      .locator(`converse-chat[jid="${peer}"] .chat-msg__content--me .chat-msg__text`)
      .filter({ hasText: sentBody })
      .first(),
    'the sent message in the chat',
  );
  step(`sent ${sentBody}`);

  // The reply, shown in the same chat as a message from the peer.
  await visible(
    page
      .locator(`converse-chat[jid="${peer}"] .chat-msg[data-from^="${peer}"] .chat-msg__text`)
      .filter({ hasText: replyBody })
      .first(),
    'the reply in the chat',
  );
  // Converse's own record of it agrees: a message event from the peer with that body.
  const received = await page.evaluate(() => window.rookeryTest.received);
  if (!received.some((m) => m.body === replyBody && m.from?.startsWith(peer))) {
    await fail(`the reply was shown but no message event had it: ${JSON.stringify(received)}`);
  }
  step(`received ${replyBody}`);

  done = true;
  clearTimeout(overall);
  await screenshot();
  if (process.env.CONVERSE_CONSOLE) {
    process.stderr.write(`--- browser console (${consoleLines.length} lines) ---\n`);
    for (const line of consoleLines) process.stderr.write(`${line}\n`);
  }
  await cleanup();
  process.exit(0);
} catch (err) {
  await fail(err?.stack ?? String(err));
}
