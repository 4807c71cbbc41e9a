//! HTTP: webhooks, `/healthz`, `/readyz`, `/metrics`, the JSON API,
//! server-sent events and the dashboard page.
