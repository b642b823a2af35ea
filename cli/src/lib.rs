//! `provisioner`: the command line for people and scripts, a client of the HTTP API only (never
//! of PostgreSQL or RabbitMQ). `main` parses the command (`clap`), runs it, prints the result
//! on stdout and any error on stderr, and exits with the contract's code (`exit::Exit`).

mod api;
mod batch;
mod exit;
mod faults;
mod fields;
mod output;
mod progress;
mod rows;
mod single;
mod state;
mod submit;
mod template;
mod wait;

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};

use crate::{
    api::{Api, Credentials},
    exit::{Exit, Failure, Result},
    fields::{Defaults, TemplateChoice},
    output::Output,
};

const EXAMPLES: &str = "\
Examples:
  export PROVISIONER_CLIENT_ID=demo PROVISIONER_CLIENT_SECRET=...
  provisioner template pack examples/templates/small -o small.zip
  provisioner batch submit examples/tenants.csv --template small.zip \\
      --set password='correct horse battery staple' --wait
  provisioner batch results BATCH_ID --status failed --format csv -o failed.csv

Exit codes: 0 done (every item or job succeeded); 1 done with failures (or a create refused
with 409); 2 cancelled; 3 the wait ran out; 4 invalid input (a bad file or argument, an API
400, 404, 413 or 422); 5 authentication or permission refused; 6 the API could not be reached
or answered 5xx; 130 interrupted while waiting (the work goes on).";

/// The command line of the provisioner: templates, creates, batches, jobs, tenants.
#[derive(Debug, Parser)]
#[command(name = "provisioner", version, after_help = EXAMPLES)]
pub struct Cli {
    /// The API's base URL.
    #[arg(
        long,
        env = "PROVISIONER_API_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    api: String,
    /// The client id for the API's client-credentials tokens.
    #[arg(long, env = "PROVISIONER_CLIENT_ID")]
    client_id: Option<String>,
    /// The client's secret (better given in the environment than on the command line).
    #[arg(long, env = "PROVISIONER_CLIENT_SECRET", hide_env_values = true)]
    client_secret: Option<String>,
    /// Print JSON on stdout (with a wait: one document, the final state).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Templates: pack a folder, check a ZIP offline, store and list them.
    #[command(subcommand)]
    Template(TemplateCommand),
    /// Create one tenant from a template.
    #[command(
        after_help = "Example:\n  provisioner create acme.example.com --template-id ID \\\n      \
        --set tenantName='Acme Support' --set firstName=Ada --set lastName=Lovelace \\\n      \
        --set loginId=admin --set email=ada@acme.example --set password='correct horse battery' --wait"
    )]
    Create {
        /// The new tenant's URL (a host name).
        tenant_url: String,
        #[command(flatten)]
        template: TemplateOptions,
        #[command(flatten)]
        fields: SetOptions,
        #[command(flatten)]
        wait: WaitOptions,
    },
    /// Batches: submit a CSV or NDJSON file, follow, steer and read the results.
    #[command(subcommand)]
    Batch(BatchCommand),
    /// Jobs: read, wait for, cancel.
    #[command(subcommand)]
    Job(JobCommand),
    /// Tenants.
    #[command(subcommand)]
    Tenant(TenantCommand),
}

#[derive(Debug, Subcommand)]
enum TemplateCommand {
    /// Build a format-1 template ZIP from a folder of its entries (tenant.json, users.json,
    /// objects.json, access_numbers.json, ...; a missing manifest.json, or its missing fields,
    /// are filled in, `dbVersion` from this build's migrations).
    #[command(
        after_help = "Example:\n  provisioner template pack examples/templates/small -o small.zip"
    )]
    Pack {
        /// The folder holding the entries.
        dir: PathBuf,
        /// The ZIP to write.
        #[arg(short, long)]
        output: PathBuf,
        /// The manifest's dbVersion when the folder does not give one (default: this build's).
        #[arg(long)]
        db_version: Option<i64>,
    },
    /// Run the server's checks on a template offline; exit 0, or 4 with every fault found.
    #[command(after_help = "Example:\n  provisioner template check small.zip")]
    Check {
        file: PathBuf,
        /// The dbVersion to check against (default: the newest migration of this build).
        #[arg(long)]
        db_version: Option<i64>,
    },
    /// Store a template ZIP in the API's template store; prints its id.
    #[command(after_help = "Example:\n  provisioner template upload small.zip --name small")]
    Upload {
        file: PathBuf,
        /// A label for the template.
        #[arg(long)]
        name: Option<String>,
    },
    /// List the stored templates.
    List,
}

