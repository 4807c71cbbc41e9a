//! Benchmark: API, SSE and dashboard (issue 8). Results and the command to
//! reproduce them are in docs/benchmarks.md ("API, SSE and dashboard").
//!
//! cargo bench --bench api            # all three
//! cargo bench --bench api -- api     # one of: api, sse, dashboard

#[path = "../tests/observe/cdp.rs"]
mod cdp;
#[path = "../tests/observe/fixture.rs"]
mod fixture;

use fixture::*;
use floyd::engine::Phase;
use floyd::hub::Hub;
use futures::StreamExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn fill(hub: &Hub, n: usize) {
    let phases = [
        Phase::Complete,
        Phase::Complete,
        Phase::Complete,
        Phase::Progressing,
        Phase::Complete,
        Phase::Paused,
        Phase::Complete,
        Phase::AwaitingPromotion,
        Phase::Complete,
        Phase::Failed,
    ];
    for i in 0..n {
        let mut v = view(&format!("svc-{i:04}"), phases[i % phases.len()]);
        v.commit = Some(commit(
            "0123456789abcdef0123456789abcdef01234567",
            &format!("svc-{i:04}: bump image to 1.{i}.0 and raise the memory limit"),
        ));
        hub.set_service(v);
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

async fn bench_api() {
    let s = Server::start().await;
    fill(&s.hub, 1000);
    let c = reqwest::Client::new();
    let url = s.at("/api/v1/services");
    let body = c
        .get(&url)
        .send()
        .await
        .expect("get")
        .bytes()
        .await
        .expect("body");
    println!(
        "api: GET /api/v1/services with 1,000 services: {} KiB",
        body.len() / 1024
    );
    for _ in 0..50 {
        let _ = c.get(&url).send().await.expect("get").bytes().await;
    }
    for conc in [1usize, 8] {
        let n = 2000 / conc;
        let mut tasks = Vec::new();
        let start = Instant::now();
        for _ in 0..conc {
            let c = c.clone();
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(n);
                for _ in 0..n {
                    let t = Instant::now();
                    let b = c
                        .get(&url)
                        .send()
                        .await
                        .expect("get")
                        .bytes()
                        .await
                        .expect("body");
                    assert!(b.len() > 100_000);
                    lat.push(t.elapsed());
                }
                lat
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("task"));
        }
        let wall = start.elapsed();
        all.sort();
        println!(
            "api: {} requests, {conc} concurrent: p50 {}, p90 {}, p99 {}, max {}; {:.0} req/s",
            all.len(),
            ms(pct(&all, 0.5)),
            ms(pct(&all, 0.9)),
            ms(pct(&all, 0.99)),
            ms(pct(&all, 1.0)),
            all.len() as f64 / wall.as_secs_f64()
        );
    }
    s.shutdown().await;
}

/// Publishes `events` service updates with `clients` SSE clients reading.
/// `pace`: updates per millisecond-sleep (None: a tight burst). Returns the
/// publisher's time (what a rollout pays), the time until every client had
/// every event (or gave up), and how many clients were told they lagged.
async fn sse_round(
    clients: usize,
    events: usize,
    pace: Option<usize>,
) -> (Duration, Duration, u64) {
    let s = Server::start().await;
    fill(&s.hub, 100);
    let received = Arc::new(AtomicU64::new(0));
    let lagged = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for _ in 0..clients {
        let res = reqwest::get(s.at("/api/v1/events")).await.expect("sse");
        let received = received.clone();
        let lagged = lagged.clone();
        readers.push(tokio::spawn(async move {
            let mut st = res.bytes_stream();
            let mut tail = String::new();
            while let Some(Ok(chunk)) = st.next().await {
                tail.push_str(&String::from_utf8_lossy(&chunk));
                // Count whole events only (chunks may split them).
                let cut = tail.rfind("\n\n").map(|i| i + 2).unwrap_or(0);
                let done: String = tail.drain(..cut).collect();
                received.fetch_add(
                    done.matches("event: service").count() as u64,
                    Ordering::Relaxed,
                );
                if done.contains("event: lagged") {
                    lagged.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    eventually("clients subscribed", || s.hub.subscriber_count() >= clients).await;
    let start = Instant::now();
    let mut publishing = Duration::ZERO;
    for i in 0..events {
        let t = Instant::now();
        let mut v = view(&format!("svc-{:04}", i % 100), Phase::Progressing);
        v.revisions[0].ready = (i % 4) as u32;
        v.reason = format!("step {i}");
        s.hub.set_service(v);
        publishing += t.elapsed();
        match pace {
            Some(n) if i % n == n - 1 => tokio::time::sleep(Duration::from_millis(1)).await,
            None if i % 64 == 0 => tokio::task::yield_now().await,
            _ => {}
        }
    }
    let want = (clients * events) as u64;
    // Until every client has every event, or progress stops (lagged clients
    // skip what they missed), or 30 s.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = (u64::MAX, Instant::now());
    loop {
        let got = received.load(Ordering::Relaxed);
        if got >= want || Instant::now() > deadline {
            last.1 = Instant::now();
            break;
        }
        if got != last.0 {
            last = (got, Instant::now());
        } else if last.1.elapsed() > Duration::from_millis(500) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // When the last event arrived.
    let delivered = last.1.duration_since(start);
    let lag = lagged.load(Ordering::Relaxed);
    for r in readers {
        r.abort();
    }
    s.shutdown().await;
    (publishing, delivered, lag)
}

async fn bench_sse() {
    for (events, pace, what) in [
        (10_000usize, None, "tight burst"),
        (5_000, Some(5), "paced, ~5 updates/ms"),
    ] {
        for clients in [0usize, 100] {
            let (publish, delivered, lagged) = sse_round(clients, events, pace).await;
            println!(
                "sse ({what}): {events} service updates, {clients} clients: publisher cost {} ({:.1} µs/update); all delivered after {}; clients told they lagged: {lagged}",
                ms(publish),
                publish.as_secs_f64() * 1e6 / events as f64,
                ms(delivered)
            );
        }
    }
}

async fn bench_dashboard() {
    let Some(chromium) = cdp::find_chromium() else {
        println!("dashboard: SKIPPED (chromium not installed)");
        return;
    };
    let s = Server::start().await;
    fill(&s.hub, 1000);
    let browser = cdp::Browser::launch(&chromium).await;
    let mut firsts = Vec::new();
    for _ in 0..5 {
        let mut page = browser.open(&s.at("/")).await;
        let v = page
            .wait_for(
                "document.querySelectorAll('.card').length === 1000 && +document.body.dataset.firstRenderMs",
                "1,000 cards",
            )
            .await;
        firsts.push(v.as_f64().unwrap_or(f64::NAN));
        // A burst of 1,000 live updates: time until the last is on screen.
        let t = Instant::now();
        for i in 0..1000 {
            let mut v = view(&format!("svc-{i:04}"), Phase::Complete);
            v.revisions = vec![counts("bbbbbbbbbb", 4, 4, 0)];
            s.hub.set_service(v);
        }
        page.wait_for(
            "document.querySelectorAll('.card[data-phase=Complete]').length === 1000",
            "all cards Complete",
        )
        .await;
        let burst = t.elapsed();
        println!(
            "dashboard: 1,000 live updates on screen after {}",
            ms(burst)
        );
        page.call("Page.close", serde_json::json!({})).await;
        fill(&s.hub, 1000);
    }
    firsts.sort_by(f64::total_cmp);
    println!(
        "dashboard: first render of 1,000 services (navigation start → all cards in the DOM): runs {:?} ms, median {} ms",
        firsts,
        firsts[firsts.len() / 2]
    );
    drop(browser);
    s.shutdown().await;
}

fn main() {
    let which: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |name: &str| which.is_empty() || which.iter().any(|w| w == name);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        if want("api") {
            bench_api().await;
        }
        if want("sse") {
            bench_sse().await;
        }
        if want("dashboard") {
            bench_dashboard().await;
        }
    });
}
