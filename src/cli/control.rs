//! `paysync control set|pause|resume|show`: the operator's side of the
//! control topic (docs/control.md). Every change is checked here by the
//! same rules as `check-config`, written with its audit record, and read
//! back before the command says it is in force.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;

use super::args::{ControlAuditArgs, ControlCommand, ControlPauseArgs, ControlSetArgs};
use super::exit::{EXIT_USAGE, failed, load_for_tool};
use crate::config::Settings;
use crate::control::record::{self, Guard, SETTINGS_KEY};
use crate::control::{Control, ControlView, Pause, PauseTarget, Tuning, process_name, tuning};
use crate::partition::PartitionId;

/// How long a command waits to read its own change back.
const READ_BACK: Duration = Duration::from_secs(15);

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
    let view = control.view();
    let mut values = view.tuning.values.clone();
    for text in &args.assignments {
        match tuning::assignment(text) {
            Ok((key, value)) if value.is_empty() => {
                values.remove(key);
            }
            Ok((key, value)) => {
                values.insert(key.to_owned(), value);
            }
            Err(error) => {
                eprint!("paysync control set: {error}");
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }
    if let Err(error) = tuning::tuned(settings, &values) {
        eprint!("paysync control set: refused, nothing changed: {error}");
        return ExitCode::from(EXIT_USAGE);
    }
    let version = view.tuning.version + 1;
    let tuned = Tuning {
        version,
        values: values.clone(),
        guard: args
            .guard_secs
            .map(|secs| Guard::watching(view.tuning.values.clone(), Duration::from_secs(secs))),
    };
    let what = format!("version {version}: {}", describe(&values));
    if let Err(error) = control
        .change(
            SETTINGS_KEY,
            Some(record::encode(&tuned)),
            &who(&args.audit),
            what.clone(),
            &args.audit.why,
        )
        .await
    {
        return failed("control set", &error.into());
    }
    if !control
        .wait_for(READ_BACK, |view| view.tuning.version >= version)
        .await
    {
        eprintln!("paysync control set: written, but not read back within {READ_BACK:?}");
        return ExitCode::FAILURE;
    }
    println!(
        "paysync control set: {what} — every running paysync applies it within control.refresh_ms"
    );
    ExitCode::SUCCESS
}

fn describe(values: &BTreeMap<String, String>) -> String {
    if values.is_empty() {
        return "the configuration files' values".to_owned();
    }
    values
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn target(args: &ControlPauseArgs) -> Result<PauseTarget, String> {
    if args.all {
        return Ok(PauseTarget::All);
    }
    if let Some(park) = &args.park {
        return Ok(PauseTarget::Park(park.clone()));
    }
    let text = args.partition.as_deref().unwrap_or_default();
    let (topic, number) = text
        .rsplit_once('/')
        .ok_or_else(|| format!("--partition {text:?} is not TOPIC/N"))?;
    let number = number
        .parse()
        .map_err(|_| format!("--partition {text:?}: {number:?} is not a partition number"))?;
    Ok(PauseTarget::Partition(PartitionId::new(topic, number)))
}

async fn pause(control: &Control, args: ControlPauseArgs, pausing: bool) -> ExitCode {
    let command = if pausing { "pause" } else { "resume" };
    let target = match target(&args) {
        Ok(target) => target,
        Err(error) => {
            eprintln!("paysync control {command}: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let paused = control.view().pauses.contains_key(&target);
    if paused == pausing {
        println!(
            "paysync control {command}: {} is {} already",
            target.describe(),
            if pausing { "paused" } else { "not paused" }
        );
        return ExitCode::SUCCESS;
    }
    let by = who(&args.audit);
    let value = pausing.then(|| {
        record::encode(&Pause {
            by: by.clone(),
            at: Utc::now(),
            why: args.audit.why.clone(),
        })
    });
    let what = format!("{command}d {}", target.describe());
    if let Err(error) = control
        .change(&target.key(), value, &by, what.clone(), &args.audit.why)
        .await
    {
        return failed(&format!("control {command}"), &error.into());
    }
    if !control
        .wait_for(READ_BACK, |view| {
            view.pauses.contains_key(&target) == pausing
        })
        .await
    {
        eprintln!("paysync control {command}: written, but not read back within {READ_BACK:?}");
        return ExitCode::FAILURE;
    }
    println!("paysync control {command}: {what}");
    ExitCode::SUCCESS
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
        describe(&view.tuning.values)
    );
    if let Some(guard) = &view.tuning.guard
        && guard.until_ms > now_ms
    {
        println!(
            "  guarded: rolled back to {} if the gateway bans within {} s",
            describe(&guard.previous),
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
