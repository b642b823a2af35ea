//! `provisioner`: the command line for people and scripts, a client of the HTTP API only (never
//! of PostgreSQL or RabbitMQ). `main` parses the command (`clap`), runs it, prints the result
//! on stdout and any error on stderr, and exits with the contract's code (`exit::Exit`).

mod api;
mod args;
mod batch;
mod exit;
mod faults;
mod fields;
mod lacking;
mod output;
mod progress;
mod rows;
#[cfg(test)]
mod scratch;
mod single;
mod state;
mod submit;
mod template;
mod wait;

use std::process::ExitCode;

use clap::Parser;

use crate::{
    api::{Api, Credentials},
    args::{
        BatchCommand, Cli, Command, JobCommand, TemplateCommand, TemplateOptions, TenantCommand,
    },
    exit::{Exit, Result},
    fields::{Defaults, TemplateChoice},
    output::Output,
};

/// Parses the command line, runs it, and returns the exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                Exit::Invalid as u8
            } else {
                0
            });
        }
    };
    let out = Output { json: cli.json };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a Tokio runtime starts");
    let exit = match runtime.block_on(run(cli, &out)) {
        Ok(exit) => exit,
        Err(failure) => {
            failure.report(out.json);
            failure.exit
        }
    };
    ExitCode::from(exit as u8)
}

fn connect(cli: &Cli) -> Result<Api> {
    let base = api::base_url(&cli.api)?;
    let credentials = match (&cli.client_id, &cli.client_secret) {
        (Some(id), Some(secret)) => Some(Credentials::new(id.clone(), secret.clone())),
        _ => None,
    };
    Api::new(base, credentials)
}

/// The template option as a field choice; `--template FILE.zip` is stored first.
async fn template_choice(api: &Api, options: &TemplateOptions) -> Result<Option<TemplateChoice>> {
    Ok(match options {
        TemplateOptions {
            template_url: Some(u),
            ..
        } => Some(TemplateChoice::Url(u.clone())),
        TemplateOptions {
            template_id: Some(i),
            ..
        } => Some(TemplateChoice::Id(i.clone())),
        TemplateOptions {
            template: Some(file),
            ..
        } => {
            // The store checks it as create-from-template would: a bad one is a 400 (exit 4).
            let stored = template::store(api, file, None).await?;
            let id = stored["templateId"].as_str().unwrap_or_default().to_owned();
            Some(TemplateChoice::Id(id))
        }
        _ => None,
    })
}

async fn run(cli: Cli, out: &Output) -> Result<Exit> {
    let api = || connect(&cli);
    match &cli.command {
        Command::Template(TemplateCommand::Pack {
            dir,
            output,
            db_version,
        }) => template::pack(dir, output, *db_version, out).map(|()| Exit::Ok),
        Command::Template(TemplateCommand::Check {
            file,
            db_version,
            max_bytes,
        }) => template::check(file, *db_version, *max_bytes, out).map(|()| Exit::Ok),
        Command::Template(TemplateCommand::Upload { file, name }) => {
            template::upload(&api()?, file, name.as_deref(), out)
                .await
                .map(|()| Exit::Ok)
        }
        Command::Template(TemplateCommand::List) => {
            template::list(&api()?, out).await.map(|()| Exit::Ok)
        }
        Command::Template(TemplateCommand::Delete { id }) => {
            template::delete(&api()?, id).await.map(|()| Exit::Ok)
        }
        Command::Create {
            tenant_url,
            template,
            fields,
            wait,
        } => {
            let api = api()?;
            let defaults = Defaults::from_options(&fields.set, None)?;
            let defaults = Defaults {
                template: template_choice(&api, template).await?,
                ..defaults
            };
            single::create(&api, tenant_url, &defaults, wait.wanted(), out).await
        }
        Command::Batch(command) => batch_command(&api()?, command, out).await,
        Command::Job(JobCommand::Get { id }) => single::job_get(&api()?, id, out).await,
        Command::Job(JobCommand::Wait { id, timeout }) => {
            single::job_wait(&api()?, id, *timeout, out).await
        }
        Command::Job(JobCommand::Cancel { id }) => single::job_cancel(&api()?, id, out).await,
        Command::Tenant(TenantCommand::Get { url }) => single::tenant_get(&api()?, url, out).await,
    }
}

async fn batch_command(api: &Api, command: &BatchCommand, out: &Output) -> Result<Exit> {
    match command {
        BatchCommand::Submit {
            file,
            template,
            fields,
            wait,
        } => {
            // Options are checked before a template is stored.
            let defaults = Defaults::from_options(&fields.set, None)?;
            let defaults = Defaults {
                template: template_choice(api, template).await?,
                ..defaults
            };
            let batch = submit::submit(api, file, defaults).await?;
            match wait.wanted() {
                None => {
                    let id = wait::answered_id(&batch, "batchId")?;
                    out.show(&batch, |_| id)?;
                    Ok(Exit::Ok)
                }
                Some(timeout) => {
                    let target = wait::Target::answered(&batch, "batchId")?;
                    if !out.json {
                        crate::output::print_text(batch["batchId"].as_str().unwrap_or_default())?;
                    }
                    wait::wait(api, target, timeout, out).await
                }
            }
        }
        BatchCommand::Status { id } => batch::status(api, id, out).await,
        BatchCommand::Wait { id, timeout } => {
            wait::wait(api, wait::Target::batch(id)?, *timeout, out).await
        }
        BatchCommand::List => batch::list(api, out).await,
        BatchCommand::Cancel { id } => batch::cancel(api, id, out).await,
        BatchCommand::Retry { id, codes } => batch::retry(api, id, codes, out).await,
        BatchCommand::Results {
            id,
            status,
            format,
            output,
        } => {
            let layout = batch::Layout::of(*format, out.json)?;
            batch::results(api, id, status.as_deref(), layout, output.as_deref()).await
        }
    }
}
