//! `paysync control set|pause|resume|show`: the operator's side of the
//! control topic (docs/control.md). Every change is checked here by the
//! same rules as `check-config`, written with its audit record, and read
//! back before the command says it is in force.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;

use super::exit::{EXIT_USAGE, failed, load_for_tool};
use super::operator_args::{ControlAuditArgs, ControlCommand, ControlPauseArgs, ControlSetArgs};
use crate::config::Settings;
use crate::control::ops::{self, ChangeError};
use crate::control::{Control, ControlView, process_name};

pub(super) async fn control(command: ControlCommand) -> ExitCode {
    let config = match &command {
        ControlCommand::Set(args) => &args.config,
        ControlCommand::Pause(args) | ControlCommand::Resume(args) => &args.config,
        ControlCommand::Show(args) => &args.config,
    };
    let settings = match load_for_tool(config) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    if !settings.control.enabled {
        eprintln!(
            "paysync control: control.enabled is off in {}",
            config.display()
        );
        return ExitCode::from(EXIT_USAGE);
    }
    let control = match connect(&settings).await {
        Ok(control) => control,
        Err(error) => return failed("control", &error),
    };
    let code = match command {
        ControlCommand::Set(args) => set(&settings, &control, args).await,
        ControlCommand::Pause(args) => pause(&control, args, true).await,
        ControlCommand::Resume(args) => pause(&control, args, false).await,
        ControlCommand::Show(args) => {
            show(&control.view(), &settings, args.json);
            ExitCode::SUCCESS
        }
    };
    let closing = control.clone();
    let _ = tokio::task::spawn_blocking(move || closing.close()).await;
    code
}

/// Opens the control topic for an operator's command, read to its end.
async fn connect(settings: &Settings) -> anyhow::Result<Arc<Control>> {
    let settings = settings.clone();
    tokio::task::spawn_blocking(move || {
        let consumer: rdkafka::consumer::BaseConsumer = crate::kafka::clients::tool_consumer(
            &settings,
            &format!("{}.control-tool", settings.kafka.group_id),
        )
        .create()?;
        Control::open(&settings, &consumer, process_name("operator"), None)?
            .context("control.enabled is off")
    })
    .await?
}

fn who(audit: &ControlAuditArgs) -> String {
    audit.by.clone().unwrap_or_else(|| {
        let user = std::env::var("USER").unwrap_or_else(|_| "operator".to_owned());
        let host = crate::config::hostname().unwrap_or_else(|| "localhost".to_owned());
        format!("{user}@{host}")
    })
}

async fn set(settings: &Settings, control: &Control, args: ControlSetArgs) -> ExitCode {
    let guard = args.guard_secs.map(Duration::from_secs);
    match ops::set(
        control,
        settings,
        &args.assignments,
        guard,
        &who(&args.audit),
        &args.audit.why,
    )
    .await
    {
        Ok(what) => {
            println!(
                "paysync control set: {what} — every running paysync applies it within control.refresh_ms"
            );
            ExitCode::SUCCESS
        }
        Err(ChangeError::Refused(error)) => {
            eprint!("paysync control set: refused, nothing changed: {error}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(error) => failed("control set", &error.into()),
    }
}

async fn pause(control: &Control, args: ControlPauseArgs, pausing: bool) -> ExitCode {
    let command = if pausing { "pause" } else { "resume" };
    let target = match ops::target(args.all, args.park.as_deref(), args.partition.as_deref()) {
        Ok(target) => target,
        Err(error) => {
            eprintln!("paysync control {command}: --{error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match ops::pause(
        control,
        &target,
        pausing,
        &who(&args.audit),
        &args.audit.why,
    )
    .await
    {
        Ok(Some(what)) => {
            println!("paysync control {command}: {what}");
            ExitCode::SUCCESS
        }
        Ok(None) => {
            println!(
                "paysync control {command}: {} is {} already",
                target.describe(),
                if pausing { "paused" } else { "not paused" }
            );
            ExitCode::SUCCESS
        }
        Err(error) => failed(&format!("control {command}"), &error.into()),
    }
}

fn show(view: &ControlView, settings: &Settings, json: bool) {
    let now_ms = Utc::now().timestamp_millis();
    let callers: Vec<_> = view.live_leases(now_ms).collect();
    if json {
        let body = serde_json::json!({
            "version": view.tuning.version,
            "tuned": view.tuning.values,
            "guard": view.tuning.guard,
            "pauses": view.pauses.iter().map(|(target, pause)| {
                serde_json::json!({"target": target.key(), "by": pause.by, "at": pause.at, "why": pause.why})
            }).collect::<Vec<_>>(),
            "callers": callers,
            "audit": view.audit,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&body).expect("JSON values serialise")
        );
        return;
    }
    println!(
        "tuned settings: version {}, {}",
        view.tuning.version,
        ops::describe(&view.tuning.values)
    );
    if let Some(guard) = &view.tuning.guard
        && guard.until_ms > now_ms
    {
        println!(
            "  guarded: rolled back to {} if the gateway bans within {} s",
            ops::describe(&guard.previous),
            (guard.until_ms - now_ms) / 1_000
        );
    }
    println!("pauses: {}", view.pauses.len());
    for (target, pause) in &view.pauses {
        println!(
            "  {:<40} since {} by {} {}",
            target.describe(),
            pause.at.format("%F %T"),
            pause.by,
            pause.why
        );
    }
    println!(
        "callers sharing {} calls/s (live weight {}):",
        settings.delivery.rate_limit_per_sec, settings.control.live_weight
    );
    for lease in callers {
        let demand = lease
            .demand_per_sec
            .map_or("all it gets".to_owned(), |d| format!("{d:.1} calls/s"));
        println!(
            "  {:<10} {:<40} weight {:<3} wants {demand}",
            lease.kind.as_str(),
            lease.caller,
            lease.weight
        );
    }
    println!("recent changes:");
    for audit in view.audit.iter().rev().take(10) {
        println!(
            "  {} {:<24} {} {}",
            audit.at.format("%F %T"),
            audit.by,
            audit.what,
            audit.why
        );
    }
}
