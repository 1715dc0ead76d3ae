//! The operator dashboard in a real browser (issue 21): headless Chromium (Debian's `chromium`
//! and `chromium-driver`, installed by .ci/bootstrap) driven over WebDriver. Against a pag0
//! with real traffic (paid calls through the test paywall, free calls of another project, a
//! refused request), each page shows what the JSON API says; a project key sees its project
//! only; the dashboard works from the keyboard alone; the browser logs no error from the first
//! load on (scripts, failed requests, CSP violations); a screenshot of each page is written
//! under target/dashboard-screenshots/ for a person to look at. Recorded paths are shown
//! safely: format characters (bidi overrides) escaped, long ones cut to a line (issue 33).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::paywall::{self, Paywall};
use common::*;
use fantoccini::key::Key;
use fantoccini::wd::WebDriverCompatibleCommand;
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
    // The browser's console, from the first page load on (read with [`BrowserLog`]).
    caps.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a Chromium session");
    (driver, client)
}

/// Transaction links of the dashboard.
const EXPLORER: &str = "https://explorer.example/tx/";

fn config(wall: &Paywall, up: &Upstream) -> String {
    // The harness writes `admin:` just before the body: the first line continues it.
    format!(
        "  explorer_tx_url: {EXPLORER}\n{payments}stages:\n  - kind: auth\n  - kind: policy\n  - kind: ssrf_guard\n    allow: [\"127.0.0.0/8\"]\n  - kind: cache\n  - kind: payment\nprojects:\n  - id: demo\n    keys: [\"{DEMO_HASH}\"]\n    wallet:\n      private_key: ${{PAG0_TEST_WALLET_KEY:-{key}}}\n    policy:\n      budgets:\n        - asset: USDC\n          per_request: \"0.05\"\n          daily: \"1\"\n          monthly: \"10\"\n      block_hosts: [\"blocked.example\"]\n  - id: other\n    keys: [\"sha256:{other}\"]\ncuration:\n  refresh_seconds: 1\ncatalog:\n  - category: weather\n    description: Paid weather by city\n    endpoints: [\"127.0.0.1:{wall}/paid\"]\n# up {up}\n",
        payments = paywall::payments_yaml(),
        key = paywall::WALLET_KEY,
        other = sha256_hex(OTHER_KEY.as_bytes()),
        wall = wall.addr.port(),
        up = up.addr.port(),
    )
}

/// `POST /session/{id}/se/log` (chromedriver): the browser's console entries since the last
/// read, load-time ones included.
#[derive(Debug)]
struct BrowserLog(String);

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base: &url::Url,
        _session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", self.0))
    }

    fn method_and_body(&self, _url: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(json!({"type": "browser"}).to_string()),
        )
    }
}

