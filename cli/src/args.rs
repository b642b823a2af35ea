//! The command line's grammar (`clap` derive): commands, options and their help.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::batch;

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
    pub(crate) api: String,
    /// The client id for the API's client-credentials tokens.
    #[arg(long, env = "PROVISIONER_CLIENT_ID")]
    pub(crate) client_id: Option<String>,
    /// The client's secret (better given in the environment than on the command line).
    #[arg(long, env = "PROVISIONER_CLIENT_SECRET", hide_env_values = true)]
    pub(crate) client_secret: Option<String>,
    /// Print JSON on stdout (with a wait: one document, the final state).
    #[arg(long, global = true)]
    pub(crate) json: bool,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
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
pub(crate) enum TemplateCommand {
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
        /// The template ZIP.
        file: PathBuf,
        /// The dbVersion to check against (default: the newest migration of this build).
        #[arg(long)]
        db_version: Option<i64>,
        /// The server's PROVISIONER_TEMPLATE_MAX_BYTES: a larger file is refused (413 on
        /// upload, code 400 when downloaded).
        #[arg(long, default_value_t = provisioner_shared::config::DEFAULT_TEMPLATE_MAX_BYTES)]
        max_bytes: u64,
    },
    /// Store a template ZIP in the API's template store; prints its id.
    #[command(after_help = "Example:\n  provisioner template upload small.zip --name small")]
    Upload {
        /// The template ZIP.
        file: PathBuf,
        /// A label for the template.
        #[arg(long)]
        name: Option<String>,
    },
    /// List the stored templates (id, name, bytes, dbVersion, when stored).
    #[command(after_help = "Example:\n  provisioner template list --json")]
    List,
    /// Delete a stored template (jobs already accepted still read it); frees its room in the
    /// client's quota. Exit 4 when this client stores no such template.
    #[command(
        after_help = "Example:\n  provisioner template delete ID    (the id that template upload and template list print)"
    )]
    Delete {
        /// The template's id (64 hex digits).
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum BatchCommand {
    /// Submit a batch from a CSV file (header row = field names; numberMap as from:to;from:to)
    /// or an NDJSON file (.ndjson/.jsonl), by extension; prints the batch id. The options fill
    /// the fields a row lacks. The same file with the same options again reattaches to the
    /// batch it made.
    #[command(
        after_help = "Example:\n  provisioner batch submit examples/tenants.csv --template small.zip \\\n      \
        --set password='correct horse battery staple' --wait"
    )]
    Submit {
        /// The rows: a .csv, .ndjson or .jsonl file.
        file: PathBuf,
        #[command(flatten)]
        template: TemplateOptions,
        #[command(flatten)]
        fields: SetOptions,
        #[command(flatten)]
        wait: WaitOptions,
    },
    /// Show a batch and its counts.
    #[command(
        after_help = "Example:\n  provisioner batch status 01a238af-1228-7221-9a9e-808335bcd085"
    )]
    Status {
        /// The batch id.
        id: String,
    },
    /// Wait until a batch stops running, with a progress display; exit 0 all succeeded, 1 some
    /// failed, 2 cancelled, 3 the wait ran out.
    #[command(
        after_help = "Example:\n  provisioner batch wait 01a238af-1228-7221-9a9e-808335bcd085 --timeout 600"
    )]
    Wait {
        /// The batch id.
        id: String,
        /// Give up waiting after S seconds (exit 3; the batch goes on).
        #[arg(long, value_name = "S")]
        timeout: Option<u64>,
    },
    /// List your batches, newest first.
    #[command(after_help = "Example:\n  provisioner batch list")]
    List,
    /// Cancel a batch's queued items (running ones finish).
    #[command(
        after_help = "Example:\n  provisioner batch cancel 01a238af-1228-7221-9a9e-808335bcd085"
    )]
    Cancel {
        /// The batch id.
        id: String,
    },
    /// Give every failed item a new job (only those that failed with one of the codes, if given).
    #[command(
        after_help = "Example:\n  provisioner batch retry 01a238af-1228-7221-9a9e-808335bcd085 --code 503 --code 500"
    )]
    Retry {
        /// The batch id.
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
        /// The batch id.
        id: String,
        /// Only items whose newest job has this status (queued, running, succeeded, failed, cancelled).
        #[arg(long)]
        status: Option<String>,
        /// The output's format (default ndjson; with --json, one JSON array, and csv is refused).
        #[arg(long, value_enum)]
        format: Option<batch::ResultsFormat>,
        /// Write to this file instead of stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum JobCommand {
    /// Show a job.
    #[command(
        after_help = "Example:\n  provisioner job get 01a238af-26c6-777c-8ab1-075c5147b303 --json"
    )]
    Get {
        /// The job id.
        id: String,
    },
    /// Wait until a job ends; exit 0 succeeded, 1 failed, 2 cancelled, 3 the wait ran out.
    #[command(
        after_help = "Example:\n  provisioner job wait 01a238af-26c6-777c-8ab1-075c5147b303 --timeout 120"
    )]
    Wait {
        /// The job id.
        id: String,
        /// Give up waiting after S seconds (exit 3; the job goes on).
        #[arg(long, value_name = "S")]
        timeout: Option<u64>,
    },
    /// Cancel a queued job (a running or ended one is refused: exit 1).
    #[command(
        after_help = "Example:\n  provisioner job cancel 01a238af-26c6-777c-8ab1-075c5147b303"
    )]
    Cancel {
        /// The job id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum TenantCommand {
    /// Show a tenant (id, name, SIP domain, status, when created).
    #[command(after_help = "Example:\n  provisioner tenant get acme.example.com")]
    Get {
        /// The tenant's URL.
        url: String,
    },
}

/// Where the template comes from (at most one; a row's own choice wins).
#[derive(Debug, Args)]
#[group(multiple = false)]
pub(crate) struct TemplateOptions {
    /// The template's URL.
    #[arg(long, value_name = "U")]
    pub(crate) template_url: Option<String>,
    /// A stored template's id.
    #[arg(long, value_name = "ID")]
    pub(crate) template_id: Option<String>,
    /// A template ZIP to store first.
    #[arg(long, value_name = "FILE.zip")]
    pub(crate) template: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct SetOptions {
    /// A field value the rows lack, e.g. --set loginId=admin --set numberMap=0000000000:4155550100.
    #[arg(long = "set", value_name = "FIELD=VALUE")]
    pub(crate) set: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct WaitOptions {
    /// Wait until it ends, with a progress display; the final state goes to stdout.
    #[arg(long)]
    pub(crate) wait: bool,
    /// Wait as --wait does, giving up after S seconds (exit 3; the work goes on).
    #[arg(long, value_name = "S")]
    pub(crate) timeout: Option<u64>,
}

impl WaitOptions {
    /// Whether to wait, and for how long at most: `--timeout` alone waits too (asking for a
    /// bound on a wait is asking for the wait).
    pub(crate) fn wanted(&self) -> Option<Option<u64>> {
        (self.wait || self.timeout.is_some()).then_some(self.timeout)
    }
}
