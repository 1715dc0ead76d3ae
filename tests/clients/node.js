// One Node.js HTTP client fetching URLs through pag0, configured the way Node agents do it.
//
//   node tests/clients/node.js undici-proxy-agent|undici-env|node-http URL...
//
// undici-proxy-agent: fetch with undici's ProxyAgent(process.env.HTTPS_PROXY) (what
//   NODE_USE_ENV_PROXY builds on); it tunnels http:// URLs with CONNECT too.
// undici-env: fetch with undici's EnvHttpProxyAgent (reads HTTP_PROXY / HTTPS_PROXY / NO_PROXY).
// node-http: the built-in http/https modules with the http-proxy-agent / https-proxy-agent
//   packages, keep-alive on.
// Trust: NODE_EXTRA_CA_CERTS. Modules come from NODE_PATH (target/tools/node_modules).
// Prints one line per URL: status, X-Pag0-Paid (or -), and the echoed path.
"use strict";

const [client, ...urls] = process.argv.slice(2);

function line(status, paid, body) {
  console.log(`${status} ${paid || "-"} ${JSON.parse(body).path}`);
}

async function withFetch(dispatcher) {
  for (const url of urls) {
    const r = await fetch(url, { dispatcher });
    line(r.status, r.headers.get("x-pag0-paid"), await r.text());
  }
  await dispatcher.close();
}

function get(url, agent) {
  const mod = url.startsWith("https:") ? require("https") : require("http");
  return new Promise((resolve, reject) => {
    mod
      .get(url, { agent }, (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (c) => (body += c));
        res.on("end", () => resolve([res.statusCode, res.headers["x-pag0-paid"], body]));
      })
      .on("error", reject);
  });
}

async function withNodeHttp() {
  const { HttpProxyAgent } = require("http-proxy-agent");
  const { HttpsProxyAgent } = require("https-proxy-agent");
  const agents = {
    http: new HttpProxyAgent(process.env.HTTP_PROXY, { keepAlive: true }),
    https: new HttpsProxyAgent(process.env.HTTPS_PROXY, { keepAlive: true }),
  };
  for (const url of urls) {
    const agent = url.startsWith("https:") ? agents.https : agents.http;
    line(...(await get(url, agent)));
  }
  agents.http.destroy();
  agents.https.destroy();
}

async function main() {
  const undici = () => require("undici");
  switch (client) {
    case "undici-proxy-agent":
      return withFetch(new (undici().ProxyAgent)(process.env.HTTPS_PROXY));
    case "undici-env":
      return withFetch(new (undici().EnvHttpProxyAgent)());
    case "node-http":
      return withNodeHttp();
    default:
      throw new Error(`unknown client ${client}`);
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
