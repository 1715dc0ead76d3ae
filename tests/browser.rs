//! The operator dashboard in a real browser (issue 21): headless Chromium (Debian's `chromium`
//! and `chromium-driver`, installed by .ci/bootstrap) driven over WebDriver. Against a pag0
//! with real traffic (paid calls through the test paywall, free calls of another project, a
//! refused request), each page shows what the JSON API says; a project key sees its project
//! only; no script error happens; a screenshot of each page is written under
//! target/dashboard-screenshots/ for a person to look at.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::paywall::{self, Paywall};
use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

const OTHER_KEY: &str = "other-project-key-0123456789";

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// chromedriver on a free port, and a headless Chromium session through it.
async fn browser() -> (Driver, Client) {
    let port = free_port();
    let child = Command::new(std::env::var("CHROMEDRIVER").unwrap_or("chromedriver".into()))
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver (Debian chromium-driver; .ci/bootstrap installs it)");
    let driver = Driver(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"]}),
    );
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a Chromium session");
    (driver, client)
}

fn config(wall: &Paywall, up: &Upstream) -> String {
    format!(
        "{payments}stages:\n  - kind: auth\n  - kind: policy\n  - kind: ssrf_guard\n    allow: [\"127.0.0.0/8\"]\n  - kind: payment\nprojects:\n  - id: demo\n    keys: [\"{DEMO_HASH}\"]\n    wallet:\n      private_key: ${{PAG0_TEST_WALLET_KEY:-{key}}}\n    policy:\n      budgets:\n        - asset: USDC\n          per_request: \"0.05\"\n          daily: \"1\"\n          monthly: \"10\"\n      block_hosts: [\"blocked.example\"]\n  - id: other\n    keys: [\"sha256:{other}\"]\ncuration:\n  refresh_seconds: 1\n# wall {wall} up {up}\n",
        payments = paywall::payments_yaml(),
        key = paywall::WALLET_KEY,
        other = sha256_hex(OTHER_KEY.as_bytes()),
        wall = wall.addr.port(),
        up = up.addr.port(),
    )
}

/// Records script errors and console errors from now on (WebDriver scripts are not subject to
/// the page's CSP).
async fn watch_errors(c: &Client) {
    c.execute(
        "window.__errors = window.__errors || [];
         window.addEventListener('error', e => window.__errors.push(String(e.message)));
         window.addEventListener('unhandledrejection', e => window.__errors.push(String(e.reason)));
         const original = console.error;
         console.error = (...a) => { window.__errors.push(a.join(' ')); original(...a); };",
        vec![],
    )
    .await
    .unwrap();
}

async fn errors(c: &Client) -> Vec<String> {
    let v = c
        .execute("return window.__errors || [];", vec![])
        .await
        .unwrap();
    serde_json::from_value(v).unwrap()
}

