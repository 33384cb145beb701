//! The debugging commands: `check-config`, `sign`, `call`.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use secrecy::SecretString;

use super::args::{CallArgs, SignArgs};
use super::exit::{EXIT_DATA, EXIT_USAGE, load_settings};
use crate::config::Settings;
use crate::event;
use crate::kafka::cluster::{self, ClusterFacts};
use crate::top::classify::Disposition;
use crate::top::request::dto_json;
use crate::top::sign::{self, EmptyValues, SignMethod};

pub(super) fn check_config(path: &Path) -> ExitCode {
    match Settings::load(Some(path)) {
        Ok(settings) => {
            println!("{}: ok", path.display());
            println!("  gateway     {}", settings.top.gateway_url);
            println!("  app_key     {}", settings.top.app_key);
            println!("  sign_method {}", settings.top.sign_method);
            println!("  app_secret  [redacted]");
            if let Ok(egress) = settings.egress() {
                println!("  proxy       {}", egress.proxy);
                println!("  tls         {}", egress.trust.describe());
            }
            println!("  traces      {}", settings.tracing.describe());
            let kafka = &settings.kafka;
            println!(
                "  group       {} ({} protocol{})",
                kafka.group_id,
                kafka.group_protocol.as_str(),
                match kafka.instance_id() {
                    Some(id) => format!(", static member {id}"),
                    None => String::new(),
                }
            );
            // Without connecting: Apache Kafka's defaults stand for the cluster.
            let facts = ClusterFacts::assumed();
            for warning in cluster::group_warnings(kafka, kafka.group_protocol, &facts) {
                println!("warning: {warning}");
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprint!("{}: {error}", path.display());
            ExitCode::from(EXIT_USAGE)
        }
    }
}

pub(super) fn sign(args: SignArgs) -> ExitCode {
    let mut params = Vec::with_capacity(args.params.len());
    for param in &args.params {
        match param.split_once('=') {
            Some((name, value)) if !name.is_empty() => params.push((name, value)),
            _ => {
                eprintln!("paysync sign: {param:?} is not NAME=VALUE");
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }
    let from_params = params
        .iter()
        .find(|(n, _)| *n == "sign_method")
        .map(|(_, v)| *v);
    let method = match (args.sign_method, from_params.map(str::parse::<SignMethod>)) {
        (Some(flag), Some(Ok(param))) if flag != param => {
            eprintln!(
                "paysync sign: --sign-method {flag} disagrees with the parameter sign_method={param}"
            );
            return ExitCode::from(EXIT_USAGE);
        }
        (_, Some(Err(error))) => {
            eprintln!("paysync sign: sign_method parameter: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
        (Some(flag), _) => flag,
        (None, Some(Ok(param))) => param,
        (None, None) => SignMethod::Md5,
    };
    let secret = SecretString::from(args.app_secret);
    let base = sign::string_to_sign(params.iter().copied(), EmptyValues::Drop);
    println!("{}", sign::digest(method, &secret, &base));
    if args.show_base {
        println!("{}", sign::describe_base(method, &base));
    }
    ExitCode::SUCCESS
}

fn read_event_source(source: &str) -> std::io::Result<Vec<u8>> {
    if source == "-" {
        let mut bytes = Vec::new();
        std::io::stdin().read_to_end(&mut bytes)?;
        Ok(bytes)
    } else {
        std::fs::read(source)
    }
}

pub(super) async fn call(args: CallArgs) -> ExitCode {
    let settings = match load_settings(&args.config) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    crate::telemetry::init(&settings.log);
    let bytes = match read_event_source(&args.event) {
        Ok(bytes) => bytes,
        Err(error) => {
            eprintln!("paysync call: cannot read {}: {error}", args.event);
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let event = match event::decode(Some(&bytes), &settings.event.limits()) {
        Ok(event) => event,
        Err(invalid) => {
            eprintln!("paysync call: invalid event:");
            for problem in &invalid.problems {
                eprintln!("  - {}: {}", problem.field, problem.reason);
            }
            return ExitCode::from(EXIT_DATA);
        }
    };
    let client = match settings.top_client() {
        Ok(client) => client,
        Err(error) => {
            eprintln!("paysync call: {error:#}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let report = client.send(&dto_json(&event)).await;
    let disposition = settings.classifier().classify(&report.outcome);
    println!("request  POST {}", client.endpoint());
    print!("{}", report.request.describe());
    println!("response ({} ms)", report.elapsed.as_millis());
    if let Some(body) = report.body_excerpt() {
        println!("  {body}");
    }
    println!(
        "  request_id = {}",
        report.request_id.as_deref().unwrap_or("-")
    );
    println!("outcome  {:?}", report.outcome);
    println!("disposition {}", disposition.describe());
    if disposition == Disposition::Delivered {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