/// The errors the browser logged since the last call: uncaught script errors, rejected
/// promises, `console.error`, failed requests (a 4xx/5xx the page asked for), CSP violations.
async fn errors(c: &Client) -> Vec<String> {
    let session = c.session_id().await.unwrap().expect("a session");
    let entries = c.issue_cmd(BrowserLog(session)).await.unwrap();
    entries
        .as_array()
        .expect("a list of log entries")
        .iter()
        .filter(|e| e["level"] == "SEVERE")
        .map(|e| e["message"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Presses `key` on the element that has the focus.
async fn press(c: &Client, key: &str) {
    c.active_element()
        .await
        .unwrap()
        .send_keys(key)
        .await
        .unwrap();
}

/// Whether the focused element matches `css`.
async fn focused(c: &Client, css: &str) -> bool {
    let script = format!(
        "return !!document.activeElement && document.activeElement.matches({});",
        serde_json::to_string(css).unwrap()
    );
    c.execute(&script, vec![]).await.unwrap() == json!(true)
}

/// Presses Tab until the element `css` selects has the focus (at most 40 times), and checks
/// that the focus shows.
async fn tab_to(c: &Client, css: &str) {
    for _ in 0..40 {
        if focused(c, css).await {
            let outline = c
                .execute(
                    "return getComputedStyle(document.activeElement).outlineStyle;",
                    vec![],
                )
                .await
                .unwrap();
            assert_eq!(outline, json!("solid"), "the focus on {css} is not visible");
            return;
        }
        press(c, &Key::Tab.to_string()).await;
    }
    panic!("Tab never reaches {css}");
}

/// Signs in from the keyboard: the token field has the focus when the page opens; Enter
/// submits; the focus then moves to the navigation.
async fn sign_in(c: &Client, admin: std::net::SocketAddr, token: &str) {
    c.goto(&format!("http://{admin}/dashboard")).await.unwrap();
    c.wait().for_element(Locator::Id("token")).await.unwrap();
    wait_until(
        c,
        "document.activeElement && document.activeElement.id === 'token'",
    )
    .await;
    press(c, &format!("{token}{}", Key::Enter)).await;
    wait_until(c, "document.getElementById('nav').hidden === false").await;
    wait_until(
        c,
        "document.activeElement && document.activeElement.matches('nav a')",
    )
    .await;
    // The token is not in the address, nor in any cookie.
    let url = c.current_url().await.unwrap().to_string();
    assert!(!url.contains(token), "{url}");
    let cookies = c.execute("return document.cookie;", vec![]).await.unwrap();
    assert_eq!(cookies, "");
}

/// Clicks the element `css` selects, found and clicked in one script (see [`text`]).
async fn click(c: &Client, css: &str) {
    let found = c
        .execute(
            &format!(
                "const e = document.querySelector({}); if (e) e.click(); return !!e;",
                serde_json::to_string(css).unwrap()
            ),
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(found, json!(true), "no element {css}");
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

/// The text of the element `css` selects, read in one script (the page re-renders itself
/// every few seconds: an element handle can go stale between two WebDriver calls).
async fn text(c: &Client, css: &str) -> String {
    let v = c
        .execute(
            &format!(
                "const e = document.querySelector({}); return e ? e.textContent : null;",
                serde_json::to_string(css).unwrap()
            ),
            vec![],
        )
        .await
        .unwrap();
    v.as_str()
        .unwrap_or_else(|| panic!("no element {css}"))
        .to_string()
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
    // Three paid calls (three queries: three cache keys), then one served from the cache.
    for i in [1, 2, 3, 1] {
        let r = demo
            .get(wall.url(&format!("/paid?city={i}")))
            .send()
            .await
            .unwrap();
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
    // The cache hit and what it saved, as the API counts them.
    let summary = api(&pag0, "/api/analytics/summary", ADMIN_TOKEN).await;
    // (The other project's repeated free calls hit too; only the paid one saved money.)
    assert!(summary["cache"]["hits"].as_u64().unwrap() >= 1, "{summary}");
    assert_eq!(
        summary["cache"]["saved"][0]["base_units"], "10000",
        "{summary}"
    );
    let rate = summary["cache"]["hit_rate"].as_f64().unwrap();
    assert_eq!(
        text(&c, "[data-field='cache_hit_rate']").await,
        format!("{:.1} %", 100.0 * rate)
    );
    assert_eq!(
        text(&c, "[data-field='saved']").await,
        summary["cache"]["saved"][0]["display"].as_str().unwrap()
    );
    // Spend today and this month (UTC), as the API sums them from those instants.
    let now = time::OffsetDateTime::now_utc();
    let today = now.date().midnight().assume_utc().unix_timestamp();
    let month = now
        .date()
        .replace_day(1)
        .unwrap()
        .midnight()
        .assume_utc()
        .unix_timestamp();
    for (field, from) in [("spend_today", today), ("spend_month", month)] {
        let summary = api(
            &pag0,
            &format!("/api/analytics/summary?from={from}"),
            ADMIN_TOKEN,
        )
        .await;
        let expected = summary["spend"][0]["display"].as_str().unwrap();
        assert!(expected.contains("USDC"), "{summary}");
        assert_eq!(text(&c, &format!("[data-field='{field}']")).await, expected);
    }
    // Requests per second over the last full minute, as the API counts it for that minute.
    let (shown, expected, minute) = until(
        20,
        || async {
            let shown = c
                .execute(
                    "const e = document.querySelector(\"[data-field='requests_per_second']\"); return [e.textContent, e.getAttribute('data-t')];",
                    vec![],
                )
                .await
                .unwrap();
            let minute = shown[1].as_str().unwrap().to_string();
            let from = minute.parse::<i64>().unwrap() / 1000;
            let series = api(
                &pag0,
                &format!(
                    "/api/analytics/timeseries?metric=requests_per_second&interval=1m&from={from}&to={}",
                    from + 60
                ),
                ADMIN_TOKEN,
            )
            .await;
            let expected = format!("{:.2}", series["points"][0]["value"].as_f64().unwrap());
            (shown[0].as_str().unwrap().to_string(), expected, minute)
        },
        |(shown, expected, _)| shown == expected,
    )
    .await;
    assert_eq!(shown, expected, "requests/s for the minute {minute}");
    // The charts draw the API's series: requests, and spend per asset (24 h, then 1 h).
    for (range, interval, seconds) in [("24h", "1h", 86400), ("1h", "1m", 3600)] {
        click(&c, &format!("button[data-range='{range}']")).await;
        wait_until(
            &c,
            &format!("document.querySelector(\"button[data-range='{range}']\").getAttribute('aria-pressed') === 'true' && document.querySelector(\"svg[data-chart='requests']\")"),
        )
        .await;
        let from = pag0::clock::unix_now() - seconds;
        let series = api(
            &pag0,
            &format!("/api/analytics/timeseries?metric=requests&interval={interval}&from={from}"),
            ADMIN_TOKEN,
        )
        .await;
        let values: Vec<u64> = series["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["value"].as_u64().unwrap_or(0))
            .collect();
        let attr = |name: &str| {
            format!(
                "return document.querySelector(\"svg[data-chart='requests']\").getAttribute('{name}');"
            )
        };
        let points: usize = c
            .execute(&attr("data-points"), vec![])
            .await
            .unwrap()
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let max = c.execute(&attr("data-max"), vec![]).await.unwrap();
        assert!(
            points.abs_diff(values.len()) <= 1,
            "{range}: {points} vs {}",
            values.len()
        );
        assert_eq!(
            max,
            json!(values.iter().max().unwrap().to_string()),
            "{range}"
        );
        wait_until(
            &c,
            "document.querySelector(\"svg[data-chart='spend-USDC']\")",
        )
        .await;
    }
    screenshot(&c, "overview").await;

    open(&c, "budgets").await;
    let budgets = api(&pag0, "/api/budgets/demo", ADMIN_TOKEN).await;
    let daily = &budgets["budgets"][0]["daily"];
    let rows = cells(&c, "budgets").await;
    let demo_row = rows.iter().find(|r| r[0] == "demo").expect("a demo row");
    assert_eq!(demo_row[1], budgets["budgets"][0]["pool"].as_str().unwrap());
    assert_eq!(demo_row[5], "YAML", "where the policy comes from");
    assert!(
        demo_row[2].contains(&format!(
            "{} / {}",
            daily["spent"].as_str().unwrap(),
            daily["limit"].as_str().unwrap()
        )),
        "{demo_row:?} vs {daily}"
    );
    // The policy editor: the API's validation problems show beside the field; a valid policy
    // is saved and the budget follows it.
    let set_policy = |text: &str| {
        format!(
            "const a = document.getElementById('policy-text'); a.value = {}; a.dispatchEvent(new Event('input'));",
            serde_json::to_string(text).unwrap()
        )
    };
    wait_until(&c, "document.getElementById('policy-text')").await;
    c.execute(
        &set_policy(r#"{"budgets": [{"asset": "DOGE", "daily": "1"}]}"#),
        vec![],
    )
    .await
    .unwrap();
    click(&c, "#policy-save").await;
    wait_until(
        &c,
        "document.querySelectorAll('#policy-problems li').length > 0",
    )
    .await;
    let problems = text(&c, "#policy-problems").await;
    assert!(problems.contains("budgets[0]"), "{problems}");
    // The browser logs the refused save (and nothing else happened so far that it logs).
    let logged = errors(&c).await;
    assert!(
        logged.len() == 1 && logged[0].contains("/api/policies") && logged[0].contains("422"),
        "{logged:?}"
    );
    screenshot(&c, "policy-editor").await;
    c.execute(
        &set_policy(r#"{"budgets": [{"asset": "USDC", "per_request": "0.05", "daily": "2", "monthly": "10"}]}"#),
        vec![],
    )
    .await
    .unwrap();
    click(&c, "#policy-save").await;
    wait_until(
        &c,
        "document.getElementById('status').textContent.includes('saved')",
    )
    .await;
    let policy = api(&pag0, "/api/policies/demo", ADMIN_TOKEN).await;
    assert_eq!(policy["source"], "database", "{policy}");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let rows = cells(&c, "budgets").await;
        if rows
            .iter()
            .any(|r| r[0] == "demo" && r[2].ends_with("/ 2000000") && r[5] == "API version 1")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new daily limit is not shown: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    screenshot(&c, "budgets").await;

    // Endpoints, from the keyboard: Tab to the link, Enter.
    tab_to(&c, "nav a[href='#endpoints']").await;
    press(&c, &Key::Enter.to_string()).await;
    wait_until(
        &c,
        "document.querySelector('#page h2').textContent.startsWith('Endpoints') && document.querySelectorAll('table[data-table=\"rankings:\"] tbody tr').length > 0 && document.querySelectorAll('table[data-table=\"rankings:weather\"] tbody tr').length > 0",
    )
    .await;
    // One ranking per category of the catalog, then the endpoints in none, each in the API's
    // order.
    let endpoints_of = |list: &Value| -> Vec<String> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|e| e["endpoint"].as_str().unwrap().to_string())
            .collect()
    };
    let weather = api(
        &pag0,
        "/api/curation/rankings?limit=50&category=weather",
        ADMIN_TOKEN,
    )
    .await;
    let in_weather = endpoints_of(&weather["rankings"]);
    assert_eq!(
        in_weather,
        vec![format!("127.0.0.1:{}/paid", wall.addr.port())]
    );
    let column =
        |rows: Vec<Vec<String>>| -> Vec<String> { rows.iter().map(|r| r[2].clone()).collect() };
    assert_eq!(column(cells(&c, "rankings:weather").await), in_weather);
    let all = api(&pag0, "/api/curation/rankings?limit=1000", ADMIN_TOKEN).await;
    let others: Vec<String> = all["rankings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["category"].is_null())
        .map(|e| e["endpoint"].as_str().unwrap().to_string())
        .collect();
    assert!(!others.is_empty(), "{all}");
    assert_eq!(column(cells(&c, "rankings:").await), others);
    // A compare box ticked with the space bar keeps the focus while the page refreshes itself.
    let first = &in_weather[0];
    let first_box = format!("input[data-endpoint='{first}']");
    tab_to(&c, &first_box).await;
    press(&c, " ").await;
    c.execute(
        "window.__drawn = document.querySelector('#page h2'); return true;",
        vec![],
    )
    .await
    .unwrap();
    wait_until(&c, "document.querySelector('#page h2') !== window.__drawn").await;
    assert!(
        focused(&c, &first_box).await,
        "the focus left the ticked box"
    );
    let ticked = c
        .execute(
            &format!("return document.querySelector(\"{first_box}\").checked;"),
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(ticked, json!(true));
    // Two endpoints side by side, as the compare API puts them.
    let listed = [first.clone(), others[0].clone()];
    click(&c, &format!("input[data-endpoint='{}']", listed[1])).await;
    wait_until(
        &c,
        "document.querySelector('table[data-table=\"compare\"]')",
    )
    .await;
    let compared = api(
        &pag0,
        &format!(
            "/api/curation/compare?endpoints={},{}",
            listed[0], listed[1]
        ),
        ADMIN_TOKEN,
    )
    .await;
    let score_row = cells(&c, "compare").await[0].clone();
    assert_eq!(score_row[0], "score");
    assert_eq!(score_row[1], compared["endpoints"][0]["score"].to_string());
    assert_eq!(score_row[2], compared["endpoints"][1]["score"].to_string());
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
    // Transaction hashes link to the configured explorer.
    let tx = spend["spend"][0]["tx_hash"].as_str().unwrap().to_string();
    let href = c
        .execute(
            &format!("const a = [...document.querySelectorAll('table[data-table=\"payments\"] a')].find(a => a.textContent === '{tx}'); return a ? a.getAttribute('href') : null;"),
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(href, json!(format!("{EXPLORER}{tx}")));
    // The refusal, with its policy code; the filter narrows both tables.
    let refusals = cells(&c, "refusals").await;
    assert!(
        refusals
            .iter()
            .any(|r| r[4] == "HOST_BLOCKED" && r[2].starts_with("blocked.example")),
        "{refusals:?}"
    );
    screenshot(&c, "payments").await;
    c.execute(
        "const f = document.getElementById('filter'); f.value = 'HOST_BLOCKED'; f.dispatchEvent(new Event('change'));",
        vec![],
    )
    .await
    .unwrap();
    wait_until(
        &c,
        "document.querySelectorAll('table[data-table=\"payments\"] tbody tr').length === 0",
    )
    .await;
    assert_eq!(cells(&c, "refusals").await.len(), 1);

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
    assert_eq!(text(&c, "#who").await, "project other");
    for page in ["budgets", "payments", "health"] {
        let hidden = c
            .execute(
                &format!("return document.querySelector(\"nav a[href='#{page}']\").hidden;"),
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(hidden, json!(true), "{page} is offered to a project key");
        c.execute(&format!("location.hash = '#{page}'; return true;"), vec![])
            .await
            .unwrap();
        wait_until(
            &c,
            "document.getElementById('page').textContent.includes('needs the admin token')",
        )
        .await;
    }
    screenshot(&c, "project-key").await;
    // On a phone's width the overview still fits (tables scroll inside their own box).
    c.set_window_size(390, 844).await.unwrap();
    open(&c, "overview").await;
    wait_until(&c, "document.querySelector(\"svg[data-chart='requests']\")").await;
    let fits = c
        .execute(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(fits, json!(true), "the page is wider than a phone");
    screenshot(&c, "phone").await;
    assert_eq!(errors(&c).await, Vec::<String>::new());
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_paths_show_format_characters_escaped_and_long_cells_cut() {
    let up = Upstream::start().await;
    let body = format!(
        "stages:\n  - kind: auth\n  - kind: ssrf_guard\n    allow: [\"127.0.0.0/8\"]\nprojects:\n  - id: demo\n    keys: [\"{DEMO_HASH}\"]\ncuration:\n  refresh_seconds: 1\n"
    );
    let pag0 = Pag0::start(&body);
    let auth = basic("demo", DEMO_KEY);
    // A path that shows as `…/exe.png` when its right-to-left override (U+202E) is rendered
    // raw, and one of 7 000 characters; sent as raw bytes (an HTTP client would escape them).
    let spoof = "/files/\u{202e}gnp.exe";
    let long = format!("/{}", "x".repeat(7000));
    for path in [spoof, long.as_str()] {
        for _ in 0..3 {
            let request = format!(
                "GET http://{0}{path} HTTP/1.1\r\nHost: {0}\r\nProxy-Authorization: {auth}\r\n\r\n",
                up.addr
            );
            raw_exchange(pag0.proxy, request.as_bytes());
        }
    }
    let rankings = eventually(
        || api(&pag0, "/api/curation/rankings?limit=100", ADMIN_TOKEN),
        |r| r["rankings"].as_array().is_some_and(|l| l.len() >= 2),
    )
    .await;
    assert!(
        rankings.to_string().contains('\u{202e}'),
        "the API keeps the recorded path as it was: {rankings}"
    );

    let (_driver, c) = browser().await;
    sign_in(&c, pag0.admin, ADMIN_TOKEN).await;
    open(&c, "endpoints").await;
    wait_until(&c, "document.body.textContent.includes('gnp.exe')").await;
    // No format character reaches the page's text or attributes; it shows as `\u202e`.
    let raw = c
        .execute(
            "const all = [...document.querySelectorAll('*')]; return all.some(e => [...e.childNodes].some(n => n.nodeType === 3 && /\\p{Cf}/u.test(n.data)) || [...e.attributes].some(a => !a.name.startsWith('data-') && /\\p{Cf}/u.test(a.value)));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(raw, json!(false), "a raw format character is on the page");
    assert!(text(&c, "#page").await.contains("/files/\\u202egnp.exe"));
    // The 7 000-character cell takes one short line; focused, it shows whole.
    let clip = "[...document.querySelectorAll('span.clip')].find(e => e.title.length > 7000)";
    let (width, height) = size(&c, clip).await;
    assert!(width < 400.0 && height < 40.0, "cut: {width} x {height}");
    c.execute(&format!("{clip}.focus();"), vec![])
        .await
        .unwrap();
    let (_, focused_height) = size(&c, clip).await;
    assert!(
        focused_height > 200.0,
        "whole when focused: {focused_height}"
    );
    assert_eq!(errors(&c).await, Vec::<String>::new());
    c.execute(
        "document.activeElement.blur(); window.scrollTo(0, 0);",
        vec![],
    )
    .await
    .unwrap();
    screenshot(&c, "endpoints-hostile-paths").await;
    c.close().await.unwrap();
}

/// Width and height (CSS pixels) of the element the JS expression `element` finds.
async fn size(c: &Client, element: &str) -> (f64, f64) {
    let v = c
        .execute(
            &format!("const e = {element}; const r = e.getBoundingClientRect(); return [r.width, r.height];"),
            vec![],
        )
        .await
        .unwrap();
    (v[0].as_f64().unwrap(), v[1].as_f64().unwrap())
}