#[derive(Debug, Subcommand)]
enum BatchCommand {
    /// Submit a batch from a CSV file (header row = field names; numberMap as from:to;from:to)
    /// or an NDJSON file (.ndjson/.jsonl), by extension; prints the batch id. The options fill
    /// the fields a row lacks. The same file with the same options again reattaches to the
    /// batch it made.
    #[command(
        after_help = "Example:\n  provisioner batch submit examples/tenants.csv --template small.zip \\\n      \
        --set password='correct horse battery staple' --wait"
    )]
    Submit {
        file: PathBuf,
        #[command(flatten)]
        template: TemplateOptions,
        #[command(flatten)]
        fields: SetOptions,
        #[command(flatten)]
        wait: WaitOptions,
    },
    /// Show a batch and its counts.
    Status { id: String },
    /// Wait until a batch stops running, with a progress display.
    Wait {
        id: String,
        /// Give up waiting after S seconds (exit 3; the batch goes on).
        #[arg(long, value_name = "S")]
        timeout: Option<u64>,
    },
    /// List your batches, newest first.
    List,
    /// Cancel a batch's queued items (running ones finish).
    Cancel { id: String },
    /// Give every failed item a new job (only those that failed with one of the codes, if given).
    Retry {
        id: String,
        /// A job code to retry (repeatable), e.g. --code 503.
        #[arg(long = "code", value_name = "C")]
        codes: Vec<u16>,
    },
    /// The items' results: NDJSON as the API gives them, or CSV with the submitted fields
    /// (password left out) then jobId,status,code,error.
    #[command(
        after_help = "Example:\n  provisioner batch results ID --status failed --format csv -o failed.csv"
    )]
    Results {
        id: String,
        /// Only items whose newest job has this status (queued, running, succeeded, failed, cancelled).
        #[arg(long)]
        status: Option<String>,
        #[arg(long, value_enum, default_value = "ndjson")]
        format: batch::ResultsFormat,
        /// Write to this file instead of stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum JobCommand {
    /// Show a job.
    Get { id: String },
    /// Wait until a job ends.
    Wait {
        id: String,
        /// Give up waiting after S seconds (exit 3; the job goes on).
        #[arg(long, value_name = "S")]
        timeout: Option<u64>,
    },
    /// Cancel a queued job.
    Cancel { id: String },
}

#[derive(Debug, Subcommand)]
enum TenantCommand {
    /// Show a tenant.
    Get { url: String },
}

/// Where the template comes from (at most one; a row's own choice wins).
#[derive(Debug, Args)]
#[group(multiple = false)]
struct TemplateOptions {
    /// The template's URL.
    #[arg(long, value_name = "U")]
    template_url: Option<String>,
    /// A stored template's id.
    #[arg(long, value_name = "ID")]
    template_id: Option<String>,
    /// A template ZIP to store first.
    #[arg(long, value_name = "FILE.zip")]
    template: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct SetOptions {
    /// A field value the rows lack, e.g. --set loginId=admin --set numberMap=0000000000:4155550100.
    #[arg(long = "set", value_name = "FIELD=VALUE")]
    set: Vec<String>,
}

#[derive(Debug, Args)]
struct WaitOptions {
    /// Wait until it ends, with a progress display; the final state goes to stdout.
    #[arg(long)]
    wait: bool,
    /// With --wait: give up after S seconds (exit 3; the work goes on).
    #[arg(long, value_name = "S", requires = "wait")]
    timeout: Option<u64>,
}

impl WaitOptions {
    fn wanted(&self) -> Option<Option<u64>> {
        self.wait.then_some(self.timeout)
    }
}

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
        Command::Template(TemplateCommand::Check { file, db_version }) => {
            template::check(file, *db_version, out).map(|()| Exit::Ok)
        }
        Command::Template(TemplateCommand::Upload { file, name }) => {
            template::upload(&api()?, file, name.as_deref(), out)
                .await
                .map(|()| Exit::Ok)
        }
        Command::Template(TemplateCommand::List) => {
            template::list(&api()?, out).await.map(|()| Exit::Ok)
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
            let id = batch["batchId"].as_str().unwrap_or_default().to_owned();
            match wait.wanted() {
                None => {
                    out.show(&batch, |b| {
                        b["batchId"].as_str().unwrap_or_default().to_owned()
                    });
                    Ok(Exit::Ok)
                }
                Some(timeout) => {
                    if !out.json {
                        println!("{id}");
                    }
                    wait::wait(api, wait::Target::Batch(&id), timeout, out).await
                }
            }
        }
        BatchCommand::Status { id } => batch::status(api, id, out).await,
        BatchCommand::Wait { id, timeout } => {
            uuid::Uuid::parse_str(id)
                .map_err(|_| Failure::invalid(format!("`{id}` is not a batch id")))?;
            wait::wait(api, wait::Target::Batch(id), *timeout, out).await
        }
        BatchCommand::List => batch::list(api, out).await,
        BatchCommand::Cancel { id } => batch::cancel(api, id, out).await,
        BatchCommand::Retry { id, codes } => batch::retry(api, id, codes, out).await,
        BatchCommand::Results {
            id,
            status,
            format,
            output,
        } => batch::results(api, id, status.as_deref(), *format, output.as_deref()).await,
    }
}
