//! The policy format (JSON), its validation and loading from files.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{PolicyError, Result};

/// What kind of traffic a rule inspects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// A request to an LLM (messages, system prompt, tool definitions and results inside the prompt).
    LlmRequest,
    /// An LLM's answer.
    LlmResponse,
    /// An MCP tool's description and schema.
    ToolDescription,
    /// The arguments of an MCP tool call.
    ToolArguments,
    /// The result of an MCP tool call.
    ToolResult,
    /// An agent-to-agent (A2A) message.
    A2aMessage,
}

impl Target {
    /// All targets, in declaration order.
    pub const ALL: [Target; 6] = [
        Target::LlmRequest,
        Target::LlmResponse,
        Target::ToolDescription,
        Target::ToolArguments,
        Target::ToolResult,
        Target::A2aMessage,
    ];

    /// Dense index of this target (0..6), used for per-target matcher tables.
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// The snake_case name used in policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            Target::LlmRequest => "llm_request",
            Target::LlmResponse => "llm_response",
            Target::ToolDescription => "tool_description",
            Target::ToolArguments => "tool_arguments",
            Target::ToolResult => "tool_result",
            Target::A2aMessage => "a2a_message",
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How serious a rule's finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Informational / weak signal.
    Low,
    /// Suspicious.
    Medium,
    /// Likely an attack or leak.
    High,
    /// Almost certainly an attack or leak.
    Critical,
}

impl Severity {
    /// Score weight used when a rule does not set `score`.
    pub fn default_score(self) -> u8 {
        match self {
            Severity::Critical => 40,
            Severity::High => 25,
            Severity::Medium => 10,
            Severity::Low => 5,
        }
    }

    /// The snake_case name used in policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the gateway should do when a rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Record the match only.
    Log,
    /// Record the match and raise an alert.
    Alert,
    /// Replace the matched value with a placeholder before forwarding.
    Redact,
    /// Refuse the request or response.
    Block,
}

impl Action {
    /// The snake_case name used in policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Log => "log",
            Action::Alert => "alert",
            Action::Redact => "redact",
            Action::Block => "block",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A check a matched value must pass before it counts (cuts false positives on numbers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Validator {
    /// No extra check.
    #[default]
    None,
    /// Luhn checksum over the digits (payment cards).
    Luhn,
    /// ISO 13616 mod-97 check (IBANs).
    Iban,
}

/// Redaction settings of a rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redact {
    /// Placeholder label, `[A-Z0-9_]+`; placeholders look like `[LABEL_1]`.
    pub label: String,
    /// Optional validator a match must pass.
    #[serde(default, skip_serializing_if = "is_default_validator")]
    pub validator: Validator,
    /// The part of a match that is replaced, as a regex searched within the match (default:
    /// all of it). A pattern that needs context to be sure (`phone: +1 415…`) keeps the
    /// context in clear and masks only the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

fn is_default_validator(v: &Validator) -> bool {
    *v == Validator::None
}

/// What a rule looks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Patterns {
    /// Regular expressions in Rust `regex` syntax (no look-around, no back-references).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub regex: Vec<String>,
    /// Literal phrases, matched on word boundaries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keywords: Vec<String>,
    /// Whether keywords match case-sensitively (default false). Regexes carry their own flags.
    #[serde(default, skip_serializing_if = "is_false")]
    pub case_sensitive: bool,
    /// A learned detector: the rule also matches when the named model's probability for the
    /// scanned text reaches the threshold (see `crate::classifier`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classifier: Option<ClassifierPattern>,
}

/// A rule's classifier pattern: which built-in model, and from which probability it matches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierPattern {
    /// Name of a built-in model (see [`crate::classifier_models`]).
    pub model: String,
    /// The rule matches when the model's probability is at least this; strictly between 0 and 1.
    pub threshold: f64,
}

// Validation rejects non-finite thresholds (and JSON has no NaN), so equality is total.
impl Eq for ClassifierPattern {}

fn is_false(b: &bool) -> bool {
    !*b
}

/// In-file examples that the test-suite runs against the rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Examples {
    /// Texts the rule must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub positive: Vec<String>,
    /// Texts the rule must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub negative: Vec<String>,
}

/// One detection rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Id, unique within the policy (`[A-Za-z0-9_.-]+`).
    pub id: String,
    /// Human-readable name.
    pub name: String,
    /// Free snake_case category (prompt_injection, secrets, pii…).
    pub category: String,
    /// Severity of a finding.
    pub severity: Severity,
    /// Kinds of traffic the rule inspects (non-empty).
    pub targets: Vec<Target>,
    /// What to look for.
    pub patterns: Patterns,
    /// Regexes that cancel the rule's match when they match the same scanned text.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// What to do on a match.
    pub action: Action,
    /// Score weight 0..=100; defaults by severity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<u32>,
    /// Redaction label and validator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redact: Option<Redact>,
    /// Why the rule exists.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub rationale: String,
    /// Examples the test-suite checks.
    #[serde(default, skip_serializing_if = "is_empty_examples")]
    pub examples: Examples,
}

fn is_empty_examples(e: &Examples) -> bool {
    e.positive.is_empty() && e.negative.is_empty()
}

impl Rule {
    /// The score this rule contributes when it matches (explicit or by severity).
    pub fn effective_score(&self) -> u8 {
        match self.score {
            Some(s) => u8::try_from(s.min(100)).unwrap_or(100),
            None => self.severity.default_score(),
        }
    }

    /// The placeholder label used by redaction (explicit, else the category upper-cased).
    pub fn redact_label(&self) -> String {
        match &self.redact {
            Some(r) => r.label.clone(),
            None => {
                let label: String = self
                    .category
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .map(|c| c.to_ascii_uppercase())
                    .collect();
                if label.is_empty() {
                    "REDACTED".to_owned()
                } else {
                    label
                }
            }
        }
    }

