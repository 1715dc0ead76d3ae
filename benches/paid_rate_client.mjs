// Fixed-rate paid-call driver for benches/paid_rate.sh: starts one call every 1/RATE s for
// SECONDS (open loop: a slow answer does not delay the next start), waits for all to finish and
// prints one JSON line {calls, ok, failed, seconds, cpu_ms, p50_ms, p99_ms}, where cpu_ms is
// this Node process's own CPU (user + system) during the calls.
//
//   node paid_rate_client.mjs x402-fetch <url> <rate> <seconds>
//       Coinbase's client: @x402/fetch + @x402/evm (ExactEvmScheme, a viem local account) pays
//       the 402 itself: two round trips per call, signing in this process.
//   node paid_rate_client.mjs proxy <url> <rate> <seconds> <proxy-url> <basic-auth>
//       A plain agent: undici fetch through pag0 (absolute-form requests, keep-alive); pag0 pays.
//   node paid_rate_client.mjs direct <url> <rate> <seconds>
//       The same plain undici fetch without a proxy (e.g. to a reverse proxy).
//
// Module paths: X402JS_DIR holds @x402/* and viem, NODE_TOOLS_DIR holds undici.
import { createRequire } from "node:module";
import path from "node:path";

const [mode, url, rateArg, secondsArg, proxyUrl, basicAuth] = process.argv.slice(2);
const rate = Number(rateArg);
const seconds = Number(secondsArg);
const WALLET_KEY = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";

async function paidFetch() {
  if (mode === "x402-fetch") {
    const req = createRequire(path.join(process.env.X402JS_DIR, "index.js"));
    const { wrapFetchWithPaymentFromConfig } = req("@x402/fetch");
    const { ExactEvmScheme } = req("@x402/evm");
    const { privateKeyToAccount } = req("viem/accounts");
    const account = privateKeyToAccount(WALLET_KEY);
    return wrapFetchWithPaymentFromConfig(fetch, {
      schemes: [{ network: "eip155:*", client: new ExactEvmScheme(account) }],
    });
  }
  if (mode === "proxy") {
    const req = createRequire(path.join(process.env.NODE_TOOLS_DIR, "index.js"));
    const undici = req("undici");
    const dispatcher = new undici.ProxyAgent({
      uri: proxyUrl,
      token: `Basic ${basicAuth}`,
      proxyTunnel: false,
    });
    return (u, init) => undici.fetch(u, { ...init, dispatcher });
  }
  if (mode === "direct") {
    const req = createRequire(path.join(process.env.NODE_TOOLS_DIR, "index.js"));
    const undici = req("undici");
    return (u, init) => undici.fetch(u, init);
  }
  throw new Error(`unknown mode ${mode}`);
}

const call = await paidFetch();
const latencies = [];
let ok = 0;
let failed = 0;
let firstError = null;
const one = async () => {
  const start = performance.now();
  try {
    const res = await call(url);
    await res.arrayBuffer();
    if (res.status === 200) ok++;
    else {
      failed++;
      firstError ??= `status ${res.status}`;
    }
  } catch (e) {
    failed++;
    firstError ??= String(e);
  }
  latencies.push(performance.now() - start);
};

const total = Math.round(rate * seconds);
const cpu0 = process.cpuUsage();
const t0 = performance.now();
const running = [];
for (let i = 0; i < total; i++) {
  const due = t0 + (i * 1000) / rate;
  const wait = due - performance.now();
  if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  running.push(one());
}
await Promise.all(running);
const elapsed = (performance.now() - t0) / 1000;
const cpu = process.cpuUsage(cpu0);
latencies.sort((a, b) => a - b);
const pct = (p) => latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))];
console.log(
  JSON.stringify({
    calls: total,
    ok,
    failed,
    first_error: firstError,
    seconds: Number(elapsed.toFixed(2)),
    cpu_ms: Number(((cpu.user + cpu.system) / 1000).toFixed(1)),
    p50_ms: Number(pct(0.5).toFixed(1)),
    p99_ms: Number(pct(0.99).toFixed(1)),
  }),
);
