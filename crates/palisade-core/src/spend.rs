//! Money and time for spend control: prices and costs, calendar months (UTC), group budgets.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::model::FieldError;

/// Nano-dollars in one dollar: costs are kept as integers so sums are exact.
pub const NANO_PER_USD: f64 = 1e9;

/// Price of a model in USD per million tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// Model name (a request's model matches it exactly, or by the longest prefix,
    /// so `gpt-4o-mini` prices `gpt-4o-mini-2024-07-18`).
    pub model: String,
    /// USD per million input tokens.
    pub input_per_mtok: f64,
    /// USD per million output tokens.
    pub output_per_mtok: f64,
    /// USD per million cached input tokens (defaults to the input price).
    #[serde(default)]
    pub cached_input_per_mtok: Option<f64>,
    /// USD per million input tokens written to a prompt cache (Anthropic
    /// `cache_creation_input_tokens`; defaults to the input price).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_per_mtok: Option<f64>,
}

impl Price {
    /// Checks the fields.
    pub fn validate(&self) -> Result<(), FieldError> {
        if !is_model_name(&self.model) {
            return Err(FieldError::new(
                "model",
                "must be 1-200 characters, without spaces or control characters",
            ));
        }
        for (f, v) in [
            ("input_per_mtok", Some(self.input_per_mtok)),
            ("output_per_mtok", Some(self.output_per_mtok)),
            ("cached_input_per_mtok", self.cached_input_per_mtok),
            ("cache_write_per_mtok", self.cache_write_per_mtok),
        ] {
            if let Some(v) = v
                && !(v.is_finite() && (0.0..=100_000.0).contains(&v))
            {
                return Err(FieldError::new(
                    f,
                    "must be between 0 and 100000 USD per million tokens",
                ));
            }
        }
        Ok(())
    }

    /// Cost in nano-dollars of a request's tokens. `prompt` includes `cached` (OpenAI's
    /// convention; Anthropic usage is normalised to it when read).
    pub fn cost_nano(&self, prompt: i64, completion: i64, cached: i64) -> i64 {
        self.cost_nano_with_writes(prompt, completion, cached, 0)
    }

    /// Like [`Price::cost_nano`], `written` of the prompt's tokens being cache writes.
    pub fn cost_nano_with_writes(
        &self,
        prompt: i64,
        completion: i64,
        cached: i64,
        written: i64,
    ) -> i64 {
        let cached = cached.clamp(0, prompt.max(0));
        let written = written.clamp(0, (prompt - cached).max(0));
        let uncached = (prompt - cached - written).max(0) as f64;
        let usd = uncached * self.input_per_mtok
            + cached as f64 * self.cached_input_per_mtok.unwrap_or(self.input_per_mtok)
            + written as f64 * self.cache_write_per_mtok.unwrap_or(self.input_per_mtok)
            + completion.max(0) as f64 * self.output_per_mtok;
        // per-million prices times tokens = micro-dollars; × 1000 = nano-dollars.
        (usd * 1000.0).round() as i64
    }
}

/// The shipped price list.
pub fn default_prices() -> Vec<Price> {
    #[derive(Deserialize)]
    struct File {
        prices: Vec<Price>,
    }
    serde_json::from_str::<File>(include_str!("../data/prices.json"))
        .map(|f| f.prices)
        .unwrap_or_default()
}

/// Prices by model with longest-prefix fallback.
#[derive(Debug, Default)]
pub struct PriceTable {
    exact: HashMap<String, Price>,
    by_len: Vec<String>,
}

impl PriceTable {
    /// Builds the table.
    pub fn new(prices: impl IntoIterator<Item = Price>) -> Self {
        let exact: HashMap<String, Price> =
            prices.into_iter().map(|p| (p.model.clone(), p)).collect();
        let mut by_len: Vec<String> = exact.keys().cloned().collect();
        by_len.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
        Self { exact, by_len }
    }

    /// The price of a model: exact name, else that of the longest known name of which it is a
    /// dated snapshot or a tagged version (`gpt-4o-2024-08-06`, `gpt-4-0613`, `…-latest`,
    /// `claude-3-5-sonnet@20240620`, `llama3:8b`). Another model that merely starts with a
    /// known name (`o3-pro`, `gpt-4o-mini`, `claude-opus-4-5`) has no price.
    pub fn lookup(&self, model: &str) -> Option<&Price> {
        self.exact.get(model).or_else(|| {
            self.by_len
                .iter()
                .find(|k| {
                    model
                        .strip_prefix(k.as_str())
                        .is_some_and(is_version_suffix)
                })
                .and_then(|k| self.exact.get(k))
        })
    }
}

