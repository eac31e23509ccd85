//! How dfctl prints: tables (comfy-table, borderless, for people), JSON and YAML (for
//! scripts), the one choice `-o table|json|yaml` makes for every list and show; and the
//! few value formats several commands share.

use std::time::{SystemTime, UNIX_EPOCH};

use clap::ValueEnum;
use comfy_table::{Table, TableStyle};
use dragonflow_agent::nb::AapMode;
use serde::Serialize;

use crate::error::{CliError, Result};

/// The format of a list or show (`-o`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// Aligned columns with a header line (the default of lists); `text` is the same
    /// choice (`dfctl monitor`: one readable line per event).
    #[value(alias = "text")]
    Table,
    /// Pretty-printed JSON (the default of `show`, except `secgroup show`).
    Json,
    /// YAML (the same fields as JSON).
    Yaml,
}

/// A row type with its table columns.
pub(crate) trait Tabular {
    /// Column titles, in the order of [`Tabular::row`].
    const HEADERS: &'static [&'static str];
    /// One row; lists inside a cell are joined with `;` (an AAP itself may hold a `,`).
    fn row(&self) -> Vec<String>;
}

/// Prints `data` as JSON or YAML, or the table `table` makes.
pub(crate) fn emit<T: Serialize + ?Sized>(
    output: Output,
    data: &T,
    table: impl FnOnce() -> String,
) -> Result<()> {
    match output {
        Output::Table => {
            print!("{}", table());
            Ok(())
        }
        Output::Json => print_json(data),
        Output::Yaml => print_yaml(data),
    }
}

/// Prints rows of one [`Tabular`] type in `output`.
pub(crate) fn emit_rows<T: Tabular + Serialize>(output: Output, rows: &[&T]) -> Result<()> {
    emit(output, rows, || {
        table(T::HEADERS, rows.iter().map(|r| r.row()).collect())
    })
}

pub(crate) fn print_json<T: Serialize + ?Sized>(v: &T) -> Result<()> {
    let s = serde_json::to_string_pretty(v)
        .map_err(|e| CliError::Unavailable(format!("cannot format JSON: {e}")))?;
    println!("{s}");
    Ok(())
}

pub(crate) fn print_yaml<T: Serialize + ?Sized>(v: &T) -> Result<()> {
    let s = serde_saphyr::to_string(&v)
        .map_err(|e| CliError::Unavailable(format!("cannot format YAML: {e}")))?;
    print!("{s}");
    if !s.ends_with('\n') {
        println!();
    }
    Ok(())
}

/// Left-aligned columns two spaces apart, a header line, no borders (easy to read and to
/// `grep`/`awk`); trailing blanks trimmed.
pub(crate) fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_style(TableStyle::new());
    t.set_header(headers.to_vec());
    t.add_rows(rows);
    for c in t.column_iter_mut() {
        c.set_padding((0, 2));
    }
    let mut out = t.trim_fmt();
    out.push('\n');
    out
}

/// `-` for an empty cell.
pub(crate) fn dash(s: impl Into<String>) -> String {
    let s = s.into();
    if s.is_empty() { "-".into() } else { s }
}

pub(crate) fn mode(m: AapMode) -> String {
    match m {
        AapMode::Broadcast => "broadcast".into(),
        AapMode::Detection => "detection".into(),
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `12.3s ago`.
pub(crate) fn ago(now_ms: u64, at_ms: u64) -> String {
    format!("{:.1}s ago", now_ms.saturating_sub(at_ms) as f64 / 1000.0)
}

/// Unix ms as `YYYY-MM-DDTHH:MM:SS.mmmZ` (RFC 3339, UTC).
pub(crate) fn utc(ms: u64) -> String {
    match i64::try_from(ms).map(jiff::Timestamp::from_millisecond) {
        Ok(Ok(t)) => format!("{t:.3}"),
        // Past jiff's range (year 9999): say what we got rather than a wrong date.
        _ => format!("{ms} ms since 1970"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(utc(1_795_000_000_000), "2026-11-18T11:06:40.000Z");
        assert_eq!(utc(u64::MAX), format!("{} ms since 1970", u64::MAX));
        assert_eq!(ago(10_500, 9_000), "1.5s ago");
    }

    #[test]
    fn tables_have_no_borders() {
        let t = table(
            &["ID", "NAME", "N"],
            vec![
                vec!["a".into(), "-".into(), "1".into()],
                vec!["long-id".into(), "x y".into(), "22".into()],
            ],
        );
        assert_eq!(t, "ID       NAME  N\na        -     1\nlong-id  x y   22\n");
        assert_eq!(table(&["ID", "NAME"], Vec::new()), "ID  NAME\n");
    }
}
