//! The handle of a running pipeline: "build, spawn, stop, read the summary"
//! written once, for `paysync run`, the tools and the tests.

use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use rdkafka::producer::FutureProducer;

use super::gate::Gate;
use super::status::{Health, Summary};
use crate::control::Control;
use crate::metrics::Metrics;

/// A pipeline running on the runtime: what it reports while it runs, and the
/// means to stop it. Dropping the handle aborts the run without draining.
pub struct RunningPipeline {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    gate: Arc<Gate>,
    control: Option<Arc<Control>>,
    producer: FutureProducer,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Summary>>,
}

/// What a running pipeline shares with the services beside it (the admin
/// server, the console, the status publisher).
pub struct Shared {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub gate: Arc<Gate>,
    /// The control topic, when on.
    pub control: Option<Arc<Control>>,
    /// The dead-letter producer, for other small writes (no polling thread of their own).
    pub producer: FutureProducer,
}

impl RunningPipeline {
    pub(super) fn new(
        shared: Shared,
        stop: oneshot::Sender<()>,
        task: JoinHandle<Summary>,
    ) -> RunningPipeline {
        let Shared {
            metrics,
            health,
            gate,
            control,
            producer,
        } = shared;
        RunningPipeline {
            metrics,
            health,
            gate,
            control,
            producer,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// The gate, to watch its state while the pipeline runs.
    pub fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }

    /// The control topic, when on.
    pub fn control(&self) -> Option<&Arc<Control>> {
        self.control.as_ref()
    }

    /// The dead-letter producer, for other small writes.
    pub fn producer(&self) -> &FutureProducer {
        &self.producer
    }

    /// What the pipeline did so far.
    pub fn summary(&self) -> Summary {
        Summary::of(&self.metrics)
    }

    /// Whether the run ended by itself (a range finished, or its shutdown future resolved).
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops the pipeline: drains, commits, and returns what it did.
    pub async fn stop(mut self) -> Summary {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.finished().await
    }

    /// Waits for the run to end by itself, and returns what it did.
    pub async fn finished(mut self) -> Summary {
        let Some(task) = self.task.take() else {
            return self.summary();
        };
        match task.await {
            Ok(summary) => summary,
            Err(error) => {
                tracing::error!(error = %error, "The pipeline task failed.");
                self.summary()
            }
        }
    }
}

impl Drop for RunningPipeline {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}
