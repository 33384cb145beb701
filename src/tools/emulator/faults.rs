//! Fault injection for the emulator: what a scenario file, the command-line
//! flags or `PUT /emulator/faults` can make the gateway do, and the per-app
//! flow control that answers code 7 with a real ban.
//!
//! Rates are probabilities in [0, 1] drawn per request from a seedable RNG, so
//! a run with `seed` set is reproducible.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Everything the emulator can be told to get wrong.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    /// Added to every request before it is answered.
    pub latency_ms: u64,
    /// Uniform extra latency in [0, latency_jitter_ms].
    pub latency_jitter_ms: u64,
    /// Answer HTTP 413 to requests (query string and body) larger than this.
    pub max_request_bytes: Option<usize>,
    /// Answer HTTP 502 with an HTML body, as a proxy in front of a dead backend does.
    pub http_502_rate: f64,
    /// Answer HTTP 503 with `Retry-After: 1`.
    pub http_503_rate: f64,
    /// Close the connection without answering.
    pub drop_connection_rate: f64,
    /// Answer code 10 "Service currently unavailable".
    pub unavailable_rate: f64,
    /// Answer code 15 with `isp.top-remote-connection-error`.
    pub isp_error_rate: f64,
    /// Answer `success=false` (the service did not handle the call).
    pub service_failure_rate: f64,
    /// Answer `success=true, model=false` with `reject_code`/`reject_message`.
    pub reject_rate: f64,
    /// Orders with these `order_id`s are always rejected that way.
    pub reject_order_ids: Vec<String>,
    /// Orders with these `order_id`s are always answered `success=false`
    /// (a transient failure): their events retry until the fault is lifted.
    pub fail_order_ids: Vec<String>,
    pub reject_code: String,
    pub reject_message: String,
    /// Answer code 11 (insufficient isv permissions) to every call.
    pub permission_denied: bool,
    /// Per-app flow control: more than this many calls in one second starts a ban.
    pub rate_limit: Option<RateLimit>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            latency_ms: 0,
            latency_jitter_ms: 0,
            http_502_rate: 0.0,
            http_503_rate: 0.0,
            drop_connection_rate: 0.0,
            unavailable_rate: 0.0,
            isp_error_rate: 0.0,
            service_failure_rate: 0.0,
            reject_rate: 0.0,
            reject_order_ids: Vec::new(),
            fail_order_ids: Vec::new(),
            max_request_bytes: None,
            reject_code: "404".to_owned(),
            reject_message: "未找到".to_owned(),
            permission_denied: false,
            rate_limit: None,
        }
    }
}

/// Per-app flow control, as the gateway's `accesscontrol` does it: a token
/// bucket per app key (docs/top-protocol.md, the emulator checklist).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// The bucket's refill rate.
    pub calls_per_second: u32,
    /// The bucket's size: calls allowed at once after a quiet spell
    /// (default: one second's worth).
    #[serde(default)]
    pub burst: Option<u32>,
    /// How long a ban lasts once the bucket is empty.
    pub ban_seconds: u64,
}

impl RateLimit {
    fn capacity(&self) -> f64 {
        f64::from(self.burst.unwrap_or(self.calls_per_second))
    }
}

impl Faults {
    /// Checks that every rate is a probability.
    pub fn validate(&self) -> Result<(), String> {
        let rates = [
            ("http_502_rate", self.http_502_rate),
            ("http_503_rate", self.http_503_rate),
            ("drop_connection_rate", self.drop_connection_rate),
            ("unavailable_rate", self.unavailable_rate),
            ("isp_error_rate", self.isp_error_rate),
            ("service_failure_rate", self.service_failure_rate),
            ("reject_rate", self.reject_rate),
        ];
        for (name, rate) in rates {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{name} must be between 0 and 1, got {rate}"));
            }
        }
        if let Some(limit) = &self.rate_limit
            && (limit.calls_per_second == 0 || limit.ban_seconds == 0)
        {
            return Err("rate_limit needs calls_per_second and ban_seconds above 0".into());
        }
        Ok(())
    }

    /// Reads a scenario file (TOML).
    pub fn from_toml(text: &str) -> Result<Faults, String> {
        let faults: Faults = toml::from_str(text).map_err(|e| e.to_string())?;
        faults.validate()?;
        Ok(faults)
    }
}

