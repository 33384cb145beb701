//! The ledger's commands: `ledger show|unknown|resolve|stats` and
//! `reconcile` (what they compute is [`crate::ledger::report`]).

use std::process::ExitCode;

use super::exit::{failed, load_for_tool};
use super::operator_args::{LedgerCommand, ReconcileArgs};
use crate::control::{CallerKind, Pace};
use crate::ledger::report::{self, Resolution, Shown};
use crate::pipeline::rate::SharedRate;

fn print_json(value: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("reports serialise")
    );
}

fn print_entries(entries: &[Shown], json: bool, none: &str) {
    if json {
        print_json(&entries);
    } else if entries.is_empty() {
        println!("{none}");
    } else {
        for entry in entries {
            println!("{}", entry.line());
        }
        println!(
            "{} entr{}",
            entries.len(),
            if entries.len() == 1 { "y" } else { "ies" }
        );
    }
}

pub(super) async fn ledger(command: LedgerCommand) -> ExitCode {
    let config = match &command {
        LedgerCommand::Show(args) => &args.config,
        LedgerCommand::Unknown(args) => &args.config,
        LedgerCommand::Resolve(args) => &args.config,
        LedgerCommand::Stats(args) => &args.config,
    };
    let settings = match load_for_tool(config) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    if let LedgerCommand::Resolve(args) = &command {
        let resolution = if args.resend {
            Resolution::Resend
        } else {
            Resolution::Delivered
        };
        return match report::resolve(&settings, &args.orders, resolution).await {
            Ok(resolved) => {
                println!(
                    "paysync ledger resolve: {} recorded as delivered, {} sent ({} accepted)",
                    resolved.marked_delivered,
                    resolved.sent.len(),
                    resolved.sent.iter().filter(|sent| sent.accepted).count()
                );
                for left in &resolved.left {
                    println!("  left parked: {left}");
                }
                if resolved.left.is_empty() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(error) => failed("ledger resolve", &error),
        };
    }
    let entries = match report::read(&settings).await {
        Ok(entries) => entries,
        Err(error) => return failed("ledger", &error),
    };
    match command {
        LedgerCommand::Show(args) => {
            let shown = report::show(&entries, &args.order_id);
            print_entries(
                &shown,
                args.json,
                &format!("no entry for order {}", args.order_id),
            );
        }
        LedgerCommand::Unknown(args) => {
            let shown = report::unknown(&entries);
            print_entries(
                &shown,
                args.json,
                "no unknown outcome, no held event, no intent in flight",
            );
        }
        LedgerCommand::Stats(args) => {
            let stats = report::stats(&entries, args.date);
            if args.json {
                print_json(&stats);
            } else {
                println!("paysync ledger stats {} (payment date, GMT+8)", stats.date);
                for (outcome, count) in &stats.outcomes {
                    println!("  {outcome:<20} {count}");
                }
                for (park, outcomes) in &stats.parks {
                    let counts: Vec<String> =
                        outcomes.iter().map(|(o, c)| format!("{o}={c}")).collect();
                    println!("  park {park}: {}", counts.join(" "));
                }
            }
        }
        LedgerCommand::Resolve(_) => unreachable!("handled above"),
    }
    ExitCode::SUCCESS
}

pub(super) async fn reconcile(args: ReconcileArgs) -> ExitCode {
    let settings = match load_for_tool(&args.config) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    let entries = match report::read(&settings).await {
        Ok(entries) => entries,
        Err(error) => return failed("reconcile", &error),
    };
    let reconciliation = report::reconcile(
        &entries,
        args.date,
        args.park.as_deref(),
        &settings.reconcile,
    );
    let sent = if args.send {
        let shared = match SharedRate::join(
            &settings,
            CallerKind::Reconcile,
            settings.control.backfill_weight,
            None,
        )
        .await
        {
            Ok(shared) => shared,
            Err(error) => return failed("reconcile", &error),
        };
        let pace = shared.as_ref().map(|shared| shared as &dyn Pace);
        let sent = report::send_reconciliation(&settings, &reconciliation, pace).await;
        if let Some(shared) = shared {
            shared.leave().await;
        }
        match sent {
            Ok(sent) => sent,
            Err(error) => return failed("reconcile", &error),
        }
    } else {
        Vec::new()
    };
    if args.json {
        print_json(&serde_json::json!({"report": reconciliation, "sent": sent}));
    } else {
        println!(
            "paysync reconcile {}: {} orders in {} parks",
            reconciliation.date,
            reconciliation.total_amount,
            reconciliation.lines.len()
        );
        for line in &reconciliation.lines {
            println!("  {:<20} {}", line.park_id, line.order_amount);
        }
        if reconciliation.unresolved > 0 {
            println!(
                "  {} events of the day are unknown or held: resolve them (paysync ledger unknown) before sending",
                reconciliation.unresolved
            );
        }
        for call in &sent {
            println!(
                "  sent {}: {} (request_id {})",
                call.what,
                if call.accepted {
                    "accepted"
                } else {
                    call.detail.as_str()
                },
                call.request_id.as_deref().unwrap_or("-")
            );
        }
    }
    if sent.iter().all(|call| call.accepted) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