/// Whether what follows a model name marks a version of it rather than another model: `@…` or
/// `:…` (a provider's version tag), `-latest`, or `-` and a date or snapshot number (four or
/// more digits, dashes allowed: `-2024-08-06`, `-0613`).
fn is_version_suffix(rest: &str) -> bool {
    if let Some(tag) = rest.strip_prefix(['@', ':']) {
        return !tag.is_empty();
    }
    let Some(rest) = rest.strip_prefix('-') else {
        return false;
    };
    rest == "latest"
        || (rest.bytes().take_while(u8::is_ascii_digit).count() >= 4
            && rest.bytes().all(|b| b.is_ascii_digit() || b == b'-'))
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// (year, month) of a number of days since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, i64) {
    let (y, m, _) = civil_date(z);
    (y, m)
}

/// (year, month, day) of a number of days since 1970-01-01.
fn civil_date(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, doy - (153 * mp + 2) / 5 + 1)
}

/// A Unix-ms time as an RFC 3339 UTC timestamp (`2026-11-28T05:03:07Z`).
pub fn utc_timestamp(ms: i64) -> String {
    let (y, m, d) = civil_date(ms.div_euclid(86_400_000));
    let s = ms.div_euclid(1000).rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// The calendar month (UTC) of a Unix-ms time, as `yyyymm`.
pub fn month_key(ms: i64) -> i32 {
    let (y, m) = civil_from_days(ms.div_euclid(86_400_000));
    (y * 100 + m) as i32
}

/// Whether `m` can be a model name: 1–200 characters, none of them whitespace or control
/// characters (provider model ids have neither).
pub fn is_model_name(m: &str) -> bool {
    !m.is_empty()
        && m.len() <= 200
        && !m
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || is_invisible(c))
}

/// Characters that show as nothing: a name holding one looks like another name.
fn is_invisible(c: char) -> bool {
    matches!(c, '\u{ad}' | '\u{34f}' | '\u{61c}' | '\u{115f}' | '\u{1160}' | '\u{180e}'
        | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{206f}'
        | '\u{2800}' | '\u{3164}' | '\u{feff}' | '\u{fe00}'..='\u{fe0f}' | '\u{ffa0}'
        | '\u{e0000}'..='\u{e0fff}')
}

/// Unix ms of the first instant of the UTC month containing `ms`.
pub fn month_start_ms(ms: i64) -> i64 {
    let (y, m) = civil_from_days(ms.div_euclid(86_400_000));
    days_from_civil(y, m, 1) * 86_400_000
}

/// The UTC day of a Unix-ms time, as `yyyy-mm-dd`.
pub fn day_string(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let (y, m) = civil_from_days(days);
    let d = days - days_from_civil(y, m, 1) + 1;
    format!("{y:04}-{m:02}-{d:02}")
}

/// What happens when a group's monthly budget is spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BudgetAction {
    /// Refuse with 402 before calling the upstream.
    #[default]
    Block,
    /// Serve, with a warning header and an alert.
    Warn,
}

/// A group (team) with its budget and default rate limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    /// Unique name.
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Monthly budget in USD; none means unlimited.
    #[serde(default)]
    pub monthly_budget_usd: Option<f64>,
    /// Percent of the budget at which one warning alert is raised per month.
    #[serde(default = "default_warn")]
    pub budget_warn_percent: u8,
    /// `block` (402) or `warn` once the budget is spent.
    #[serde(default)]
    pub budget_action: BudgetAction,
    /// Requests per minute allowed to each key of the group (keys may override).
    #[serde(default)]
    pub rpm: Option<u32>,
    /// Tokens per minute allowed to each key of the group (keys may override).
    #[serde(default)]
    pub tpm: Option<u32>,
    /// Requests per minute for the whole group together.
    #[serde(default)]
    pub group_rpm: Option<u32>,
    /// Tokens per minute for the whole group together.
    #[serde(default)]
    pub group_tpm: Option<u32>,
}

fn default_warn() -> u8 {
    80
}

