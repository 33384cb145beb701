//! The operator's commands: `replay` and the dead-letter tools.

use std::process::ExitCode;
use std::sync::Arc;

use super::args::ReplayArgs;
use super::exit::{failed, load_for_tool};
use super::operator_args::DlqCommand;
use crate::control::{CallerKind, Pace};
use crate::dead_letter::redrive::Target;
use crate::pipeline::rate::SharedRate;

pub(super) async fn dlq(command: DlqCommand) -> ExitCode {
    let config = match &command {
        DlqCommand::Inspect(args) => &args.config,
        DlqCommand::Redrive(args) => &args.config,
    };
    let settings = match load_for_tool(config) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    match command {
        DlqCommand::Inspect(args) => {
            let filter = args.filter.filter();
            match tokio::task::spawn_blocking(move || {
                crate::dead_letter::reader::inspect(&settings, &filter)
            })
            .await
            {
                Ok(Ok(records)) if args.json => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&records).expect("records serialise")
                    );
                    ExitCode::SUCCESS
                }
                Ok(Ok(records)) => {
                    print!("{}", crate::dead_letter::reader::render_table(&records));
                    ExitCode::SUCCESS
                }
                Ok(Err(error)) => failed("dlq inspect", &error),
                Err(error) => failed("dlq inspect", &error.into()),
            }
        }
        DlqCommand::Redrive(args) => {
            // To the API, a redrive takes its share of the group's rate.
            let shared = if args.to == Target::Api && !args.dry_run {
                match SharedRate::join(
                    &settings,
                    CallerKind::Redrive,
                    args.weight.unwrap_or(settings.control.backfill_weight),
                    None,
                )
                .await
                {
                    Ok(shared) => shared.map(Arc::new),
                    Err(error) => return failed("dlq redrive", &error),
                }
            } else {
                None
            };
            let options = crate::dead_letter::redrive::Redrive {
                target: args.to,
                group: args.group.clone(),
                max_redrives: args.max_redrives,
                dry_run: args.dry_run,
                resend_delivered: args.resend_delivered,
                pace: shared.clone().map(|shared| shared as Arc<dyn Pace>),
                ..Default::default()
            };
            let redriven =
                crate::dead_letter::redrive::redrive(&settings, &args.filter.filter(), &options)
                    .await;
            drop(options);
            if let Some(shared) = shared.and_then(Arc::into_inner) {
                shared.leave().await;
            }
            match redriven {
                Ok(report) => {
                    let verb = if report.dry_run {
                        "would redrive"
                    } else {
                        "redrove"
                    };
                    println!(
                        "paysync dlq redrive: examined {}, selected {}, {verb} {} to {:?}",
                        report.examined,
                        report.selected,
                        if report.dry_run {
                            report.selected
                        } else {
                            report.redriven
                        },
                        args.to
                    );
                    let passed_over = report.examined - report.selected;
                    if passed_over > 0 {
                        println!(
                            "  {passed_over} records not selected by the filter; group {} keeps this filter's cursor, other filters have their own",
                            report.group
                        );
                    }
                    for held in &report.held_back {
                        println!("  held back (raise --max-redrives to send it again): {held}");
                    }
                    for skipped in &report.skipped_delivered {
                        println!("  not sent (--resend-delivered sends it): {skipped}");
                    }
                    for failure in &report.failed {
                        println!("  not accepted: {failure}");
                    }
                    if report.failed.is_empty() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(error) => failed("dlq redrive", &error),
            }
        }
    }
}

pub(super) async fn replay(args: ReplayArgs) -> ExitCode {
    let settings = match load_for_tool(&args.config) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    let request = crate::replay::ReplayRequest {
        topic: args.topic,
        partitions: args.partitions,
        from_offset: args.from_offset,
        to_offset: args.to_offset,
        from_time: args.from_time,
        to_time: args.to_time,
        group: args.group,
        rate: args.rate,
        rate_fraction: args.rate_fraction,
        weight: args.weight,
        dry_run: args.dry_run,
        resend_delivered: args.resend_delivered,
    };
    match crate::replay::run(settings, request, crate::shutdown::signal()).await {
        Ok(report) => {
            print!("{}", report.render());
            ExitCode::SUCCESS
        }
        Err(error) => failed("replay", &error),
    }
}
