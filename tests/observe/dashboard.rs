//! The dashboard in a real headless Chromium: live content over SSE, DOM
//! assertions after a rollout step, a screenshot in `test-artifacts/`.

use crate::cdp::{Browser, find_chromium};
use crate::fixture::*;
use floyd::engine::Phase;
use floyd::hub::{Event, Hub};
use std::path::PathBuf;

/// Chromium, or `None` (test skipped) when it is absent and `CI` is unset.
pub fn chromium() -> Option<PathBuf> {
    if let Some(p) = find_chromium() {
        return Some(p);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "chromium is not installed; scripts/test.sh installs it (apt-get install chromium)"
    );
    eprintln!("SKIPPED: chromium not installed (install it or run scripts/test.sh)");
    None
}

pub fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("create test-artifacts/");
    dir
}

/// A small fleet in every interesting state.
pub fn fleet(hub: &Hub) {
    let mut web = view("web", Phase::Progressing);
    web.reason = "2 of 4 new instances available; waiting for minReadySeconds".into();
    hub.set_service(web);
    let mut api = complete("api");
    api.gpu = None;
    api.strategy = "Recreate".into();
    hub.set_service(api);
    let mut llm = view("llm-serve", Phase::AwaitingPromotion);
    llm.strategy = "BlueGreen".into();
    llm.replicas = 2;
    llm.revisions = vec![counts("bbbbbbbbbb", 2, 2, 0), counts("aaaaaaaaaa", 2, 2, 0)];
    llm.reason = "preview revision ready; waiting for `floyd promote llm-serve`".into();
    llm.active = Some(rev("aaaaaaaaaa"));
    llm.preview = Some(rev("bbbbbbbbbb"));
    hub.set_service(llm);
    let mut checkout = view("checkout", Phase::Progressing);
    checkout.gpu = None;
    checkout.strategy = "Canary".into();
    checkout.canary = Some(floyd::engine::CanaryStatus {
        step: 1,
        steps: 6,
        current: "pause 60s".into(),
        weight: 5,
    });
    hub.set_service(checkout);
    for name in ["billing", "search", "auth", "notifications", "worker"] {
        let mut v = complete(name);
        v.gpu = None;
        hub.set_service(v);
    }
    let mut emb = view("embeddings", Phase::Paused);
    emb.reason = "paused by a person".into();
    hub.set_service(emb);
    hub.record_history(entry("api", Phase::Complete, 1_790_000_000));
}

/// The rollout step played while the page is open: web completes, checkout
/// fails, rolls back and a revert commit is pushed.
pub fn rollout_step(hub: &Hub) {
    hub.emit(Event::Sync {
        commit: commit(
            "89abcdef0123456789abcdef0123456789abcdef",
            "checkout: bump to 2.0.0",
        ),
    });
    let mut web = complete("web");
    web.commit = Some(commit(
        "0123456789abcdef0123456789abcdef01234567",
        "web: bump to 1.4.2",
    ));
    hub.set_service(web);
    hub.record_history(entry("web", Phase::Complete, 1_790_000_050));
    let mut failed = entry("checkout", Phase::Failed, 1_790_000_060);
    failed.reason = "readiness probe failed 3 times on bbbbbbbb".into();
    hub.record_history(failed);
    let mut rb = view("checkout", Phase::RolledBack);
    rb.gpu = None;
    rb.target_revision = Some(rev("aaaaaaaaaa"));
    rb.reason = "rolled back: readiness probe failed 3 times on bbbbbbbb".into();
    rb.revisions = vec![counts("aaaaaaaaaa", 4, 4, 0), counts("bbbbbbbbbb", 0, 0, 2)];
    hub.set_service(rb);
    let mut back = entry("checkout", Phase::Complete, 1_790_000_070);
    back.rollback = true;
    back.from_revision = Some(rev("bbbbbbbbbb"));
    back.to_revision = rev("aaaaaaaaaa");
    back.revert_commit = Some("fedcba9876543210fedcba9876543210fedcba98".into());
    hub.record_history(back);
    hub.emit(Event::Revert {
        service: "checkout".into(),
        commit: Some("fedcba9876543210fedcba9876543210fedcba98".into()),
        reverted: vec!["89abcdef0123456789abcdef0123456789abcdef".into()],
        ok: true,
        message: "Revert \"checkout: bump to 2.0.0\"".into(),
    });
}

