//! The status page (`GET /` on the admin listener), loaded in a real headless browser: Debian's
//! `chromium` (scripts/test installs it). The page writes the data points it drew into attributes of
//! its plots, so what the browser rendered can be checked from the DOM it dumps.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::helpers::*;

/// The DOM of `url` after its scripts ran for `budget` of virtual time, and chromium's stderr.
fn chromium_dom(url: &str, budget: Duration) -> (String, String) {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--virtual-time-budget={}", budget.as_millis()))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("chromium is installed (Debian package chromium; scripts/test installs it)");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "chromium failed: {stderr}");
    (String::from_utf8(out.stdout).unwrap(), stderr)
}

/// The value of attribute `attr` in the first tag that contains `marker`.
fn attribute(dom: &str, marker: &str, attr: &str) -> Option<String> {
    let at = dom.find(marker)?;
    let start = dom[..=at].rfind('<')?;
    let tag = &dom[start..start + dom[start..].find('>')?];
    let value = tag.split(&format!(" {attr}=\"")).nth(1)?;
    Some(value[..value.find('"')?].to_owned())
}

fn number(dom: &str, marker: &str, attr: &str) -> f64 {
    let v = attribute(dom, marker, attr).unwrap_or_else(|| panic!("no {attr} on {marker}:\n{dom}"));
    v.parse().unwrap_or_else(|_| panic!("{marker} {attr}={v:?}"))
}

#[tokio::test]
async fn the_status_page_plots_the_traffic_a_test_sent_without_console_errors() {
    let _up = broker().shared().await;
    let spool = tempfile::tempdir().unwrap();
    let bridge = Bridge::spawn(BridgeOptions::new(spool.path())).await;
    for n in 0..40 {
        assert_eq!(bridge.send(&Webhook::rename("@TGS#status", n)).await.0, 200);
    }
    let wrong = signed_query(now_secs()).replace("Sign=", "Sign=0");
    for _ in 0..5 {
        assert_eq!(bridge.post(&wrong, Webhook::sample().body()).await.0, 401);
    }
    read_exactly(&bridge.topic, 40, Duration::from_secs(30));
    // The sampler takes a sample every 2 s: wait for the one that holds the deliveries.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status: serde_json::Value = bridge.get("/status.json").await.json().await.unwrap();
        let samples = status["samples"].as_array().unwrap();
        let seen = |f: &dyn Fn(&serde_json::Value) -> bool| samples.iter().any(f);
        if seen(&|s| s["rate"]["accepted"].as_f64() > Some(0.0))
            && seen(&|s| s["rate"]["rejected_sign"].as_f64() > Some(0.0))
            && seen(&|s| s["p99"].is_number())
        {
            break;
        }
        assert!(Instant::now() < deadline, "no sample of the traffic in /status.json: {status}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let (dom, stderr) = chromium_dom(&bridge.admin_url("/"), Duration::from_secs(5));

    let console: Vec<&str> = stderr.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(console.is_empty(), "the page wrote to the console: {console:#?}");
    assert_eq!(attribute(&dom, "<body", "data-errors").as_deref(), Some(""), "{dom}");
    assert!(number(&dom, "<body", "data-renders") >= 2.0, "the page refreshed itself: {dom}");
    // The rates drawn add up to the webhooks sent: 40 accepted and 5 refused (rates per s over 2 s
    // samples; the sampler's ticks may stretch a little under load, hence the margin).
    let accepted = number(&dom, "data-series=\"accepted\"", "data-sum") * 2.0;
    let refused = number(&dom, "data-series=\"rejected_sign\"", "data-sum") * 2.0;
    assert!((30.0..=42.0).contains(&accepted), "the accepted plot adds up to {accepted} webhooks, not 40");
    assert!((3.5..=5.5).contains(&refused), "the refused plot adds up to {refused} webhooks, not 5");
    assert!(number(&dom, "data-series=\"p99\"", "data-points") >= 1.0, "a delivery latency was drawn");
    assert!(number(&dom, "id=\"plot-spool\"", "data-points") >= 1.0);
    assert!(number(&dom, "id=\"plot-lag\"", "data-points") >= 1.0);
    assert!(dom.contains(">ready<"), "Kafka answers, so the page says ready");
    // Self-contained: nothing is loaded from elsewhere.
    let page = bridge.get("/").await.text().await.unwrap();
    let svg_namespace = page.matches("http://www.w3.org/2000/svg").count();
    assert_eq!(page.matches("://").count(), svg_namespace, "the page names no URL but SVG's namespace");
}
