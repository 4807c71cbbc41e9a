//! Kube runtime overhead against the fake API server (loopback HTTP, the same
//! server the tests use): `observe` of one service with pods read by list
//! calls vs from the watch-fed cache, and one `Scale` action. The API server
//! costs nearly nothing here, so this measures Floyd's side: request
//! building, JSON decoding, translation into `Observed`.
//!
//!   cargo bench --bench kube
//!
//! Prints one line per case: iterations, median and p95 in microseconds.

#[allow(dead_code)]
#[path = "../tests/kube/fake_api.rs"]
mod fake_api;
#[allow(dead_code)]
#[path = "../tests/kube/support.rs"]
mod support;

use fake_api::{FakeApi, FakeNode};
use floyd::runtime::kube::KubeRuntime;
use floyd::runtime::{Action, Runtime};
use floyd::time::Time;
use std::time::{Duration, Instant};

fn stats(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    (
        us(v[v.len() / 2]),
        us(v[(v.len() * 95 / 100).min(v.len() - 1)]),
    )
}

async fn time<F, Fut>(label: &str, n: usize, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..n / 10 {
        f().await; // warm-up
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f().await;
        samples.push(t.elapsed());
    }
    let (median, p95) = stats(samples);
    println!("{label:<44} n={n:<5} median {median:>9.0} us   p95 {p95:>9.0} us");
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio");
    rt.block_on(async {
        for pods in [10u32, 100] {
            let fake = FakeApi::start(vec![FakeNode::cpu("node-1")]).await;
            let listed = KubeRuntime::new(fake.client("apps"), "apps");
            let watched = KubeRuntime::new(fake.client("apps"), "apps")
                .with_pod_watch(Duration::from_secs(3600));
            let web = support::name("web");
            let t = support::template("ghcr.io/acme/web:1");
            let r = support::rev(&t);
            let spec = support::spec(pods, t.clone());
            listed
                .apply(
                    &web,
                    &spec,
                    &[
                        Action::CreateRevision {
                            revision: r.clone(),
                            template: t,
                        },
                        Action::Scale {
                            revision: r.clone(),
                            replicas: pods,
                        },
                    ],
                )
                .await
                .expect("apply");
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let o = listed
                    .observe(&web, Some(&spec), Time::now_wall())
                    .await
                    .expect("observe");
                let cached = watched
                    .observe(&web, Some(&spec), Time::now_wall())
                    .await
                    .expect("observe");
                let ready = |o: &floyd::runtime::Observed| o.revision(&r).map(|x| x.ready());
                if ready(&o) == Some(pods)
                    && ready(&cached) == Some(pods)
                    && watched.pod_cache_synced()
                {
                    break;
                }
                assert!(Instant::now() < deadline, "pods never became ready");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            time(
                &format!("observe, {pods} pods, list calls"),
                300,
                || async {
                    listed
                        .observe(&web, Some(&spec), Time::now_wall())
                        .await
                        .expect("observe");
                },
            )
            .await;
            time(
                &format!("observe, {pods} pods, watch cache"),
                300,
                || async {
                    watched
                        .observe(&web, Some(&spec), Time::now_wall())
                        .await
                        .expect("observe");
                },
            )
            .await;
            time(
                &format!("apply Scale (same count), {pods} pods"),
                300,
                || async {
                    listed
                        .apply(
                            &web,
                            &spec,
                            &[Action::Scale {
                                revision: r.clone(),
                                replicas: pods,
                            }],
                        )
                        .await
                        .expect("scale");
                },
            )
            .await;
        }
    });
}
