//! `dfctl apply`: bulk create-or-replace from a file (the rules and the plan are
//! `nb::bulk`'s).

use std::io::Read as _;

use clap::Args;
use dragonflow_agent::nb::{NbObject, SecGroup, bulk};

use crate::{
    ctx::Ctx,
    error::{CliError, Result, error_chain},
    secgroup::default_rules,
};

#[derive(Args, Debug)]
pub(crate) struct ApplyArgs {
    /// The file (`.json`, `.yaml`/`.yml`, else by content), or `-` for standard input.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: String,
    /// Most records per etcd transaction: the server's `--max-txn-ops` (etcd's default).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    max_txn_ops: u32,
    /// Validate and say what would be written, without writing.
    #[arg(long)]
    dry_run: bool,
}

/// Bad records listed before `apply` gives up listing them.
const APPLY_MAX_LISTED: usize = 100;

impl Ctx {
    pub(crate) async fn apply(&self, a: ApplyArgs) -> Result<()> {
        let started = std::time::Instant::now();
        let stdin = a.file == "-";
        let name = if stdin { "stdin" } else { a.file.as_str() };
        let text = if stdin {
            let mut t = String::new();
            std::io::stdin()
                .read_to_string(&mut t)
                .map_err(|e| CliError::Refused(format!("cannot read standard input: {e}")))?;
            t
        } else {
            std::fs::read_to_string(&a.file)
                .map_err(|e| CliError::Refused(format!("cannot read {}: {e}", a.file)))?
        };
        let format = bulk::Format::detect(if stdin { "" } else { name }, &text);
        let refuse = |errors: Vec<bulk::RecordError>, total: usize| {
            for e in errors.iter().take(APPLY_MAX_LISTED) {
                eprintln!("error: {name}: {e}");
            }
            let more = errors.len().saturating_sub(APPLY_MAX_LISTED);
            CliError::Refused(format!(
                "{name}: {} of {total} records are invalid{}; nothing was written",
                errors.len(),
                if more > 0 {
                    format!(" ({more} more not listed)")
                } else {
                    String::new()
                }
            ))
        };
        let parsed = bulk::parse(&text, format, &self.opts)
            .map_err(|e| CliError::Refused(format!("{name}: {}", error_chain(&e))))?;
        let total = parsed.total();
        if !parsed.errors.is_empty() {
            return Err(refuse(parsed.errors, total));
        }
        let existing = bulk::Existing {
            lswitches: self.items().await?,
            subnets: self.items().await?,
            secgroups: self.items().await?,
            lrouters: self.items().await?,
            lports: self.items().await?,
        };
        let default_group = SecGroup {
            id: bulk::DEFAULT_GROUP.to_string(),
            name: bulk::DEFAULT_GROUP.to_string(),
            rules: default_rules(bulk::DEFAULT_GROUP),
        };
        let plan =
            bulk::plan(parsed.records, &existing, default_group).map_err(|e| refuse(e, total))?;
        let created = plan.writes.len() - plan.replaced;
        let summary = format!(
            "{} created, {} replaced, {} unchanged{}",
            created,
            plan.replaced,
            plan.unchanged,
            if plan.default_group_added {
                " (with secgroup default: egress anywhere, ingress from its members)"
            } else {
                ""
            }
        );
        if a.dry_run {
            println!("{name}: valid; would write {summary}");
            return Ok(());
        }
        let chunks: Vec<&[NbObject]> = plan.writes.chunks(a.max_txn_ops as usize).collect();
        let mut written = 0;
        for (i, chunk) in chunks.iter().enumerate() {
            if let Err(e) = self.store.put_all(chunk).await {
                let what = |o: &NbObject| format!("{} {}", o.kind().segment(), o.id());
                let done = if written == 0 {
                    "nothing was written".to_string()
                } else {
                    format!(
                        "written: the first {written} of {} records to write ({} .. {})",
                        plan.writes.len(),
                        what(&plan.writes[0]),
                        what(&plan.writes[written - 1])
                    )
                };
                return Err(CliError::Unavailable(format!(
                    "{name}: transaction {} of {} failed: {}; {done}; the rest was not \
                     written (apply creates or replaces: run it again to finish)",
                    i + 1,
                    chunks.len(),
                    error_chain(&e)
                )));
            }
            written += chunk.len();
        }
        println!(
            "applied {name}: {summary} in {} transactions, {:.2}s",
            chunks.len(),
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }
}
