// The debug console in a real browser: Debian's Chromium, headless, driven over the
// DevTools protocol by puppeteer-core. Log in with the app's id and secret, see an event
// the Node server SDK publishes appear in the live log (in cluster mode published on node
// B, the console on node A), see the channel in the occupied-channels table, and send an
// event with the event creator that a pusher-js client receives.
//
// PUSHI_CONSOLE_SCREENSHOT=path saves a screenshot of the page at the end (the README's).
import { test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import puppeteer from 'puppeteer-core';
import { HOST, PORT, PORT_B, MAIN, FULL, uniq, WAIT_MS } from '../lib/env.mjs';
import { serverSdk } from '../lib/http.mjs';
import { connectClientB, subscribed, once } from '../lib/client.mjs';
import { closeAll } from '../lib/cleanup.mjs';

afterEach(closeAll);

const CHROMIUM = process.env.PUSHI_CHROMIUM || '/usr/bin/chromium';
// The console is on in the servers compat-tests/run starts ([console] enabled = true);
// an outside target may not have it.
const skip = FULL ? false : 'needs the debug console enabled (compat-tests/run starts pushi with it)';

let browser;
let profile;

before(async () => {
  if (skip) return;
  // Missing Chromium is a failure, not a skip.
  assert.ok(
    fs.existsSync(CHROMIUM),
    `Chromium not found at ${CHROMIUM}: install Debian's package (apt-get install -y chromium), as .ci/run does`,
  );
  profile = fs.mkdtempSync(path.join(os.tmpdir(), 'pushi-chromium-'));
  browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    userDataDir: profile,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
});

after(async () => {
  if (browser) await browser.close();
  if (profile) fs.rmSync(profile, { recursive: true, force: true });
});

async function openConsole() {
  const page = await browser.newPage();
  await page.setViewport({ width: 1280, height: 900 });
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(`http://${HOST}:${PORT}/console`, { waitUntil: 'load' });
  await page.type('#login-app', MAIN.id);
  await page.type('#login-secret', MAIN.secret);
  await page.click('#login button[type=submit]');
  // Live: the feed's stream is open.
  await page.waitForFunction(() => document.getElementById('live').textContent === 'live', { timeout: WAIT_MS });
  // In a cluster node B sends records once it has heard of the console on A (announced
  // through Redis right after it opened): publish probes on B until one shows.
  const sdk = serverSdk(MAIN, { port: PORT_B });
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    const probe = uniq('console-probe');
    await sdk.trigger(uniq('probe'), probe, {});
    const seen = await page
      .waitForSelector(`#log tr[data-event="${probe}"]`, { timeout: 300 })
      .then(() => true)
      .catch(() => false);
    if (seen) break;
    assert.ok(Date.now() < deadline, 'the console shows what node B publishes');
  }
  await page.click('#clear');
  return { page, errors };
}

test('login with the app secret, then an SDK publish appears in the live log', { skip }, async () => {
  const { page, errors } = await openConsole();
  // The secret is not kept by the page.
  assert.equal(await page.$eval('#login-secret', (e) => e.value), '');
  const stored = await page.evaluate(() => sessionStorage.getItem('pushi-console'));
  assert.ok(!stored.includes(MAIN.secret), 'no secret in session storage');

  const channel = uniq('console');
  const event = uniq('seen-in-console');
  const res = await serverSdk(MAIN, { port: PORT_B }).trigger(channel, event, { shown: true });
  assert.equal(res.status, 200);
  const row = await page.waitForSelector(`#log tr[data-event="${event}"]`, { timeout: WAIT_MS });
  const cells = await row.$$eval('td', (tds) => tds.map((td) => td.textContent));
  assert.equal(cells[1], 'api message');
  assert.equal(cells[2], channel);
  assert.match(cells[5], /"shown":true/);

  // The filter hides what does not match and shows what does.
  await page.type('#filter-event', 'no-such-event');
  assert.equal(await row.evaluate((tr) => tr.classList.contains('hidden')), true);
  await page.$eval('#filter-event', (e) => {
    e.value = '';
    e.dispatchEvent(new Event('input'));
  });
  assert.equal(await row.evaluate((tr) => tr.classList.contains('hidden')), false);
  assert.deepEqual(errors, []);
  await page.close();
});

test('the event creator publishes to a pusher-js client; the channel shows as occupied', { skip }, async () => {
  const { page, errors } = await openConsole();
  const client = await connectClientB(MAIN);
  const channel = uniq('console-creator');
  const { channel: sub } = await subscribed(client, channel);
  // Its connection and subscription show in the log.
  await page.waitForSelector(`#log tr[data-type="subscribed"][data-channel="${channel}"]`, { timeout: WAIT_MS });

  // The occupied-channels table (refreshed every 2 s) lists it with its one subscriber.
  await page.waitForFunction(
    (name) =>
      [...document.querySelectorAll('#channels tbody tr')].some(
        (tr) => tr.cells[0].textContent === name && tr.cells[1].textContent === '1',
      ),
    { timeout: WAIT_MS },
    channel,
  );

  const got = once(sub, 'from-console');
  await page.type('#creator-channel', channel);
  await page.type('#creator-event', 'from-console');
  await page.$eval('#creator-data', (e) => {
    e.value = '{"made":"in the browser"}';
  });
  await page.click('#creator button[type=submit]');
  const { data } = await got;
  assert.deepEqual(data, { made: 'in the browser' });
  await page.waitForFunction(() => document.getElementById('creator-result').textContent === 'sent', {
    timeout: WAIT_MS,
  });
  // Its own publish shows in the log too.
  await page.waitForSelector(`#log tr[data-event="from-console"][data-channel="${channel}"]`, { timeout: WAIT_MS });

  const shot = process.env.PUSHI_CONSOLE_SCREENSHOT;
  if (shot) await page.screenshot({ path: shot, fullPage: false });
  assert.deepEqual(errors, []);
  await page.close();
});