    /// The validator a match must pass (none unless `redact.validator` says so).
    pub fn validator(&self) -> Validator {
        self.redact
            .as_ref()
            .map(|r| r.validator)
            .unwrap_or_default()
    }
}

/// A policy: a named, versioned list of rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Id, `[a-z0-9-]+`, unique across loaded policies.
    pub id: String,
    /// Human-readable name.
    pub name: String,
    /// What the policy is for.
    #[serde(default)]
    pub description: String,
    /// Version string of the policy document.
    #[serde(default)]
    pub version: String,
    /// The rules.
    pub rules: Vec<Rule>,
}

impl Policy {
    /// Parses and validates a policy document.
    pub fn from_json(json: &str) -> Result<Policy> {
        let policy = Policy::parse(json)?;
        policy.validate()?;
        Ok(policy)
    }

    /// Parses a policy document without validating it.
    fn parse(json: &str) -> Result<Policy> {
        serde_json::from_str(json).map_err(|e| PolicyError::Json {
            message: e.to_string(),
        })
    }

    /// Parses and validates several policies, checking their regexes on all cores first.
    ///
    /// Same results, in the same order, as calling [`Policy::from_json`] on each text; faster
    /// for many rules, because compiling each regex once to check it is most of a pack's load
    /// time (~2 ms for a Unicode-aware pattern) and the checks are independent.
    pub fn from_json_many(texts: &[&str]) -> Vec<Result<Policy>> {
        let parsed: Vec<Result<Policy>> = texts.iter().map(|text| Policy::parse(text)).collect();
        precheck_regexes(parsed.iter().filter_map(|p| p.as_ref().ok()));
        parsed
            .into_iter()
            .map(|p| {
                let p = p?;
                p.validate()?;
                Ok(p)
            })
            .collect()
    }

    /// Reads, parses and validates a policy file; errors carry the file's path.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Policy> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Policy::from_json(&text).map_err(|e| PolicyError::File {
            path: path.to_path_buf(),
            source: Box::new(e),
        })
    }

    /// Serialises the policy back to pretty JSON.
    pub fn to_json_pretty(&self) -> String {
        // Serialising plain data structs with string keys cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks everything serde cannot: ids, patterns compile, targets, labels, scores.
    pub fn validate(&self) -> Result<()> {
        let pid = &self.id;
        if self.id.is_empty()
            || self.id.len() > MAX_POLICY_ID_LEN
            || !self
                .id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(PolicyError::InvalidPolicy {
                // (An over-long id is not repeated whole in the error.)
                policy: pid.chars().take(MAX_ID_LEN).collect(),
                problem: format!("policy id must match [a-z0-9-]{{1,{MAX_POLICY_ID_LEN}}}"),
            });
        }
        let problem = name_problem(&self.name)
            .or_else(|| text_problem("description", &self.description, MAX_TEXT_CHARS))
            .or_else(|| text_problem("version", &self.version, MAX_VERSION_CHARS));
        if let Some(problem) = problem {
            return Err(PolicyError::InvalidPolicy {
                policy: pid.clone(),
                problem,
            });
        }
        if self.rules.is_empty() {
            return Err(PolicyError::InvalidPolicy {
                policy: pid.clone(),
                problem: "a policy needs at least one rule".into(),
            });
        }
        let mut seen = HashSet::new();
        for rule in &self.rules {
            validate_rule(pid, rule)?;
            if !seen.insert(rule.id.as_str()) {
                return Err(PolicyError::DuplicateRule {
                    policy: pid.clone(),
                    rule: rule.id.clone(),
                });
            }
        }
        Ok(())
    }
}

fn rule_err(policy: &str, rule: &str, problem: impl Into<String>) -> PolicyError {
    PolicyError::InvalidRule {
        policy: policy.to_owned(),
        rule: rule.to_owned(),
        problem: problem.into(),
    }
}

/// Longest policy or rule id: ids travel in request logs, alerts, URLs and error messages.
const MAX_ID_LEN: usize = 100;
/// Longest policy id: proxies name their policies by id, and names are at most 64 characters.
const MAX_POLICY_ID_LEN: usize = 64;
/// Longest policy or rule name, in characters.
const MAX_NAME_CHARS: usize = 200;

/// Longest redaction label (it is written into every placeholder).
const MAX_LABEL_LEN: usize = 40;
/// Longest description or rationale, and version, in characters.
const MAX_TEXT_CHARS: usize = 4000;
const MAX_VERSION_CHARS: usize = 40;

/// What is wrong with a policy or rule name: empty or only invisible characters, over-long, or
/// holding control, bidi or other invisible characters (they would reach terminals, logs and
/// the console as escape sequences or reorder what is shown around them).
fn name_problem(name: &str) -> Option<String> {
    if name.trim().is_empty() {
        return Some("name must not be empty".into());
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Some(format!("name must be at most {MAX_NAME_CHARS} characters"));
    }
    name.chars()
        .any(|c| {
            c.is_control()
                || crate::normalize::is_invisible(c)
                // Tag characters (hidden ASCII), line separators, the braille blank.
                || matches!(c, '\u{E0020}'..='\u{E007E}' | '\u{2028}' | '\u{2029}' | '\u{2800}')
        })
        .then(|| "name must not contain control, bidi or invisible characters".into())
}

/// What is wrong with a free text (description, rationale, version): over-long, or holding
/// control characters other than line breaks and tabs.
fn text_problem(field: &str, text: &str, max: usize) -> Option<String> {
    if text.chars().count() > max {
        return Some(format!("{field} must be at most {max} characters"));
    }
    text.chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
        .then(|| format!("{field} must not contain control characters"))
}