/// One app's bucket and ban.
#[derive(Debug)]
struct AppBucket {
    tokens: f64,
    refilled: Instant,
    banned_until: Option<Instant>,
}

/// Flow-control state for every app.
#[derive(Debug, Default)]
pub struct FlowControl {
    apps: HashMap<String, AppBucket>,
    /// Bans started, over all apps (each answered by as many code 7s as calls met it).
    pub bans: u64,
}

impl FlowControl {
    /// Counts a call; returns the remaining ban when the call is refused.
    pub fn admit(
        &mut self,
        app_key: &str,
        limit: &RateLimit,
        now: Instant,
    ) -> Result<(), Duration> {
        let capacity = limit.capacity();
        let app = self
            .apps
            .entry(app_key.to_owned())
            .or_insert_with(|| AppBucket {
                tokens: capacity,
                refilled: now,
                banned_until: None,
            });
        if let Some(until) = app.banned_until {
            if now < until {
                return Err(until - now);
            }
            // A ban ends with a full bucket.
            app.banned_until = None;
            app.tokens = capacity;
            app.refilled = now;
        }
        let elapsed = now.saturating_duration_since(app.refilled).as_secs_f64();
        app.tokens = (app.tokens + elapsed * f64::from(limit.calls_per_second)).min(capacity);
        app.refilled = now;
        if app.tokens < 1.0 {
            let ban = Duration::from_secs(limit.ban_seconds);
            app.banned_until = Some(now + ban);
            self.bans += 1;
            return Err(ban);
        }
        app.tokens -= 1.0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_files_parse_and_rates_are_checked() {
        let faults = Faults::from_toml("latency_ms = 5\nisp_error_rate = 0.25\n[rate_limit]\ncalls_per_second = 10\nban_seconds = 2\n").unwrap();
        assert_eq!(faults.latency_ms, 5);
        assert_eq!(
            faults.rate_limit,
            Some(RateLimit {
                calls_per_second: 10,
                burst: None,
                ban_seconds: 2
            })
        );
        assert!(
            Faults::from_toml("isp_error_rate = 1.5")
                .unwrap_err()
                .contains("isp_error_rate")
        );
        assert!(Faults::from_toml("typo_rate = 0.1").is_err());
    }

    #[test]
    fn passing_the_limit_starts_a_ban_that_ends() {
        let limit = RateLimit {
            calls_per_second: 2,
            burst: None,
            ban_seconds: 3,
        };
        let mut flow = FlowControl::default();
        let t0 = Instant::now();
        assert!(flow.admit("a", &limit, t0).is_ok());
        assert!(flow.admit("a", &limit, t0).is_ok());
        assert_eq!(flow.admit("a", &limit, t0), Err(Duration::from_secs(3)));
        assert_eq!(flow.admit("a", &limit, t0), Err(Duration::from_secs(3)));
        assert_eq!(flow.bans, 1, "two refusals, one ban");
        // Another app has its own window.
        assert!(flow.admit("b", &limit, t0).is_ok());
        assert_eq!(
            flow.admit("a", &limit, t0 + Duration::from_secs(1)),
            Err(Duration::from_secs(2))
        );
        assert!(flow.admit("a", &limit, t0 + Duration::from_secs(3)).is_ok());
    }

    #[test]
    fn the_bucket_refills_at_the_rate_and_holds_its_burst() {
        let limit = RateLimit {
            calls_per_second: 10,
            burst: Some(3),
            ban_seconds: 1,
        };
        let mut flow = FlowControl::default();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(flow.admit("a", &limit, t0).is_ok(), "the burst at once");
        }
        // Then one call per 100 ms, for as long as it lasts.
        for i in 1..=50 {
            let at = t0 + Duration::from_millis(100 * i);
            assert!(flow.admit("a", &limit, at).is_ok(), "call {i} at the rate");
        }
        let at = t0 + Duration::from_millis(5_000);
        assert!(flow.admit("a", &limit, at).is_err(), "faster than the rate");
    }
}
