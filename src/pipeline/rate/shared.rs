//! The group's rate for an operator's command outside the pipeline (a
//! redrive to the API, a reconciliation, `ledger resolve`): a budget of its
//! own with its own [`Tenancy`] on the control topic, so the command takes
//! its part of the app key's quota beside the live group.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::tenancy::{Role, Tenancy};
use super::{RateBudget, RateSettings};
use crate::config::Settings;
use crate::control::Control;
use crate::control::record::CallerKind;
use crate::metrics::Metrics;

/// The group's rate as an operator's command outside the pipeline takes it
/// (a redrive to the API, a reconciliation): a budget with its own tenancy.
pub struct SharedRate {
    budget: Arc<RateBudget>,
    control: Arc<Control>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl SharedRate {
    /// Joins the callers on the app key as `kind`; `None` when the control
    /// topic is off (the command paces itself as before).
    pub async fn join(
        settings: &Settings,
        kind: CallerKind,
        weight: u32,
        ceiling: Option<f64>,
    ) -> anyhow::Result<Option<SharedRate>> {
        if !settings.control.enabled {
            return Ok(None);
        }
        let opened = {
            let settings = settings.clone();
            tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
                let consumer: rdkafka::consumer::BaseConsumer =
                    crate::kafka::clients::tool_consumer(
                        &settings,
                        &format!("{}.control-tool", settings.kafka.group_id),
                    )
                    .create()?;
                Ok(Control::open(
                    &settings,
                    &consumer,
                    crate::control::caller_name(kind),
                    None,
                )?)
            })
            .await??
        };
        let Some(control) = opened else {
            return Ok(None);
        };
        let metrics = Arc::new(Metrics::new());
        let budget = Arc::new(RateBudget::new(
            RateSettings::of(
                &settings.delivery,
                crate::config::RateLimitScope::Replica,
                settings.kafka.metadata_refresh_interval_ms,
            ),
            metrics.clone(),
            Arc::new(super::ParkPolicy::default()),
        ));
        let tenancy = Tenancy::new(
            control.clone(),
            budget.clone(),
            metrics,
            Role::Tenant {
                kind,
                weight: weight.max(1),
                ceiling,
            },
            settings.clone(),
            Box::new(|_| {}),
        );
        let stop = CancellationToken::new();
        // The pipeline's main loop ticks its budget; this one ticks itself.
        let ticker = {
            let (budget, stop) = (budget.clone(), stop.clone());
            async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tick.tick() => budget.tick(),
                    }
                }
            }
        };
        let run = tenancy.run(stop.clone());
        let task = tokio::spawn(async move {
            tokio::join!(ticker, run);
        });
        Ok(Some(SharedRate {
            budget,
            control,
            stop,
            task,
        }))
    }

    /// Withdraws the lease and stops following the topic.
    pub async fn leave(self) {
        self.stop.cancel();
        let _ = self.task.await;
        let control = self.control.clone();
        let _ = tokio::task::spawn_blocking(move || control.close()).await;
    }
}

impl crate::control::Pace for SharedRate {
    fn turn(&self) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(async {
            self.budget.until_ready(&Arc::from("")).await;
        })
    }

    fn answered(&self, disposition: &crate::top::classify::Disposition) {
        self.budget.answered(disposition);
    }
}