fn validate_rule(pid: &str, rule: &Rule) -> Result<()> {
    let rid = rule.id.as_str();
    if rid.is_empty()
        || rid.len() > MAX_ID_LEN
        || !rid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        let shown: String = rid.chars().take(MAX_ID_LEN).collect();
        return Err(rule_err(
            pid,
            &shown,
            format!("rule id must match [A-Za-z0-9_.-]{{1,{MAX_ID_LEN}}}"),
        ));
    }
    if let Some(problem) = name_problem(&rule.name)
        .or_else(|| text_problem("rationale", &rule.rationale, MAX_TEXT_CHARS))
    {
        return Err(rule_err(pid, rid, problem));
    }
    if rule.category.is_empty()
        || rule.category.len() > MAX_ID_LEN
        || !rule
            .category
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(rule_err(
            pid,
            rid,
            format!(
                "category `{}` must be snake_case ([a-z0-9_]{{1,{MAX_ID_LEN}}})",
                rule.category
            ),
        ));
    }
    if rule.targets.is_empty() {
        return Err(rule_err(pid, rid, "targets must not be empty"));
    }
    if rule.patterns.regex.is_empty()
        && rule.patterns.keywords.is_empty()
        && rule.patterns.classifier.is_none()
    {
        return Err(rule_err(
            pid,
            rid,
            "patterns must contain at least one regex, keyword or classifier",
        ));
    }
    if let Some(c) = &rule.patterns.classifier {
        if !crate::classifier::classifier_models().contains(&c.model.as_str()) {
            return Err(rule_err(
                pid,
                rid,
                format!(
                    "unknown classifier model `{}` (built-in models: {})",
                    c.model,
                    crate::classifier::classifier_models().join(", ")
                ),
            ));
        }
        if !(c.threshold > 0.0 && c.threshold < 1.0) {
            return Err(rule_err(
                pid,
                rid,
                format!(
                    "classifier threshold {} must be strictly between 0 and 1",
                    c.threshold
                ),
            ));
        }
        if rule.action == Action::Redact {
            return Err(rule_err(
                pid,
                rid,
                "a classifier rule cannot redact: a probability marks no value to replace",
            ));
        }
    }
    if let Some(score) = rule.score
        && score > 100
    {
        return Err(rule_err(
            pid,
            rid,
            format!("score {score} is out of range 0..=100"),
        ));
    }
    if let Some(redact) = &rule.redact
        && (redact.label.is_empty()
            || redact.label.len() > MAX_LABEL_LEN
            || !redact
                .label
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'))
    {
        return Err(rule_err(
            pid,
            rid,
            format!(
                "redact label `{}` must match [A-Z0-9_]{{1,{MAX_LABEL_LEN}}}",
                redact.label.chars().take(MAX_LABEL_LEN).collect::<String>()
            ),
        ));
    }
    if let Some(v) = rule.redact.as_ref().and_then(|r| r.value.as_deref()) {
        compile_regex(pid, rid, v)?;
    }
    for kw in &rule.patterns.keywords {
        if kw.trim().is_empty() {
            return Err(rule_err(pid, rid, "keywords must not be empty strings"));
        }
    }
    for pattern in &rule.patterns.regex {
        if checked_regex(pid, rid, pattern)?.matches_empty {
            return Err(PolicyError::BadRegex {
                policy: pid.to_owned(),
                rule: rid.to_owned(),
                pattern: pattern.clone(),
                message: "pattern matches the empty string, so it would match every text".into(),
            });
        }
    }
    for pattern in &rule.allow {
        checked_regex(pid, rid, pattern)?;
    }
    Ok(())
}

/// Size limit for one compiled regex; generous, but stops pathological patterns.
pub(crate) const REGEX_SIZE_LIMIT: usize = 4 << 20;

/// Compiles one rule regex exactly as the engine will use it.
pub(crate) fn compile_regex(policy: &str, rule: &str, pattern: &str) -> Result<regex::Regex> {
    build_prepared(&prepare_regex(pattern)).map_err(|e| PolicyError::BadRegex {
        policy: policy.to_owned(),
        rule: rule.to_owned(),
        pattern: pattern.to_owned(),
        message: e.to_string(),
    })
}

/// Compiles an already prepared source (see [`prepare_regex`]) with the engine's limits.
/// Lazy-DFA cache capacity of a rule regex (the regex crate's default is 2 MiB for each of its
/// forward and reverse automata, per searching thread).
const RULE_DFA_LIMIT: usize = 256 << 10;

pub(crate) fn build_prepared(source: &str) -> std::result::Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(source)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(RULE_DFA_LIMIT)
        .build()
}

/// A rule regex that compiles as the engine will use it.
pub(crate) struct CheckedRegex {
    /// The prepared source (see [`prepare_regex`]): what the engine compiles.
    pub(crate) source: String,
    /// Whether it matches the empty string.
    pub(crate) matches_empty: bool,
}

/// Prepared sources that compiled under [`REGEX_SIZE_LIMIT`] in this process, and whether each
/// matches the empty string. A pack is checked when it is loaded, again when a policy set is
/// compiled from it (once per proxy and reload) and on every API edit; compiling ~1 400 Unicode
/// regexes fully each time cost seconds of start-up. Only successes are kept (a bad pattern is
/// compiled again, and reports its error, every time); the map is bounded and starts over when
/// full (by count or by bytes).
static CHECKED: std::sync::Mutex<Option<(std::collections::HashMap<String, bool>, usize)>> =
    std::sync::Mutex::new(None);
/// Most sources the map holds, and most bytes of source text (the shipped packs: ~1 500 and
/// ~200 KiB).
const CHECKED_CAPACITY: usize = 1 << 15;
const CHECKED_BYTES: usize = 8 << 20;

