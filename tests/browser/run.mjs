// A real browser using roostd over WebSockets: Debian's Chromium, driven by puppeteer-core,
// loads MQTT.js's browser bundle into a page; the page connects to each URL given, subscribes,
// publishes a message of its own, and waits for it and for one published by the test over TCP
// (topic browser/<n>/from-tcp). Prints one JSON line with what the page saw; exits non-zero on
// any failure. Bounded: every step has a timeout.
//
//   node run.mjs --chromium /usr/bin/chromium --url ws://127.0.0.1:8080/ [--url wss://...]
import puppeteer from "puppeteer-core";
import http from "node:http";
import { readFileSync } from "node:fs";

const args = process.argv.slice(2);
const urls = [];
let chromium = "/usr/bin/chromium";
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--url") urls.push(args[++i]);
  else if (args[i] === "--chromium") chromium = args[++i];
}
// The browser bundle (resolved by path: the package's exports map does not list it).
const bundle = new URL("node_modules/mqtt/dist/mqtt.min.js", import.meta.url).pathname;

const timer = setTimeout(() => {
  console.log(JSON.stringify({ error: "timed out after 60 s" }));
  process.exit(2);
}, 60000);

// The page comes from a server on 127.0.0.1, as a local dashboard would: Chromium's local
// network access checks block a page from elsewhere (about:blank included) from opening
// sockets to 127.0.0.1.
const server = http.createServer((req, res) => {
  if (req.url === "/mqtt.min.js") {
    res.writeHead(200, { "Content-Type": "text/javascript" });
    res.end(readFileSync(bundle));
  } else {
    res.writeHead(200, { "Content-Type": "text/html" });
    res.end('<!doctype html><title>roostd</title><script src="/mqtt.min.js"></script>');
  }
});
await new Promise((r) => server.listen(0, "127.0.0.1", r));
const pageUrl = `http://127.0.0.1:${server.address().port}/`;

const browser = await puppeteer.launch({
  executablePath: chromium,
  headless: true,
  // The test CA is not the system's: accept its certificate for wss (test only).
  acceptInsecureCerts: true,
  // --disable-dev-shm-usage: containers often have a tiny /dev/shm, where Chromium crashes.
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--ignore-certificate-errors"],
});
try {
  const page = await browser.newPage();
  page.on("console", (m) => process.stderr.write(`page: ${m.text()}\n`));
  await page.goto(pageUrl);
  await page.waitForFunction(() => typeof mqtt !== "undefined", { timeout: 10000 });
  const results = [];
  for (let n = 0; n < urls.length; n++) {
    const url = urls[n];
    const seen = await page.evaluate(
      (url, n) =>
        new Promise((resolve, reject) => {
          const got = [];
          const client = mqtt.connect(url, {
            clientId: `browser-${n}`,
            protocolVersion: 4,
            reconnectPeriod: 0,
            connectTimeout: 10000,
          });
          const fail = (e) => {
            client.end(true);
            reject(new Error(String(e)));
          };
          client.on("error", fail);
          client.on("connect", () => {
            client.subscribe(`browser/${n}/#`, { qos: 1 }, (err) => {
              if (err) return fail(err);
              // Tell the test we are subscribed: it then publishes over TCP.
              client.publish(`browser/${n}/ready`, "ready", { qos: 1 });
              client.publish(`browser/${n}/own`, "own message", { qos: 1 });
            });
          });
          client.on("message", (topic, payload, packet) => {
            got.push({ topic, payload: payload.toString(), qos: packet.qos });
            const topics = got.map((g) => g.topic);
            if (topics.includes(`browser/${n}/own`) && topics.includes(`browser/${n}/from-tcp`)) {
              client.end(false, {}, () => resolve(got));
            }
          });
        }),
      url,
      n
    );
    results.push({ url, seen });
  }
  console.log(JSON.stringify({ results }));
} catch (e) {
  console.log(JSON.stringify({ error: String(e && e.stack ? e.stack : e) }));
  process.exitCode = 1;
} finally {
  clearTimeout(timer);
  await browser.close();
  server.close();
}
