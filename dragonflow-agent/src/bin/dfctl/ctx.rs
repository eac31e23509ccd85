//! What the commands that talk to etcd share: the store, the validation options, the
//! output choice, and the generic list/show/validate steps.

use dragonflow_agent::{
    etcd::{NbStore, store::Listing},
    nb::{NbRecord, ValidationOptions},
};
use serde::Serialize;

use crate::{
    error::{CliError, Result, error_chain},
    output::{self, Output, Tabular},
};

pub(crate) struct Ctx {
    pub(crate) store: NbStore,
    pub(crate) opts: ValidationOptions,
    /// `-o` as given; each command has its default.
    pub(crate) output: Option<Output>,
}

impl Ctx {
    /// The format of a list: a table unless `-o` says otherwise.
    pub(crate) fn list_output(&self) -> Output {
        self.output.unwrap_or(Output::Table)
    }

    /// The format of a show: the record as JSON unless `-o` says otherwise.
    pub(crate) fn show_output(&self) -> Output {
        self.output.unwrap_or(Output::Json)
    }

    pub(crate) fn check<T: NbRecord>(&self, obj: &T) -> Result<()> {
        obj.validate(&self.opts)
            .map_err(|e| CliError::invalid(T::KIND, obj.id(), e))
    }

    /// Valid objects of a kind; malformed records are reported on stderr and skipped.
    pub(crate) async fn items<T: NbRecord>(&self) -> Result<Vec<T>> {
        Ok(self
            .listing::<T>()
            .await?
            .items
            .into_iter()
            .map(|v| v.value)
            .collect())
    }

    pub(crate) async fn listing<T: NbRecord>(&self) -> Result<Listing<T>> {
        let l = self.store.list::<T>().await?;
        for e in &l.malformed {
            eprintln!("warning: skipping malformed record: {}", error_chain(e));
        }
        Ok(l)
    }

    /// Every valid record of a kind, in `-o`'s format.
    pub(crate) async fn list<T: NbRecord + Tabular + Serialize>(&self) -> Result<()> {
        let l = self.listing::<T>().await?;
        let items: Vec<&T> = l.items.iter().map(|v| &v.value).collect();
        output::emit_rows(self.list_output(), &items)
    }

    /// One record: the record itself (JSON/YAML) or its list row (table).
    pub(crate) async fn show<T: NbRecord + Tabular + Serialize>(&self, id: &str) -> Result<()> {
        let v = self.store.get_existing::<T>(id).await?.value;
        output::emit(self.show_output(), &v, || {
            output::table(T::HEADERS, vec![v.row()])
        })
    }
}
