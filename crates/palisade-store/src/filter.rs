//! A small builder for the dynamic `WHERE` clauses of the filtered listings.

use rusqlite::ToSql;

/// Collects `AND`-ed conditions and their bound parameters (never interpolated values).
pub(crate) struct Where {
    /// The clause, starting with ` WHERE 1=1`.
    pub sql: String,
    /// Bound parameters in order.
    pub args: Vec<Box<dyn ToSql>>,
}

impl Where {
    pub(crate) fn new() -> Self {
        Self {
            sql: String::from(" WHERE 1=1"),
            args: Vec::new(),
        }
    }

    /// Adds `col <op> ?` when `value` is present. `col` and `op` are code constants.
    pub(crate) fn cmp<T: ToSql + Clone + 'static>(
        &mut self,
        col: &str,
        op: &str,
        value: &Option<T>,
    ) -> &mut Self {
        if let Some(v) = value {
            self.args.push(Box::new(v.clone()));
            self.sql
                .push_str(&format!(" AND {col} {op} ?{}", self.args.len()));
        }
        self
    }

    /// Adds `col = ?` when `value` is present.
    pub(crate) fn eq<T: ToSql + Clone + 'static>(
        &mut self,
        col: &str,
        value: &Option<T>,
    ) -> &mut Self {
        self.cmp(col, "=", value)
    }

    /// Adds a time window on `ts_ms`: `since` inclusive, `until` exclusive.
    pub(crate) fn window(&mut self, since: Option<i64>, until: Option<i64>) -> &mut Self {
        self.cmp("ts_ms", ">=", &since).cmp("ts_ms", "<", &until)
    }

    /// Binds one more parameter (e.g. LIMIT), returning its placeholder number.
    pub(crate) fn bind<T: ToSql + 'static>(&mut self, v: T) -> usize {
        self.args.push(Box::new(v));
        self.args.len()
    }

    /// The parameters, for `query_map`/`query_row`.
    pub(crate) fn params(&self) -> impl rusqlite::Params + '_ {
        rusqlite::params_from_iter(self.args.iter().map(|b| b.as_ref()))
    }
}
