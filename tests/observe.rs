//! Integration tests of issue 8 (API, SSE, webhooks, metrics, CLI clients,
//! notifications, the dashboard in Chromium). One test binary; the parts
//! live in `tests/observe/`.

#[path = "observe/fixture.rs"]
mod fixture;

#[path = "observe/cdp.rs"]
mod cdp;

#[path = "observe/api.rs"]
mod api;
#[path = "observe/canary.rs"]
mod canary;
#[path = "observe/cli.rs"]
mod cli;
#[path = "observe/dashboard.rs"]
mod dashboard;
#[path = "observe/e2e.rs"]
mod e2e;
#[path = "observe/hooks.rs"]
mod hooks;
#[path = "observe/logs.rs"]
mod logs;
#[path = "observe/metrics.rs"]
mod metrics;
#[path = "observe/notify.rs"]
mod notify;
#[path = "observe/sse.rs"]
mod sse;