impl GroupSpec {
    /// A group with no budget or limits.
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_string(),
            description: String::new(),
            monthly_budget_usd: None,
            budget_warn_percent: 80,
            budget_action: BudgetAction::Block,
            rpm: None,
            tpm: None,
            group_rpm: None,
            group_tpm: None,
        }
    }

    /// Checks the fields.
    pub fn validate(&self) -> Result<(), FieldError> {
        crate::model::validate_name("name", &self.name)?;
        if self.description.len() > 1024 {
            return Err(FieldError::new("description", "must be at most 1024 bytes"));
        }
        if let Some(b) = self.monthly_budget_usd
            && !(b.is_finite() && (0.0..=1e9).contains(&b))
        {
            return Err(FieldError::new(
                "monthly_budget_usd",
                "must be between 0 and 1e9",
            ));
        }
        if !(1..=100).contains(&self.budget_warn_percent) {
            return Err(FieldError::new(
                "budget_warn_percent",
                "must be between 1 and 100",
            ));
        }
        for (f, v) in [
            ("rpm", self.rpm),
            ("tpm", self.tpm),
            ("group_rpm", self.group_rpm),
            ("group_tpm", self.group_tpm),
        ] {
            if v == Some(0) {
                return Err(FieldError::new(
                    f,
                    "must be at least 1 (omit it for no limit)",
                ));
            }
        }
        Ok(())
    }

    /// The budget in nano-dollars.
    pub fn budget_nano(&self) -> Option<i64> {
        self.monthly_budget_usd
            .map(|b| (b * NANO_PER_USD).round() as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_and_days() {
        // 2026-11-25T16:00:00Z
        let t = 1_795_622_400_000;
        assert_eq!(month_key(t), 202611);
        assert_eq!(day_string(t), "2026-11-25");
        assert_eq!(day_string(month_start_ms(t)), "2026-11-01");
        assert_eq!(utc_timestamp(t + 3_723_456), "2026-11-25T17:02:03Z");
        assert_eq!(
            utc_timestamp(days_from_civil(2028, 2, 29) * 86_400_000 - 1),
            "2028-02-28T23:59:59Z"
        );
        // New year and leap day boundaries.
        let ny = days_from_civil(2027, 1, 1) * 86_400_000;
        assert_eq!(month_key(ny - 1), 202612);
        assert_eq!(month_key(ny), 202701);
        assert_eq!(
            day_string(days_from_civil(2028, 2, 29) * 86_400_000),
            "2028-02-29"
        );
        assert_eq!(month_key(0), 197001);
    }

    #[test]
    fn costs_are_exact_in_nano_dollars() {
        let p = Price {
            model: "m".into(),
            input_per_mtok: 0.15,
            output_per_mtok: 0.60,
            cached_input_per_mtok: Some(0.075),
            cache_write_per_mtok: Some(0.1875),
        };
        // 1000 prompt (200 cached), 500 completion: 800*0.15 + 200*0.075 + 500*0.6 = 435 µ$.
        assert_eq!(p.cost_nano(1000, 500, 200), 435_000);
        // Of which 400 written to the cache: 400*0.15 + 400*0.1875 + 200*0.075 + 500*0.6.
        assert_eq!(p.cost_nano_with_writes(1000, 500, 200, 400), 450_000);
        // Shipped Anthropic prices write at 1.25 × input.
        let claude = default_prices()
            .into_iter()
            .find(|p| p.model == "claude-sonnet-4-5")
            .unwrap();
        assert_eq!(claude.cache_write_per_mtok, Some(3.75));
        assert_eq!(p.cost_nano(0, 0, 0), 0);
        let t = PriceTable::new([
            p.clone(),
            Price {
                model: "m-large".into(),
                ..p.clone()
            },
        ]);
        assert!(t.lookup("m-2024-07-18").is_some());
        assert_eq!(t.lookup("m-large-2024-07-18").unwrap().model, "m-large");
        assert_eq!(t.lookup("m-large-0613").unwrap().model, "m-large");
        assert_eq!(t.lookup("m-large@20240620").unwrap().model, "m-large");
        assert_eq!(t.lookup("m:8b").unwrap().model, "m");
        assert_eq!(t.lookup("m-latest").unwrap().model, "m");
        // Other models that start with a known name are not priced as it.
        for other in [
            "mx",
            "m-large-2",
            "m-pro",
            "m-mini",
            "m-4-5",
            "m.5",
            "m-",
            "m@",
            "m-2024x",
        ] {
            assert!(t.lookup(other).is_none(), "{other}");
        }
        assert!(default_prices().len() > 10);
    }

    #[test]
    fn group_validation_names_fields() {
        let mut g = GroupSpec::named("eng");
        g.budget_warn_percent = 0;
        assert_eq!(g.validate().unwrap_err().field, "budget_warn_percent");
        let mut g = GroupSpec::named("eng");
        g.rpm = Some(0);
        assert_eq!(g.validate().unwrap_err().field, "rpm");
        let mut g = GroupSpec::named("eng");
        g.monthly_budget_usd = Some(-1.0);
        assert_eq!(g.validate().unwrap_err().field, "monthly_budget_usd");
    }
}