const PHASE_OF: &str = "(n) => document.querySelector(`[data-service=\"${n}\"]`)?.dataset.phase";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_live_in_chromium() {
    let Some(chromium) = chromium() else { return };
    let s = Server::start().await;
    fleet(&s.hub);
    let browser = Browser::launch(&chromium).await;
    let mut page = browser.open(&s.at("/")).await;
    page.wait_for(
        "document.querySelectorAll('.card').length === 10 && document.getElementById('live').classList.contains('on')",
        "ten cards and a live event stream",
    )
    .await;
    let phase = |n: &str| format!("({PHASE_OF})('{n}')");
    assert_eq!(page.eval(&phase("web")).await, "Progressing");
    assert_eq!(page.eval(&phase("llm-serve")).await, "AwaitingPromotion");
    let bars = "(n) => [...document.querySelectorAll(`[data-service=\"${n}\"] .bar`)].map(b => [b.dataset.revision, +b.dataset.ready, +b.dataset.starting, +b.dataset.terminating, +b.dataset.desired])";
    assert_eq!(
        page.eval(&format!("({bars})('web')")).await,
        serde_json::json!([["bbbbbbbbbb", 2, 0, 0, 4], ["aaaaaaaaaa", 2, 0, 1, 2]])
    );
    // Attention first: the paused and progressing cards come before complete ones.
    let order = page
        .eval("[...document.querySelectorAll('.card')].sort((a,b)=>a.style.order-b.style.order).map(c=>c.dataset.service)[0]")
        .await;
    assert_eq!(order, "llm-serve");
    // A canary card shows its step and weight.
    let canary = "document.querySelector('[data-service=\"checkout\"] .canary')";
    assert_eq!(page.eval(&format!("{canary}.dataset.weight")).await, "5");
    assert_eq!(
        page.eval(&format!("{canary}.textContent")).await,
        "canary step 2/6: pause 60s · weight 5%"
    );

    // A rollout step happens while the page is open: it arrives over SSE.
    rollout_step(&s.hub);
    page.wait_for(
        &format!(
            "{} === 'Complete' && {} === 'RolledBack'",
            phase("web"),
            phase("checkout")
        ),
        "web Complete and checkout RolledBack",
    )
    .await;
    assert_eq!(
        page.eval(&format!("({bars})('web')")).await,
        serde_json::json!([["bbbbbbbbbb", 4, 0, 0, 4]])
    );
    assert_eq!(
        page.eval(&format!("({bars})('checkout')")).await,
        serde_json::json!([["aaaaaaaaaa", 4, 0, 0, 4], ["bbbbbbbbbb", 0, 0, 2, 0]])
    );
    assert_eq!(
        page.eval(&format!("{canary}.hidden")).await,
        true,
        "no canary line once rolled back"
    );
    let feed = page
        .wait_for(
            "(t => t.includes('revert') && t)(document.getElementById('feed').innerText)",
            "the revert in the activity list",
        )
        .await;
    let feed = feed.as_str().unwrap_or_default().to_string();
    assert!(feed.contains("readiness probe failed 3 times"), "{feed}");
    assert!(feed.contains("rolled back"), "{feed}");
    let sync = page.eval("document.getElementById('sync').innerText").await;
    assert!(
        sync.as_str()
            .unwrap_or_default()
            .contains("checkout: bump to 2.0.0"),
        "{sync}"
    );

    // History with the revert commit marked.
    page.eval("document.querySelector('[data-service=\"checkout\"] button.link').click()")
        .await;
    let hist = page
        .wait_for(
            "document.querySelector('[data-service=\"checkout\"] .hist')?.innerText",
            "checkout's history",
        )
        .await;
    let hist = hist.as_str().unwrap_or_default().to_string();
    assert!(hist.contains("revert fedcba9"), "{hist}");
    assert!(
        hist.contains("rollback") && hist.contains("Failed"),
        "{hist}"
    );

    // Controls: offered because a token is configured, usable once pasted.
    let promote = "document.querySelector('[data-service=\"llm-serve\"] button[data-cmd=promote]')";
    assert_eq!(page.eval(&format!("{promote}.disabled")).await, true);
    page.eval(&format!(
        "(t => {{ t.value = '{TOKEN}'; t.dispatchEvent(new Event('input')); }})(document.getElementById('token'))"
    ))
    .await;
    page.wait_for(&format!("!{promote}.disabled"), "promote enabled")
        .await;
    page.eval(&format!("{promote}.click()")).await;
    page.wait_for(
        &format!("{} === 'Progressing'", phase("llm-serve")),
        "llm-serve promoted",
    )
    .await;
    assert!(
        s.commands
            .lock()
            .expect("log")
            .iter()
            .any(|(svc, c)| svc == "llm-serve" && *c == floyd::engine::Command::Promote)
    );
    // The token stays in this tab's sessionStorage only.
    assert_eq!(
        page.eval("sessionStorage.getItem('floyd.token')").await,
        TOKEN
    );
    assert_eq!(page.eval("localStorage.length").await, 0);

    // Screenshots, light and dark, for people to look at.
    page.eval("document.querySelector('[data-service=\"checkout\"] button.link').click()")
        .await;
    page.eval("document.querySelector('[data-service=\"checkout\"] button.link').click()")
        .await;
    page.wait_for("document.querySelector('.hist')", "history open")
        .await;
    let dir = artifacts();
    page.color_scheme("light").await;
    page.screenshot(&dir.join("dashboard.png")).await;
    page.color_scheme("dark").await;
    page.screenshot(&dir.join("dashboard-dark.png")).await;
    let png = std::fs::read(dir.join("dashboard.png")).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    drop(page);
    drop(browser);
    s.shutdown().await;
}