/// Checks that `pattern` compiles exactly as the engine will compile it (same preparation, same
/// size limit); compiles each distinct prepared source at most once per process.
pub(crate) fn checked_regex(policy: &str, rule: &str, pattern: &str) -> Result<CheckedRegex> {
    let source = prepare_regex(pattern);
    let lock = || {
        CHECKED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    if let Some(&matches_empty) = lock().as_ref().and_then(|(m, _)| m.get(&source)) {
        return Ok(CheckedRegex {
            source,
            matches_empty,
        });
    }
    let matches_empty = compile_regex(policy, rule, pattern)?.is_match("");
    let mut guard = lock();
    let (map, bytes) = guard.get_or_insert_with(Default::default);
    if map.len() >= CHECKED_CAPACITY || *bytes + source.len() > CHECKED_BYTES {
        map.clear();
        *bytes = 0;
    }
    if map.insert(source.clone(), matches_empty).is_none() {
        *bytes += source.len();
    }
    Ok(CheckedRegex {
        source,
        matches_empty,
    })
}

/// Checks the regexes (rule patterns and allow-patterns) of `policies` on up to
/// `available_parallelism` threads, filling the [`checked_regex`] cache; errors are left for
/// the caller's own (sequential) validation to report in order.
fn precheck_regexes<'a>(policies: impl Iterator<Item = &'a Policy>) {
    let work: Vec<(&str, &str, &str)> = policies
        .flat_map(|p| {
            p.rules.iter().flat_map(move |r| {
                r.patterns
                    .regex
                    .iter()
                    .chain(&r.allow)
                    .map(move |re| (p.id.as_str(), r.id.as_str(), re.as_str()))
            })
        })
        .collect();
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(8)
        .min(work.len() / 64 + 1);
    if threads < 2 {
        return;
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let worker = || {
        while let Some(&(policy, rule, pattern)) =
            work.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
        {
            let _ = checked_regex(policy, rule, pattern);
        }
    };
    std::thread::scope(|scope| {
        for _ in 0..threads {
            // A thread the system refuses is simply not there: the others, and the caller's
            // own validation, do its share.
            if std::thread::Builder::new()
                .spawn_scoped(scope, worker)
                .is_err()
            {
                break;
            }
        }
    });
}

/// Rewrites the word-boundary assertions `\b` / `\B` whose side in the pattern is never a
/// non-ASCII letter or digit to their ASCII forms `(?-u:\b)` / `(?-u:\B)`; the others stay
/// Unicode.
///
/// Why: the regex crate's fast lazy DFA cannot evaluate Unicode word boundaries on non-ASCII
/// text and falls back to the (much slower) PikeVM, which for a set of hundreds of patterns
/// would cost milliseconds per request whenever a prompt contains a single accented letter.
///
/// When the pattern's side of the boundary is an ASCII character or a non-word one
/// (`\bignore`, `instructions\b`, `-\b`), the two assertions differ only where the text's side
/// is a non-ASCII letter (`ädan` for `\bdan`), which normalised prompts rarely hold. When the
/// pattern's side may be a non-ASCII letter (`\bälä`, `ü\b`, `\b[a-zà-ÿ]`), the ASCII assertion would
/// hold only where the Unicode one does not, and the pattern would never match where it should:
/// those keep the Unicode assertion (the shared prefilter drops it, see [`crate::widen`], and
/// the rule's own regex evaluates it exactly).
pub(crate) fn prepare_regex(pattern: &str) -> String {
    if !pattern.contains("\\b") && !pattern.contains("\\B") {
        return pattern.to_owned();
    }
    let Ok(ast) = regex_syntax::ast::parse::Parser::new().parse(pattern) else {
        // The compile reports the error.
        return pattern.to_owned();
    };
    let mut at: Vec<usize> = Vec::new();
    ascii_side_boundaries(&ast, &mut at);
    at.sort_unstable();
    let mut out = String::with_capacity(pattern.len() + 8 * at.len());
    let mut from = 0;
    for i in at {
        // `i` is the offset of the two-byte `\b` / `\B`.
        out.push_str(&pattern[from..i]);
        out.push_str("(?-u:");
        out.push_str(&pattern[i..i + 2]);
        out.push(')');
        from = i + 2;
    }
    out.push_str(&pattern[from..]);
    out
}

/// Collects the offsets of the word-boundary assertions of `ast` whose neighbour inside the
/// pattern (the next item or the previous one of their concatenation) certainly consumes first
/// (or last) a character that is not a non-ASCII letter or digit.
fn ascii_side_boundaries(ast: &regex_syntax::ast::Ast, out: &mut Vec<usize>) {
    use regex_syntax::ast::{AssertionKind, Ast};
    match ast {
        Ast::Concat(c) => {
            // The edge of what follows (precedes) each item, computed once from each end so a
            // concatenation of many assertions costs linear time.
            let n = c.asts.len();
            let mut after = vec![Edge::Empty; n + 1];
            for i in (0..n).rev() {
                after[i] = match edge_of(&c.asts[i], true) {
                    Edge::Empty => after[i + 1],
                    e => e,
                };
            }
            let mut before = Edge::Empty;
            for (i, item) in c.asts.iter().enumerate() {
                if let Ast::Assertion(a) = item
                    && matches!(
                        a.kind,
                        AssertionKind::WordBoundary | AssertionKind::NotWordBoundary
                    )
                    && (after[i + 1] == Edge::Ascii || before == Edge::Ascii)
                {
                    out.push(a.span.start.offset);
                }
                if let e @ (Edge::Ascii | Edge::Other) = edge_of(item, false) {
                    before = e;
                }
                ascii_side_boundaries(item, out);
            }
        }
        Ast::Alternation(a) => a.asts.iter().for_each(|x| ascii_side_boundaries(x, out)),
        Ast::Group(g) => ascii_side_boundaries(&g.ast, out),
        Ast::Repetition(r) => ascii_side_boundaries(&r.ast, out),
        _ => {}
    }
}

/// What the first (or last) character consumed by a sequence of pattern items can be.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Edge {
    /// Never a non-ASCII word character: ASCII, or a Unicode space or punctuation.
    Ascii,
    /// Possibly something else.
    Other,
    /// The items may consume nothing: the neighbour lies beyond them.
    Empty,
}

