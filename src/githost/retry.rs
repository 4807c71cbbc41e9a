//! When to retry a host API call, and after how long (pure: the clock is an
//! argument). Server errors back off exponentially; rate limits wait for
//! what the host says: `Retry-After` (seconds or an HTTP date is not
//! supported: seconds only, as GitHub, GitLab and Gitea send), else the reset
//! time (`X-RateLimit-Reset` on GitHub and Gitea, `RateLimit-Reset` on
//! GitLab, Unix seconds).

use std::time::Duration;

/// Attempts in all (the first included) before a call gives up.
pub const MAX_ATTEMPTS: u32 = 5;

/// The parts of an answer that decide a retry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    /// `None`: no answer (connection refused, timeout).
    pub status: Option<u16>,
    pub retry_after: Option<String>,
    pub ratelimit_remaining: Option<String>,
    pub ratelimit_reset: Option<String>,
}

/// What to do after an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retry {
    /// Not retryable (success, or a client error).
    No,
    /// Retry after this long.
    After(Duration),
    /// Rate limited for longer than the caller waits: give up until then
    /// (seconds from now).
    RateLimited(Duration),
    /// Retryable, but the attempts are spent.
    GiveUp,
}

/// `attempt`: 1 for the answer to the first try. `now`: Unix seconds.
pub fn decide(a: &Answer, attempt: u32, now: u64, max_wait: Duration) -> Retry {
    let num = |s: &Option<String>| s.as_deref().and_then(|v| v.trim().parse::<u64>().ok());
    let rate_limited = match a.status {
        Some(429) => true,
        Some(403) => a.retry_after.is_some() || num(&a.ratelimit_remaining) == Some(0),
        _ => false,
    };
    if rate_limited {
        let wait = match (num(&a.retry_after), num(&a.ratelimit_reset)) {
            (Some(s), _) => Duration::from_secs(s),
            // A reset in the past (clock skew): try again soon.
            (None, Some(reset)) => Duration::from_secs(reset.saturating_sub(now).max(1)),
            (None, None) => Duration::from_secs(60),
        };
        if wait > max_wait {
            return Retry::RateLimited(wait);
        }
        return if attempt >= MAX_ATTEMPTS {
            Retry::GiveUp
        } else {
            Retry::After(wait)
        };
    }
    let transient = match a.status {
        None => true,
        Some(s) => s >= 500 || s == 408,
    };
    if !transient {
        return Retry::No;
    }
    if attempt >= MAX_ATTEMPTS {
        return Retry::GiveUp;
    }
    // 0.5 s, 1 s, 2 s, 4 s, ... capped at 30 s.
    let ms = 500u64.saturating_mul(1 << (attempt - 1).min(6)).min(30_000);
    Retry::After(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, headers: &[(&str, &str)]) -> Answer {
        let h = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.to_string())
        };
        Answer {
            status: Some(status),
            retry_after: h("retry-after"),
            ratelimit_remaining: h("remaining"),
            ratelimit_reset: h("reset"),
        }
    }

    const NOW: u64 = 1_700_000_000;
    const WAIT: Duration = Duration::from_secs(120);

    #[test]
    fn table() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        let cases: &[(&str, Answer, u32, Retry)] = &[
            ("ok", answer(200, &[]), 1, Retry::No),
            ("created", answer(201, &[]), 1, Retry::No),
            ("not found", answer(404, &[]), 1, Retry::No),
            ("validation", answer(422, &[]), 1, Retry::No),
            (
                "forbidden without rate-limit headers is a permission error",
                answer(403, &[("remaining", "12")]),
                1,
                Retry::No,
            ),
            ("5xx first", answer(502, &[]), 1, Retry::After(ms(500))),
            ("5xx third", answer(503, &[]), 3, Retry::After(s(2))),
            ("5xx spent", answer(500, &[]), MAX_ATTEMPTS, Retry::GiveUp),
            (
                "no answer backs off",
                Answer::default(),
                2,
                Retry::After(s(1)),
            ),
            (
                "429 retry-after",
                answer(429, &[("retry-after", "7")]),
                1,
                Retry::After(s(7)),
            ),
            (
                "403 remaining 0 waits for the reset",
                answer(
                    403,
                    &[("remaining", "0"), ("reset", &(NOW + 42).to_string())],
                ),
                1,
                Retry::After(s(42)),
            ),
            (
                "retry-after wins over reset",
                answer(
                    403,
                    &[
                        ("remaining", "0"),
                        ("retry-after", "3"),
                        ("reset", &(NOW + 42).to_string()),
                    ],
                ),
                1,
                Retry::After(s(3)),
            ),
            (
                "reset in the past: one second",
                answer(429, &[("reset", &(NOW - 5).to_string())]),
                1,
                Retry::After(s(1)),
            ),
            (
                "429 without headers: a minute",
                answer(429, &[]),
                1,
                Retry::After(s(60)),
            ),
            (
                "longer than the caller waits",
                answer(
                    403,
                    &[("remaining", "0"), ("reset", &(NOW + 3600).to_string())],
                ),
                1,
                Retry::RateLimited(s(3600)),
            ),
            (
                "rate limited, attempts spent",
                answer(429, &[("retry-after", "1")]),
                MAX_ATTEMPTS,
                Retry::GiveUp,
            ),
        ];
        for (what, a, attempt, want) in cases {
            assert_eq!(&decide(a, *attempt, NOW, WAIT), want, "{what}");
        }
    }

    #[test]
    fn backoff_is_capped() {
        for attempt in 1..MAX_ATTEMPTS {
            match decide(&answer(500, &[]), attempt, NOW, WAIT) {
                Retry::After(d) => assert!(d <= Duration::from_secs(30)),
                other => panic!("{other:?}"),
            }
        }
    }
}