async fn sign_in(c: &Client, admin: std::net::SocketAddr, token: &str) {
    c.goto(&format!("http://{admin}/dashboard")).await.unwrap();
    watch_errors(c).await;
    let input = c.wait().for_element(Locator::Id("token")).await.unwrap();
    input.send_keys(token).await.unwrap();
    c.find(Locator::Css("#signin button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_until(c, "document.getElementById('nav').hidden === false").await;
    // The token is not in the address, nor in any cookie.
    let url = c.current_url().await.unwrap().to_string();
    assert!(!url.contains(token), "{url}");
    let cookies = c.execute("return document.cookie;", vec![]).await.unwrap();
    assert_eq!(cookies, "");
}

async fn wait_until(c: &Client, condition: &str) {
    let script = format!("return !!({condition});");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if c.execute(&script, vec![]).await.unwrap() == json!(true) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {condition}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn open(c: &Client, page: &str) {
    c.find(Locator::Css(&format!("nav a[href='#{page}']")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_until(
        c,
        &format!(
            "document.querySelector(\"nav a[href='#{page}']\").getAttribute('aria-current') === 'page' && document.querySelector('#page h2') && document.querySelector('#page h2').textContent.toLowerCase().includes('{page}'.slice(0, 5))"
        ),
    )
    .await;
}

async fn text(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The cells of a dashboard table, row by row.
async fn cells(c: &Client, table: &str) -> Vec<Vec<String>> {
    let v = c
        .execute(
            &format!(
                "return [...document.querySelectorAll('table[data-table=\"{table}\"] tbody tr')].map(r => [...r.cells].map(td => td.textContent));"
            ),
            vec![],
        )
        .await
        .unwrap();
    serde_json::from_value(v).unwrap()
}

async fn screenshot(c: &Client, name: &str) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dashboard-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

async fn api(pag0: &Pag0, path: &str, bearer: &str) -> Value {
    reqwest::Client::new()
        .get(format!("http://{}{path}", pag0.admin))
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Until the overview's `field` shows what `expected` computes from the API (both read again
/// each time: analytics records land asynchronously).
async fn overview_matches(c: &Client, pag0: &Pag0, bearer: &str, field: &str, key: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let shown = text(c, &format!("[data-field='{field}']")).await;
        let summary = api(pag0, "/api/analytics/summary", bearer).await;
        let expected = summary[key].to_string();
        if shown == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "overview {field} shows {shown}, the API says {expected}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_shows_what_the_api_says_and_a_project_key_sees_its_project_only() {
    let wall = Paywall::start().await;
    let up = Upstream::start().await;
    let pag0 = Pag0::start(&config(&wall, &up));
    let demo = pag0.client("demo", DEMO_KEY);
    for _ in 0..3 {
        let r = demo.get(wall.url("/paid")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = demo.get("http://blocked.example/x").send().await.unwrap();
    assert_eq!(r.status(), 403, "a refusal");
    let other = pag0.client("other", OTHER_KEY);
    for _ in 0..5 {
        let r = other.get(up.url("/free")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }

    let (_driver, c) = browser().await;
    sign_in(&c, pag0.admin, ADMIN_TOKEN).await;

    // Overview: the admin token sees every project's requests.
    wait_until(&c, "document.querySelector(\"[data-field='requests']\")").await;
    overview_matches(&c, &pag0, ADMIN_TOKEN, "requests", "requests").await;
    overview_matches(&c, &pag0, ADMIN_TOKEN, "paid_calls", "paid_calls").await;
    assert!(text(&c, "[data-field='spend']").await.contains("USDC"));
    screenshot(&c, "overview").await;

    open(&c, "budgets").await;
    let budgets = api(&pag0, "/api/budgets/demo", ADMIN_TOKEN).await;
    let daily = &budgets["budgets"][0]["daily"];
    let rows = cells(&c, "budgets").await;
    let demo_row = rows.iter().find(|r| r[0] == "demo").expect("a demo row");
    assert_eq!(demo_row[1], budgets["budgets"][0]["pool"].as_str().unwrap());
    assert!(
        demo_row[2].contains(&format!(
            "{} / {}",
            daily["spent"].as_str().unwrap(),
            daily["limit"].as_str().unwrap()
        )),
        "{demo_row:?} vs {daily}"
    );
    screenshot(&c, "budgets").await;

    open(&c, "endpoints").await;
    wait_until(
        &c,
        "document.querySelectorAll('table[data-table=\"rankings\"] tbody tr').length > 0",
    )
    .await;
    let rankings = api(&pag0, "/api/curation/rankings?limit=50", ADMIN_TOKEN).await;
    let shown: Vec<String> = cells(&c, "rankings")
        .await
        .iter()
        .map(|r| r[1].clone())
        .collect();
    let listed: Vec<String> = rankings["rankings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["endpoint"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(shown, listed);
    screenshot(&c, "endpoints").await;

    open(&c, "payments").await;
    let spend = api(&pag0, "/api/spend?project=demo", ADMIN_TOKEN).await;
    let rows = cells(&c, "payments").await;
    assert_eq!(rows.len(), spend["spend"].as_array().unwrap().len());
    assert_eq!(rows.len(), 3);
    for r in &rows {
        assert_eq!(r[1], "demo");
        assert_eq!(r[3], "10000");
    }
    screenshot(&c, "payments").await;

    open(&c, "health").await;
    let health = cells(&c, "health").await;
    assert!(
        health.iter().any(|r| r[0] == "database" && r[1] == "up"),
        "{health:?}"
    );
    screenshot(&c, "health").await;
    assert_eq!(errors(&c).await, Vec::<String>::new());

    // A project key: its own numbers, and nothing of the others.
    c.find(Locator::Id("signout"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    sign_in(&c, pag0.admin, OTHER_KEY).await;
    open(&c, "overview").await;
    overview_matches(&c, &pag0, OTHER_KEY, "requests", "requests").await;
    let own = api(&pag0, "/api/analytics/summary", OTHER_KEY).await;
    let all = api(&pag0, "/api/analytics/summary", ADMIN_TOKEN).await;
    assert!(
        own["requests"].as_u64() < all["requests"].as_u64(),
        "{own} vs {all}"
    );
    assert_eq!(text(&c, "[data-field='paid_calls']").await, "0");
    for page in ["budgets", "payments", "health"] {
        open(&c, page).await;
        assert!(
            text(&c, "#page").await.contains("needs the admin token"),
            "{page} with a project key"
        );
    }
    screenshot(&c, "project-key").await;
    assert_eq!(errors(&c).await, Vec::<String>::new());
    c.close().await.unwrap();
}
