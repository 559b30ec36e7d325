//! The dashboard of `cohort serve --http`, in a real headless Chromium: a leader, a standby and
//! a node process on loopback, checkpoints every 200 ms.
//!
//! The page must show, without a reload: the leader's epoch, committed checkpoints in the
//! history chart, the node with its object count, the standby (on the leader's page; and on
//! the standby's page, who leads with a link there); then, after a SIGKILL of the node, the
//! node lost and the recovery on the timeline; then, with the store taken away, that the store
//! is unreachable. It runs under the served Content-Security-Policy, and the browser must
//! report no policy violation and no script error. Screenshots are written to
//! `target/dashboard.png` (the leader's page after the node died) and
//! `target/dashboard-standby.png`.
//!
//! Skipped, with the reason printed, when no Chromium can be found (`scripts/test.sh` installs
//! Debian's `chromium` package when missing); one that is found but cannot be driven fails the
//! test. Waits are bounded polls of the rendered DOM.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
#![allow(
    clippy::disallowed_methods,
    reason = "process-level tests measure real time and name scratch files uniquely"
)]

#[path = "support/browser.rs"]
mod browser;
mod ha_support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use browser::{Browser, Page, chromium};
use ha_support::{Proc, address_in, cohort_bin, store_dir};
use serde_json::Value;

const NODE_ENV: &str = "COHORT_DASHBOARD_TEST_NODE";

/// Not a test of its own: the body of a node process (see [`ha_support::node_role`]).
#[test]
fn node_role() {
    ha_support::node_role(NODE_ENV);
}

/// `cohort serve` with a dashboard; returns the process, its node address, its holder name and
/// its dashboard's URL.
fn spawn_serve(name: &str, store: &str) -> (Proc, String, String, String) {
    let mut cmd = Command::new(cohort_bin());
    cmd.args([
        "serve",
        "--store",
        store,
        "--listen",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        // Long enough to ride out a stalled disk (the writeback after a cold build, chromium
        // starting on two cores): the page must show epoch 1 throughout.
        "--lease",
        "3s",
        "--interval",
        "200ms",
        "--heartbeat",
        "100ms",
        "--heartbeat-timeout",
        "800ms",
    ])
    .env("RUST_LOG", "warn");
    let proc = Proc::spawn(name, cmd);
    let url = address_in(
        &proc.wait_for_line("dashboard at ", Duration::from_secs(20)),
        "dashboard at ",
    );
    let line = proc.wait_for_line("nodes connect to", Duration::from_secs(20));
    let addr = address_in(&line, "nodes connect to ");
    let holder = address_in(&line, "coordinator ")
        .trim_end_matches(':')
        .to_owned();
    (proc, addr, holder, url)
}

/// What the test reads of the page, in one evaluation.
const SNAPSHOT: &str = r##"(() => {
  if (!document.body || !document.getElementById("banner-store")) return { ready: false };
  const q = (s) => document.querySelector(s);
  const text = (s) => { const n = q(s); return n ? n.textContent.trim() : null; };
  const node = (name) => {
    const row = q(`tr.node[data-node="${name}"]`);
    return row && { objects: row.querySelector(".objects").textContent, health: row.querySelector(".health").textContent };
  };
  return {
    ready: document.body.dataset.ready === "true",
    role: document.body.dataset.role || null,
    marker: window.__notReloaded === true,
    epoch: text("#leader-epoch"),
    committed: Number(text("#history-committed")),
    committedBars: document.querySelectorAll("#chart rect.bar.committed").length,
    node: node("node-1"),
    standbys: [...document.querySelectorAll("#standbys [data-standby]")].map((li) => li.dataset.standby),
    leaderLink: (q("#leader-link") || {}).href || null,
    timeline: [...document.querySelectorAll("#timeline li[data-kind]")].map((li) => li.dataset.kind + ": " + li.textContent),
    storeBanner: q("#banner-store").hidden ? null : text("#banner-store"),
    storePill: text("#store-pill"),
    recoveryLine: text("#recovery-line"),
    retained: document.querySelectorAll("#retained tbody tr[data-checkpoint]").length,
  };
})()"##;

async fn snapshot(page: &Page<'_>) -> Value {
    page.eval(SNAPSHOT).await.unwrap_or_else(|e| panic!("{e}"))
}

