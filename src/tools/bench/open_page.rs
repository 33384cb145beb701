//! The console's group page held open during a broker benchmark
//! (`paysync bench --console`): one operator logged in, loading the page as
//! often as the page reloads itself, so its cost shows in the child's CPU.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How often an open group page reloads itself.
const PAGE_REFRESH: Duration = Duration::from_secs(10);

/// One operator with the group page open: logs in once, then loads the
/// page every [`PAGE_REFRESH`] until aborted, counting the loads.
pub(super) async fn open_page(admin_port: u16, password: String, loads: Arc<AtomicUsize>) {
    let base = format!("http://127.0.0.1:{admin_port}/console");
    let http = match crate::top::client::loopback_builder()
        .ok()
        .and_then(|builder| {
            builder
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .ok()
        }) {
        Some(http) => http,
        None => return,
    };
    let mut cookie = None;
    loop {
        match &cookie {
            None => {
                let answer = http
                    .post(format!("{base}/login"))
                    .form(&[("user", "bench"), ("password", password.as_str())])
                    .send()
                    .await;
                cookie = answer.ok().and_then(|answer| {
                    let line = answer.headers().get("set-cookie")?.to_str().ok()?;
                    Some(line.split(';').next()?.to_owned())
                });
                if cookie.is_none() {
                    // Not serving yet.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
            Some(cookie) => {
                let loaded = http.get(&base).header("cookie", cookie).send().await;
                if let Ok(answer) = loaded
                    && answer.status().is_success()
                    && answer.text().await.is_ok()
                {
                    loads.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(PAGE_REFRESH).await;
            }
        }
    }
}
