//! The operator dashboard's assets (issue 21, first part): served from the binary on the admin
//! listener without a token (they hold no data), each answer with the security headers, and
//! the code itself keeps to what the Content-Security-Policy allows.

mod common;

use common::*;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_answer_carries_the_security_headers() {
    let pag0 = Pag0::start(&demo_project());
    let client = reqwest::Client::new();
    for (path, status, content_type) in [
        ("/dashboard", 200, "text/html; charset=utf-8"),
        ("/dashboard/", 200, "text/html; charset=utf-8"),
        ("/dashboard/app.js", 200, "text/javascript; charset=utf-8"),
        ("/dashboard/app.css", 200, "text/css; charset=utf-8"),
        ("/dashboard/secrets.json", 404, "application/json"),
    ] {
        // No token: the assets hold no data.
        let resp = client
            .get(format!("http://{}{path}", pag0.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), status, "{path}");
        let h = resp.headers();
        assert_eq!(h["content-type"], content_type, "{path}");
        assert_eq!(h["content-security-policy"], CSP, "{path}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        assert_eq!(h["cache-control"], "no-store", "{path}");
    }
    // The API behind it still needs a token.
    let resp = client
        .get(format!("http://{}/api/policies", pag0.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
}

/// `GET /api/session` tells the page who signed in: the admin token, a project's key (by
/// bearer or X-Pag0-API-Key), or nobody valid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_says_who_signed_in() {
    let pag0 = Pag0::start(&demo_project());
    let client = reqwest::Client::new();
    let url = format!("http://{}/api/session", pag0.admin);
    let get = |req: reqwest::RequestBuilder| async move {
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json::<serde_json::Value>().await.unwrap())
    };
    let (status, body) = get(client.get(&url).bearer_auth(ADMIN_TOKEN)).await;
    assert_eq!((status, body), (200, serde_json::json!({"role": "admin"})));
    let project = serde_json::json!({"role": "project", "project": "demo"});
    let (status, body) = get(client.get(&url).bearer_auth(DEMO_KEY)).await;
    assert_eq!((status, body), (200, project.clone()));
    let (status, body) = get(client.get(&url).header("X-Pag0-API-Key", DEMO_KEY)).await;
    assert_eq!((status, body), (200, project));
    let (status, body) = get(client.get(&url).bearer_auth("not-a-key")).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "UNAUTHORIZED");
    let (status, _) = get(client.get(&url)).await;
    assert_eq!(status, 401);
}

#[test]
fn the_page_has_no_inline_code_and_loads_nothing_from_elsewhere() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/admin/dashboard");
    let html = std::fs::read_to_string(dir.join("index.html")).unwrap();
    let js = std::fs::read_to_string(dir.join("app.js")).unwrap();
    let css = std::fs::read_to_string(dir.join("app.css")).unwrap();
    // Every script has a same-origin src; no inline handlers or styles (the CSP forbids them).
    for (i, part) in html.split("<script").enumerate().skip(1) {
        assert!(
            part.trim_start().starts_with("src=\"/dashboard/"),
            "script {i}: {part}"
        );
    }
    assert!(!html.contains(" style="), "inline style");
    let handler = html.split(" on").skip(1).any(|rest| {
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_lowercase())
            .collect();
        !name.is_empty() && rest[name.len()..].starts_with('=')
    });
    assert!(!handler, "inline event handler");
    // (The SVG namespace is a name, nothing is fetched from it.)
    let js_code = js.replace("\"http://www.w3.org/2000/svg\"", "");
    for text in [&html, &js_code, &css] {
        assert!(
            !text.contains("http://") && !text.contains("https://"),
            "a foreign origin"
        );
    }
    // Data goes in as text; the token goes in a header, never in a URL or a cookie.
    for forbidden in [
        "innerHTML",
        "outerHTML",
        "eval(",
        "document.cookie",
        "localStorage",
        "?token",
        "&token",
    ] {
        assert!(!js.contains(forbidden), "app.js uses {forbidden}");
    }
    assert!(js.contains("\"Bearer \" + token"));
}