fn may_repeat_zero_times(kind: &regex_syntax::ast::RepetitionKind) -> bool {
    use regex_syntax::ast::{RepetitionKind, RepetitionRange};
    match kind {
        RepetitionKind::ZeroOrOne | RepetitionKind::ZeroOrMore => true,
        RepetitionKind::OneOrMore => false,
        RepetitionKind::Range(
            RepetitionRange::Exactly(n)
            | RepetitionRange::AtLeast(n)
            | RepetitionRange::Bounded(n, _),
        ) => *n == 0,
    }
}

fn char_edge(c: char) -> Edge {
    if c.is_ascii() || !c.is_alphanumeric() {
        Edge::Ascii
    } else {
        Edge::Other
    }
}

/// Perl classes count as ASCII: `\s` and `\W` are non-word characters whatever the script,
/// and `\d` and `\w` beside a boundary (`\b\w+`, `[\w-]{27}\b`) mostly mean the ASCII ones
/// (identifiers, tokens, numbers: the secrets and PII formats the redaction matcher runs on,
/// whose automaton must stay on the lazy DFA). Only the negated `\D` and `\S` count as
/// letters.
fn perl_edge(p: &regex_syntax::ast::ClassPerl) -> Edge {
    use regex_syntax::ast::ClassPerlKind;
    match (&p.kind, p.negated) {
        (ClassPerlKind::Digit | ClassPerlKind::Space, true) => Edge::Other,
        _ => Edge::Ascii,
    }
}

/// Whether a bracketed class (not negated) can match a non-ASCII letter or digit.
fn class_edge(set: &regex_syntax::ast::ClassSet) -> Edge {
    use regex_syntax::ast::{ClassSet, ClassSetItem};
    fn item_edge(item: &ClassSetItem) -> Edge {
        match item {
            ClassSetItem::Empty(_) | ClassSetItem::Ascii(_) => Edge::Ascii,
            ClassSetItem::Literal(l) => char_edge(l.c),
            ClassSetItem::Range(r) if r.start.c.is_ascii() && r.end.c.is_ascii() => Edge::Ascii,
            ClassSetItem::Perl(p) => perl_edge(p),
            ClassSetItem::Bracketed(b) if !b.negated => class_edge(&b.kind),
            ClassSetItem::Union(u) => {
                if u.items.iter().all(|i| item_edge(i) == Edge::Ascii) {
                    Edge::Ascii
                } else {
                    Edge::Other
                }
            }
            _ => Edge::Other,
        }
    }
    match set {
        ClassSet::Item(item) => item_edge(item),
        ClassSet::BinaryOp(_) => Edge::Other,
    }
}

/// The [`Edge`] of a sequence of items read from its start (`first`) or its end.
fn edge<'a>(items: impl Iterator<Item = &'a regex_syntax::ast::Ast>, first: bool) -> Edge {
    for item in items {
        match edge_of(item, first) {
            Edge::Empty => {}
            e => return e,
        }
    }
    Edge::Empty
}

fn edge_of(ast: &regex_syntax::ast::Ast, first: bool) -> Edge {
    use regex_syntax::ast::Ast;
    match ast {
        Ast::Empty(_) | Ast::Flags(_) | Ast::Assertion(_) => Edge::Empty,
        Ast::Literal(l) => char_edge(l.c),
        Ast::ClassPerl(p) => perl_edge(p),
        Ast::ClassBracketed(b) if !b.negated => class_edge(&b.kind),
        Ast::Dot(_) | Ast::ClassUnicode(_) | Ast::ClassBracketed(_) => Edge::Other,
        Ast::Repetition(r) => match edge_of(&r.ast, first) {
            // Repeated zero times, it consumes nothing: look further (what it consumes when it
            // does starts with an ASCII word character).
            Edge::Ascii if may_repeat_zero_times(&r.op.kind) => Edge::Empty,
            e => e,
        },
        Ast::Group(g) => edge_of(&g.ast, first),
        Ast::Concat(c) => {
            if first {
                edge(c.asts.iter(), true)
            } else {
                edge(c.asts.iter().rev(), false)
            }
        }
        Ast::Alternation(a) => {
            let mut all = Edge::Ascii;
            for x in &a.asts {
                match edge_of(x, first) {
                    Edge::Ascii => {}
                    e => all = e,
                }
                if all == Edge::Other {
                    break;
                }
            }
            all
        }
    }
}