/// Polls the page until `ok` holds, for at most `within`; fails with what the page shows.
async fn wait_until(
    page: &Page<'_>,
    what: &str,
    within: Duration,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let s = snapshot(page).await;
        if ok(&s) {
            return s;
        }
        if Instant::now() >= deadline {
            panic!(
                "the dashboard did not show {what} within {within:?}.\nwhat the test read: {s:#}\n--- the page's text ---\n{}",
                page.text().await
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn target_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is target/tmp.
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"))
}

#[test]
fn the_dashboard_shows_the_cohort_live_in_a_headless_browser() {
    if std::env::var_os(NODE_ENV).is_some() {
        return;
    }
    let chromium = match chromium() {
        Ok(path) => path,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let started = Instant::now();
    let (dir, url) = store_dir();
    let (a, a_addr, _a_holder, a_url) = spawn_serve("serve-a", &url);
    a.wait_for_line("leading under epoch 1", Duration::from_secs(10));
    let (b, b_addr, b_holder, b_url) = spawn_serve("serve-b", &url);
    b.wait_for_line("standby: epoch 1", Duration::from_secs(10));
    let mut node = ha_support::spawn_node(NODE_ENV, "node-1", &url, &[&a_addr, &b_addr]);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Installed but not working is a failure, not a skip: it would hide the test for good.
        let browser = Browser::launch(&chromium).await.unwrap_or_else(|why| {
            panic!(
                "{} is installed but cannot be driven: {why}",
                chromium.display()
            )
        });
        let page = browser.new_page(1280, 1000).await.unwrap();
        page.goto(&a_url).await.unwrap();

        // The leader's page: its epoch, committed checkpoints, the node and its objects, the
        // standby that announced itself.
        let s = wait_until(
            &page,
            "the leader, checkpoints, the node and the standby",
            Duration::from_secs(30),
            |s| {
                s["ready"] == true
                    && s["role"] == "leader"
                    && s["epoch"] == "1"
                    && s["committed"].as_u64().unwrap_or(0) >= 3
                    && s["committedBars"].as_u64().unwrap_or(0) >= 1
                    && s["node"]["objects"] == "4"
                    && s["node"]["health"] == "live"
                    && s["standbys"]
                        .as_array()
                        .is_some_and(|v| v.iter().any(|h| *h == *b_holder))
                    && s["retained"].as_u64().unwrap_or(0) >= 1
                    && s["recoveryLine"]
                        .as_str()
                        .is_some_and(|l| l.parse::<u64>().is_ok())
            },
        )
        .await;
        eprintln!("leader's page ready after {:?}: {s}", started.elapsed());

        // The standby's page says who leads and links to the leader's page.
        let standby = browser.new_page(1280, 800).await.unwrap();
        standby.goto(&b_url).await.unwrap();
        wait_until(
            &standby,
            "that it stands by, with a link to the leader",
            Duration::from_secs(15),
            |s| {
                s["ready"] == true
                    && s["role"] == "standby"
                    && s["epoch"] == "1"
                    && s["leaderLink"] == *a_url
                    && s["node"]["objects"] == "4"
            },
        )
        .await;
        let shot = target_dir().join("dashboard-standby.png");
        std::fs::write(&shot, standby.screenshot().await.unwrap()).unwrap();

        // A node dies: the leader's page shows it without a reload.
        page.eval("window.__notReloaded = true").await.unwrap();
        node.signal("KILL");
        node.wait_exit(Duration::from_secs(5));
        let s = wait_until(
            &page,
            "the node lost and a recovery on the timeline",
            Duration::from_secs(20),
            |s| {
                s["marker"] == true
                    && s["node"]["health"] == "lost"
                    && s["timeline"].as_array().is_some_and(|t| {
                        t.iter().any(|e| {
                            e.as_str()
                                .is_some_and(|e| e.starts_with("recovery:") && e.contains("node-1"))
                        })
                    })
            },
        )
        .await;
        eprintln!(
            "failure shown after {:?}: {}",
            started.elapsed(),
            s["timeline"]
        );

        let png = page.screenshot().await.unwrap();
        let shot = target_dir().join("dashboard.png");
        std::fs::write(&shot, &png).unwrap();
        eprintln!("screenshot: {}", shot.display());

        // The store goes away (its directory replaced by a file): the page says so.
        let store_path = PathBuf::from(&url);
        let moved = dir.path().join("store-away");
        std::fs::rename(&store_path, &moved).unwrap();
        std::fs::write(&store_path, b"not a store").unwrap();
        let s = wait_until(
            &page,
            "that the store is unreachable",
            Duration::from_secs(20),
            |s| {
                s["marker"] == true
                    && s["storePill"] == "store unreachable"
                    && s["storeBanner"]
                        .as_str()
                        .is_some_and(|b| b.contains("The store is unreachable"))
            },
        )
        .await;
        eprintln!(
            "store outage shown after {:?}: {}",
            started.elapsed(),
            s["storeBanner"]
        );
        std::fs::remove_file(&store_path).unwrap();
        std::fs::rename(&moved, &store_path).unwrap();

        // Under the served policy, nothing was blocked and no script failed.
        let problems: Vec<Value> = browser
            .events()
            .into_iter()
            .filter(|e| {
                let text = e.to_string();
                e["method"] == "Runtime.exceptionThrown"
                    || text.contains("Content Security Policy")
                    || (e["method"] == "Log.entryAdded" && e["params"]["entry"]["level"] == "error")
            })
            .collect();
        assert!(problems.is_empty(), "the browser reported: {problems:#?}");
    });
    eprintln!("dashboard test took {:?}", started.elapsed());
    drop((a, b));
}