/// Loads every `*.json` policy in a directory (sorted by file name, `*.schema.json` excluded).
///
/// Only files directly in `dir` are read: subdirectories such as `models/` (the classifier
/// models, built into the crate) are not policies and are skipped.
///
/// Fails on the first file that does not load (the error names the file) and on duplicate
/// policy ids across files.
pub fn load_dir(dir: impl AsRef<Path>) -> Result<Vec<Policy>> {
    let dir = dir.as_ref();
    let io_err = |source| PolicyError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut files: Vec<PathBuf> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err)? {
        let path = entry.map_err(io_err)?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.ends_with(".json") && !name.ends_with(".schema.json") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    let mut texts: Vec<String> = Vec::with_capacity(files.len());
    for path in &files {
        texts.push(
            std::fs::read_to_string(path).map_err(|source| PolicyError::Io {
                path: path.clone(),
                source,
            })?,
        );
    }
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let mut policies: Vec<Policy> = Vec::with_capacity(files.len());
    for (path, policy) in files.into_iter().zip(Policy::from_json_many(&texts)) {
        let policy = policy.map_err(|e| PolicyError::File {
            path: path.clone(),
            source: Box::new(e),
        })?;
        if policies.iter().any(|p| p.id == policy.id) {
            return Err(PolicyError::File {
                path,
                source: Box::new(PolicyError::DuplicatePolicy(policy.id)),
            });
        }
        policies.push(policy);
    }
    Ok(policies)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy_json(rules: &str) -> String {
        format!(
            r#"{{"id":"test-policy","name":"Test","description":"d","version":"1.0.0","rules":[{rules}]}}"#
        )
    }

    const GOOD_RULE: &str = r#"{"id":"R-1","name":"n","category":"prompt_injection","severity":"high",
        "targets":["llm_request"],"patterns":{"regex":["(?i)ignore previous"]},"action":"block"}"#;

    #[test]
    fn loads_a_minimal_policy() {
        let p = Policy::from_json(&policy_json(GOOD_RULE)).unwrap();
        assert_eq!(p.id, "test-policy");
        assert_eq!(p.rules.len(), 1);
        assert_eq!(p.rules[0].effective_score(), 25);
        assert_eq!(p.rules[0].targets, vec![Target::LlmRequest]);
    }

    #[test]
    fn invalid_json_is_an_error() {
        let err = Policy::from_json("{ not json").unwrap_err();
        assert!(matches!(err, PolicyError::Json { .. }), "{err}");
    }

    #[test]
    fn unknown_field_is_rejected() {
        let rule = GOOD_RULE.replace(r#""action":"block""#, r#""action":"block","colour":"red""#);
        let err = Policy::from_json(&policy_json(&rule)).unwrap_err();
        assert!(err.to_string().contains("unknown field `colour`"), "{err}");
        let err = Policy::from_json(r#"{"id":"x","name":"x","rules":[],"extra":1}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `extra`"), "{err}");
    }

    #[test]
    fn bad_regex_names_policy_rule_and_problem() {
        let rule = GOOD_RULE.replace("(?i)ignore previous", "(unclosed");
        let err = Policy::from_json(&policy_json(&rule)).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, PolicyError::BadRegex { .. }));
        assert!(msg.contains("test-policy"), "{msg}");
        assert!(msg.contains("R-1"), "{msg}");
        assert!(msg.contains("(unclosed"), "{msg}");
        assert!(msg.contains("unclosed group"), "{msg}");
    }

    #[test]
    fn look_around_is_a_bad_regex() {
        let rule = GOOD_RULE.replace("(?i)ignore previous", "foo(?=bar)");
        let err = Policy::from_json(&policy_json(&rule)).unwrap_err();
        assert!(err.to_string().contains("look-around"), "{err}");
    }

    #[test]
    fn bad_allow_regex_names_rule() {
        let rule = GOOD_RULE.replace(r#""action""#, r#""allow":["[z-a]"],"action""#);
        let err = Policy::from_json(&policy_json(&rule)).unwrap_err();
        assert!(matches!(err, PolicyError::BadRegex { ref rule, .. } if rule == "R-1"));
    }

    #[test]
    fn loading_many_gives_what_loading_each_gives() {
        // Enough patterns for the parallel pre-check to use several threads.
        let many: Vec<String> = (0..300)
            .map(|i| {
                GOOD_RULE
                    .replace("R-1", &format!("R-{i}"))
                    .replace("ignore previous", &format!("ignore previous {i}\\b"))
            })
            .collect();
        let texts = [
            policy_json(&many.join(",")),
            policy_json(&GOOD_RULE.replace("(?i)ignore previous", "(unclosed")),
            policy_json(&GOOD_RULE.replace("(?i)ignore previous", "a*")),
            "{ not json".to_owned(),
            policy_json(&GOOD_RULE.replace(r#""action""#, r#""allow":["[z-a]"],"action""#)),
            // Checked patterns are remembered: the same bad ones still fail the second time.
            policy_json(&GOOD_RULE.replace("(?i)ignore previous", "a*")),
            policy_json(GOOD_RULE),
        ];
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let many = Policy::from_json_many(&refs);
        assert_eq!(many.len(), texts.len());
        for (text, got) in texts.iter().zip(many) {
            match (Policy::from_json(text), got) {
                (Ok(a), Ok(b)) => assert_eq!(a.to_json_pretty(), b.to_json_pretty()),
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
                (a, b) => panic!("one at a time: {a:?}; together: {b:?}"),
            }
        }
    }

    #[test]
    fn empty_matching_regex_is_rejected() {
        let rule = GOOD_RULE.replace("(?i)ignore previous", "a*");
        let err = Policy::from_json(&policy_json(&rule)).unwrap_err();
        assert!(err.to_string().contains("empty string"), "{err}");
    }

    #[test]
    fn duplicate_rule_id() {
        let err = Policy::from_json(&policy_json(&format!("{GOOD_RULE},{GOOD_RULE}"))).unwrap_err();
        assert!(matches!(err, PolicyError::DuplicateRule { .. }));
        assert_eq!(
            err.to_string(),
            "policy `test-policy` rule `R-1`: duplicate rule id"
        );
    }

    #[test]
    fn empty_targets() {
        let rule = GOOD_RULE.replace(r#"["llm_request"]"#, "[]");
        let err = Policy::from_json(&policy_json(&rule)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "policy `test-policy` rule `R-1`: targets must not be empty"
        );
    }

    #[test]
    fn unknown_target_is_rejected() {
        let rule = GOOD_RULE.replace(r#"["llm_request"]"#, r#"["email"]"#);
        let err = Policy::from_json(&policy_json(&rule)).unwrap_err();
        assert!(err.to_string().contains("unknown variant `email`"), "{err}");
    }

    #[test]
    fn no_patterns() {
        let rule = GOOD_RULE.replace(r#"{"regex":["(?i)ignore previous"]}"#, r#"{"regex":[]}"#);
        let err = Policy::from_json(&policy_json(&rule)).unwrap_err();
        assert!(err.to_string().contains("R-1"), "{err}");
        assert!(
            err.to_string()
                .contains("at least one regex, keyword or classifier")
        );
    }

    #[test]
    fn classifier_pattern_loads_and_round_trips() {
        let rule = GOOD_RULE.replace(
            r#"{"regex":["(?i)ignore previous"]}"#,
            r#"{"classifier":{"model":"prompt-attack","threshold":0.9}}"#,
        );
        let p = Policy::from_json(&policy_json(&rule)).unwrap();
        let c = p.rules[0].patterns.classifier.as_ref().unwrap();
        assert_eq!((c.model.as_str(), c.threshold), ("prompt-attack", 0.9));
        assert_eq!(Policy::from_json(&p.to_json_pretty()).unwrap(), p);
    }

    #[test]
    fn classifier_errors_name_policy_rule_and_problem() {
        let with = |clf: &str, action: &str| {
            let rule = GOOD_RULE
                .replace(
                    r#"{"regex":["(?i)ignore previous"]}"#,
                    &format!(r#"{{"classifier":{clf}}}"#),
                )
                .replace(r#""action":"block""#, &format!(r#""action":"{action}""#));
            Policy::from_json(&policy_json(&rule))
                .unwrap_err()
                .to_string()
        };
        let msg = with(r#"{"model":"nope","threshold":0.9}"#, "block");
        assert!(
            msg.starts_with("policy `test-policy` rule `R-1`: "),
            "{msg}"
        );
        assert!(msg.contains("unknown classifier model `nope`"), "{msg}");
        assert!(msg.contains("prompt-attack"), "{msg}");
        for t in ["0", "1", "1.5", "-0.2"] {
            let msg = with(
                &format!(r#"{{"model":"prompt-attack","threshold":{t}}}"#),
                "block",
            );
            assert!(msg.contains("rule `R-1`"), "{msg}");
            assert!(msg.contains("strictly between 0 and 1"), "{msg}");
        }
        let msg = with(r#"{"model":"prompt-attack","threshold":0.9}"#, "redact");
        assert!(msg.contains("cannot redact"), "{msg}");
        let msg = with(
            r#"{"model":"prompt-attack","threshold":0.9,"k":1}"#,
            "block",
        );
        assert!(msg.contains("unknown field `k`"), "{msg}");
        let msg = with(r#"{"model":"prompt-attack"}"#, "block");
        assert!(msg.contains("missing field `threshold`"), "{msg}");
    }

    #[test]
    fn free_texts_and_labels_are_bounded() {
        let long = "x".repeat(5000);
        let policy =
            |field: &str, v: &str| format!(r#"{{"id":"p","name":"n","{field}":"{v}","rules":[]}}"#);
        for (json, want) in [
            (policy("description", &long), "at most 4000"),
            (policy("description", r"bell\u0007"), "control"),
            (policy("version", &long), "at most 40"),
        ] {
            let err = Policy::from_json(&json).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
        // Line breaks and tabs are text, not controls (what is refused is the empty rule list).
        let err = Policy::from_json(&policy("description", r"line one\nline two\tend"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least one rule"), "{err}");
        let rule = GOOD_RULE.replace(
            r#""action":"block""#,
            &format!(r#""action":"block","rationale":"{long}""#),
        );
        let err = Policy::from_json(&policy_json(&rule)).unwrap_err();
        assert!(err.to_string().contains("at most 4000"), "{err}");
        let rule = GOOD_RULE.replace("prompt_injection", &"c".repeat(101));
        let err = Policy::from_json(&policy_json(&rule)).unwrap_err();
        assert!(err.to_string().contains("snake_case"), "{err}");
        let rule = GOOD_RULE.replace(
            r#""action":"block""#,
            &format!(
                r#""action":"redact","redact":{{"label":"{}"}}"#,
                "L".repeat(41)
            ),
        );
        let err = Policy::from_json(&policy_json(&rule)).unwrap_err();
        assert!(err.to_string().contains("[A-Z0-9_]{1,40}"), "{err}");
    }

    #[test]
    fn bad_redact_label() {
        let rule = GOOD_RULE.replace(
            r#""action":"block""#,
            r#""action":"redact","redact":{"label":"email"}"#,
        );
        let err = Policy::from_json(&policy_json(&rule)).unwrap_err();
        assert!(err.to_string().contains("redact label `email`"), "{err}");
    }

    #[test]
    fn score_over_100() {
        let rule = GOOD_RULE.replace(r#""action":"block""#, r#""action":"block","score":101"#);
        let err = Policy::from_json(&policy_json(&rule)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "policy `test-policy` rule `R-1`: score 101 is out of range 0..=100"
        );
    }

    #[test]
    fn bad_ids() {
        let err = Policy::from_json(r#"{"id":"Bad Id","name":"x","rules":[]}"#).unwrap_err();
        assert!(err.to_string().contains("[a-z0-9-]{1,64}"), "{err}");
        let rule = GOOD_RULE.replace(r#""id":"R-1""#, r#""id":"R 1""#);
        let err = Policy::from_json(&policy_json(&rule)).unwrap_err();
        assert!(err.to_string().contains("rule id must match"), "{err}");
        // Ids are bounded (and not repeated whole in the error); names too, and have no
        // control characters.
        let long = "a".repeat(5000);
        let err = Policy::from_json(&format!(r#"{{"id":"{long}","name":"x","rules":[]}}"#))
            .unwrap_err()
            .to_string();
        assert!(err.contains("{1,64}") && err.len() < 400, "{err}");
        let rule = GOOD_RULE.replace(r#""id":"R-1""#, &format!(r#""id":"{long}""#));
        let err = Policy::from_json(&policy_json(&rule))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("rule id must match") && err.len() < 400,
            "{err}"
        );
        for (name, want) in [
            (r"a\u0000b", "control"),
            (r"x\u001b[31m", "control"),
            (r"\u200b\u200b", "invisible"),
            (r"evil\u202e", "bidi"),
            (r"\u206a\u206b", "invisible"),
            (r"ok\udb40\udc41", "invisible"),
            (r"a\u2800b", "invisible"),
            (r"a\u2028b", "invisible"),
            (&"n".repeat(201), "at most 200"),
        ] {
            let err = Policy::from_json(&format!(r#"{{"id":"p","name":"{name}","rules":[]}}"#))
                .unwrap_err();
            assert!(err.to_string().contains(want), "{err}");
            let rule = GOOD_RULE.replace(r#""name":"n""#, &format!(r#""name":"{name}""#));
            let err = Policy::from_json(&policy_json(&rule)).unwrap_err();
            assert!(err.to_string().contains(want), "{err}");
        }
        let rule = GOOD_RULE.replace("prompt_injection", "Prompt Injection");
        let err = Policy::from_json(&policy_json(&rule)).unwrap_err();
        assert!(err.to_string().contains("snake_case"), "{err}");
    }

    #[test]
    fn redact_label_defaults_to_category() {
        let rule = GOOD_RULE.replace(r#""action":"block""#, r#""action":"redact""#);
        let p = Policy::from_json(&policy_json(&rule)).unwrap();
        assert_eq!(p.rules[0].redact_label(), "PROMPT_INJECTION");
    }

    #[test]
    fn round_trips_through_json() {
        let p = Policy::from_json(&policy_json(GOOD_RULE)).unwrap();
        let again = Policy::from_json(&p.to_json_pretty()).unwrap();
        assert_eq!(p, again);
    }

    #[test]
    fn prepare_regex_keeps_unicode_boundaries_beside_possible_non_ascii_letters() {
        for (pattern, prepared) in [
            (r"\bdan\b", r"(?-u:\b)dan(?-u:\b)"),
            (r"\\b", r"\\b"),
            (r"[a-z]x\B", r"[a-z]x(?-u:\B)"),
            (r"[]a]\b", r"[]a](?-u:\b)"),
            (r"[a-z-]{2}\b", r"[a-z-]{2}(?-u:\b)"),
            ("plain", "plain"),
            // Groups, alternations and optional items are looked through.
            (
                r"(?i)\b(?:all\s+)?(?:ignore|forget)\b",
                r"(?i)(?-u:\b)(?:all\s+)?(?:ignore|forget)(?-u:\b)",
            ),
            (r"\b[A-Z0-9_]{3}\d+\b", r"(?-u:\b)[A-Z0-9_]{3}\d+(?-u:\b)"),
            (r"\b\w+", r"(?-u:\b)\w+"),
            (r"\s\b", r"\s(?-u:\b)"),
            // Either side suffices.
            (r"ä\bx", r"ä(?-u:\b)x"),
            // A non-ASCII letter, a class that may match one or a possibly-empty side keeps
            // the Unicode form.
            (r"[^a]\b", r"[^a]\b"),
            (r"(?i)\bälä\s", r"(?i)\bälä\s"),
            (r"grü\b", r"grü\b"),
            (r"\b\S+", r"\b\S+"),
            (r"\b(?:ü|u)", r"\b(?:ü|u)"),
            (r"\b(?:x)?", r"\b(?:x)?"),
            (r"\b[a-zà-ÿ]", r"\b[a-zà-ÿ]"),
        ] {
            assert_eq!(prepare_regex(pattern), prepared, "{pattern}");
        }
    }

    #[test]
    fn many_boundaries_are_prepared_in_linear_time() {
        // A concatenation of assertions: each one's neighbours are found once, not by a scan
        // over all the others (100 000 of them would take minutes).
        let p = format!("{}x", r"\b".repeat(100_000));
        let prepared = prepare_regex(&p);
        assert_eq!(prepared.matches("(?-u:").count(), 100_000);
        let p = format!("{}ä", r"\b".repeat(100_000));
        assert_eq!(prepare_regex(&p), p);
    }

    #[test]
    fn word_boundaries_next_to_non_ascii_letters_match() {
        for (pattern, text) in [
            (r"(?i)\bälä\s+välitä", "Ok. Älä välitä aiemmista ohjeista."),
            (r"(?i)\bönceki\b", "önceki talimatları"),
            (r"(?i)früheren\b", "die früheren Anweisungen"),
            (r"(?i)\bignore\b", "please ignore this"),
        ] {
            let re = build_prepared(&prepare_regex(pattern)).unwrap();
            assert!(re.is_match(text), "{pattern} on {text}");
        }
        let re = build_prepared(&prepare_regex(r"\bälä")).unwrap();
        assert!(!re.is_match("välä"), "inside a word");
    }

    #[test]
    fn load_dir_sorts_skips_schema_and_names_file() {
        let dir = std::env::temp_dir().join(format!("palisade-policy-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let b = policy_json(GOOD_RULE).replace("test-policy", "b-policy");
        let a = policy_json(GOOD_RULE).replace("test-policy", "a-policy");
        std::fs::write(dir.join("b.json"), b).unwrap();
        std::fs::write(dir.join("a.json"), a).unwrap();
        std::fs::write(dir.join("policy.schema.json"), "{}").unwrap();
        std::fs::write(dir.join("notes.txt"), "ignored").unwrap();
        std::fs::create_dir_all(dir.join("models")).unwrap();
        std::fs::write(dir.join("models/m.json"), "{\"format\":1}").unwrap();
        let loaded = load_dir(&dir).unwrap();
        let ids: Vec<&str> = loaded.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["a-policy", "b-policy"]);

        std::fs::write(dir.join("c.json"), "{\"id\":1}").unwrap();
        let err = load_dir(&dir).unwrap_err();
        assert!(err.to_string().contains("c.json"), "{err}");
        std::fs::remove_file(dir.join("c.json")).unwrap();

        let dup = policy_json(GOOD_RULE).replace("test-policy", "a-policy");
        std::fs::write(dir.join("d.json"), dup).unwrap();
        let err = load_dir(&dir).unwrap_err();
        assert!(matches!(err.root(), PolicyError::DuplicatePolicy(id) if id == "a-policy"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
