//! Trains the `prompt-attack` classifier model (`policies/models/prompt-attack.json`).
//!
//! ```text
//! train_classifier [--folds 5] [--dump DEV_DUMP.jsonl] [--targets llm_request,tool_result,a2a_message]
//!                  [--positives jailbreak,prompt_injection,system_prompt_extraction,data_exfiltration]
//!                  [--top-k 80000] [--min-weight 0.02] [--epochs 8] [--lr 0.3] [--l2 0.001]
//!                  [--neg-weight 1] [--max-fp-ordinary 0.5] [--max-fp-hard 2] [--show-fp THRESHOLD]
//!                  [--out policies/models/prompt-attack.json] [--no-write] [--cv-out FILE]
//!                  [--extra eval/training] [--no-extra] [--evasion] [--seed N] [--bag 5]
//! ```
//!
//! `--extra DIR` (default `eval/training`): more training samples, in the corpus format, written
//! for training only. They train every fold model and the final one and are never scored, so the
//! CV tables still measure the dev corpora alone; `--no-extra` leaves them out (to compare).
//! `--evasion` also trains on the dev split's ATR `evasion` attack samples of its evasion
//! families (paraphrases, translations, homoglyphs), in their folds, never scored. Over three
//! shuffle seeds it moved CV prompt injection by +0.6 points on average and hard-negative FP
//! by ±0.3, so the shipped model leaves them out.
//!
//! `--cv-out FILE` also writes each dev sample's cross-validated probability (one JSON object a
//! line: id, attack, category, source, target, p, seen) for error analysis.
//!
//! Logistic regression over the engine's own features (`palisade_policy::classifier`: token
//! unigrams and pairs of the normalised text, presence, their summed weight scaled by
//! 2/sqrt(occurrences); plus unscaled whole-text shape features), trained with Adagrad on the **dev**
//! split only (`variant == "plain"`): positives are attack samples of the `--positives`
//! categories, negatives every benign sample. Deterministic: samples in corpus order, a seeded
//! xorshift shuffle per epoch, one thread.
//!
//! It first runs k-fold cross-validation on dev (folds by a hash of the sample id) and prints,
//! per threshold, the classifier's detection per attack category and false positives per benign
//! kind, as `eval/` counts them: over all plain dev samples of the category or kind, where a
//! sample whose target is not in `--targets` is never flagged (the rule does not see it). With
//! `--dump` (from `probe dump dev`), it also prints the union with the shipped rules. Then it
//! trains on all of dev, prunes to the `--top-k` largest |weights| (at least `--min-weight`),
//! and writes the model file, which the crate embeds (rebuild to use it).

#[path = "../../../eval/harness.rs"]
mod harness;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

use palisade_policy::classifier::{
    LinearModel, MODEL_FORMAT, SHAPE_FEATURES, TokenizerSpec, feature_hash, feature_hashes,
    feature_strings,
};
use palisade_policy::{Target, normalize};
use serde_json::json;

const THRESHOLDS: &[f64] = &[
    0.5, 0.55, 0.6, 0.625, 0.65, 0.675, 0.7, 0.725, 0.75, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98,
    0.99, 0.995,
];
/// The default shuffle seed (`--seed` changes it, to see how much a result owes to the order).
const SEED: u64 = 0x5EED_CAFE_F00D_0001;

struct Args {
    folds: usize,
    dump: Option<String>,
    targets: Vec<Target>,
    positives: Vec<String>,
    top_k: usize,
    min_weight: f64,
    epochs: usize,
    lr: f64,
    l2: f64,
    out: String,
    write: bool,
    max_fp_ordinary: f64,
    max_fp_hard: f64,
    /// Weight of a negative example's loss relative to a positive's.
    neg_weight: f64,
    /// List the benign samples the CV models score at or above this.
    show_fp: Option<f64>,
    /// Write each dev sample's cross-validated probability here.
    cv_out: Option<String>,
    /// Also train on the dev split's `evasion` attack samples (never scored; in their folds).
    evasion: bool,
    /// Directory of training-only samples (`None`: none).
    extra: Option<String>,
    seed: u64,
    /// Models averaged into one (each with its own shuffle seed).
    bag: usize,
}

fn parse_args() -> Args {
    let mut a = Args {
        folds: 5,
        dump: None,
        targets: vec![Target::LlmRequest, Target::ToolResult, Target::A2aMessage],
        positives: [
            "jailbreak",
            "prompt_injection",
            "system_prompt_extraction",
            "data_exfiltration",
        ]
        .map(String::from)
        .to_vec(),
        top_k: 80_000,
        min_weight: 0.02,
        epochs: 8,
        lr: 0.3,
        l2: 1e-3,
        out: harness::policies_dir()
            .join("models/prompt-attack.json")
            .display()
            .to_string(),
        write: true,
        max_fp_ordinary: 0.5,
        max_fp_hard: 2.0,
        neg_weight: 1.0,
        show_fp: None,
        cv_out: None,
        evasion: false,
        extra: Some(harness::eval_dir().join("training").display().to_string()),
        seed: SEED,
        bag: 5,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let v = || args.get(i + 1).cloned().expect("option needs a value");
        match args[i].as_str() {
            "--folds" => a.folds = v().parse().expect("--folds"),
            "--dump" => a.dump = Some(v()),
            "--targets" => {
                a.targets = v()
                    .split(',')
                    .map(|t| {
                        Target::ALL
                            .into_iter()
                            .find(|x| x.as_str() == t)
                            .unwrap_or_else(|| panic!("unknown target {t}"))
                    })
                    .collect();
            }
            "--positives" => a.positives = v().split(',').map(String::from).collect(),
            "--top-k" => a.top_k = v().parse().expect("--top-k"),
            "--min-weight" => a.min_weight = v().parse().expect("--min-weight"),
            "--epochs" => a.epochs = v().parse().expect("--epochs"),
            "--lr" => a.lr = v().parse().expect("--lr"),
            "--l2" => a.l2 = v().parse().expect("--l2"),
            "--out" => a.out = v(),
            "--max-fp-ordinary" => a.max_fp_ordinary = v().parse().expect("--max-fp-ordinary"),
            "--max-fp-hard" => a.max_fp_hard = v().parse().expect("--max-fp-hard"),
            "--show-fp" => a.show_fp = Some(v().parse().expect("--show-fp")),
            "--cv-out" => a.cv_out = Some(v()),
            "--neg-weight" => a.neg_weight = v().parse().expect("--neg-weight"),
            "--evasion" => {
                a.evasion = true;
                i += 1;
                continue;
            }
            "--no-write" => {
                a.write = false;
                i += 1;
                continue;
            }
            "--extra" => a.extra = Some(v()),
            "--seed" => a.seed = v().parse().expect("--seed"),
            "--bag" => a.bag = v().parse::<usize>().expect("--bag").max(1),
            "--no-extra" => {
                a.extra = None;
                i += 1;
                continue;
            }
            other => panic!("unknown option {other}"),
        }
        i += 2;
    }
    a
}

/// A dev `evasion` attack sample that trains with `--evasion`: one of ATR's
/// evasion families (`language_switch`, `casual_paraphrase`, `unicode_homoglyph`, ... — named
/// in snake_case or words). Its hyphen-named cases are single regression probes, many of them
/// benign in content (`emoji-zwj-fp`, `image-analysis-benign`, `paraphrased-senator-question`):
/// as positives they would teach the model that ordinary questions are attacks.
fn evasion_case(s: &harness::Sample) -> bool {
    s.variant == "evasion"
        && s.attack
        && s.family
            .as_deref()
            .is_some_and(|f| !f.is_empty() && !f.contains('-'))
}

/// FNV-1a 64 of a sample id: assigns cross-validation folds.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Tiny deterministic PRNG (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = usize::try_from(self.next() % (i as u64 + 1)).unwrap_or(0);
            v.swap(i, j);
        }
    }
}

struct Sample<'a> {
    s: &'a harness::Sample,
    /// Distinct word-feature indices, sorted.
    feats: Vec<u32>,
    /// Indices of the shape features the text has (into `SHAPE_FEATURES`).
    shape: Vec<usize>,
    /// The factor on the summed word-feature weights.
    scale: f64,
    /// The text has at least one token (the engine scores no other text: −∞).
    words: bool,
    /// Some(label) when the sample is a training example.
    label: Option<bool>,
    fold: usize,
    /// Whether a rule with `--targets` would see this sample.
    seen: bool,
    /// Whether the sample counts in the CV tables (dev `evasion` samples only train).
    scored: bool,
}

struct Model {
    bias: f64,
    /// Word-feature weights.
    w: Vec<f64>,
    /// Shape-feature weights.
    ws: Vec<f64>,
}

impl Model {
    fn logit(&self, s: &Sample) -> f64 {
        if !s.words {
            return f64::NEG_INFINITY;
        }
        self.bias
            + s.shape.iter().map(|&k| self.ws[k]).sum::<f64>()
            + s.scale * s.feats.iter().map(|&j| self.w[j as usize]).sum::<f64>()
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Trains `--bag` models, each with its own shuffle seed, and averages their weights: a linear
/// model whose score is the mean of theirs, as cheap to run as one and less dependent on the
/// order the samples came in.
fn train(samples: &[Sample], train_idx: &[usize], nfeat: usize, a: &Args) -> Model {
    let mut sum = train_one(samples, train_idx, nfeat, a, a.seed);
    for k in 1..a.bag {
        let m = train_one(samples, train_idx, nfeat, a, a.seed.wrapping_add(k as u64));
        sum.bias += m.bias;
        sum.w.iter_mut().zip(&m.w).for_each(|(x, y)| *x += y);
        sum.ws.iter_mut().zip(&m.ws).for_each(|(x, y)| *x += y);
    }
    let n = a.bag as f64;
    sum.bias /= n;
    sum.w.iter_mut().for_each(|x| *x /= n);
    sum.ws.iter_mut().for_each(|x| *x /= n);
    sum
}

fn train_one(samples: &[Sample], train_idx: &[usize], nfeat: usize, a: &Args, seed: u64) -> Model {
    let mut m = Model {
        bias: 0.0,
        w: vec![0f64; nfeat],
        ws: vec![0f64; SHAPE_FEATURES.len()],
    };
    let mut g2 = vec![0f64; nfeat];
    let mut gs2 = vec![0f64; SHAPE_FEATURES.len()];
    let mut gb2 = 0f64;
    let mut order = train_idx.to_vec();
    let mut rng = Rng(seed);
    for _ in 0..a.epochs {
        rng.shuffle(&mut order);
        for &i in &order {
            let s = &samples[i];
            let (y, weight) = if s.label == Some(true) {
                (1.0, 1.0)
            } else {
                (0.0, a.neg_weight)
            };
            let err = weight * (sigmoid(m.logit(s)) - y);
            // A word feature's value is the sample's scale, a shape feature's 1.
            for &j in &s.feats {
                let j = j as usize;
                let g = err * s.scale + a.l2 * m.w[j];
                g2[j] += g * g;
                m.w[j] -= a.lr * g / (g2[j].sqrt() + 1e-8);
            }
            for &k in &s.shape {
                let g = err + a.l2 * m.ws[k];
                gs2[k] += g * g;
                m.ws[k] -= a.lr * g / (gs2[k].sqrt() + 1e-8);
            }
            gb2 += err * err;
            m.bias -= a.lr * err / (gb2.sqrt() + 1e-8);
        }
    }
    m
}

/// Keeps the `top_k` largest word-feature |weights| that are at least `min_weight`; zeroes the
/// rest (shape features are always kept).
fn prune(m: &mut Model, a: &Args) -> Vec<usize> {
    let mut kept: Vec<usize> = (0..m.w.len())
        .filter(|&j| m.w[j].abs() >= a.min_weight)
        .collect();
    kept.sort_by(|&x, &y| m.w[y].abs().total_cmp(&m.w[x].abs()).then(x.cmp(&y)));
    kept.truncate(a.top_k);
    let keep: HashSet<usize> = kept.iter().copied().collect();
    for (j, w) in m.w.iter_mut().enumerate() {
        if !keep.contains(&j) {
            *w = 0.0;
        }
    }
    kept
}

#[derive(Default, Clone, Copy)]
struct Count {
    n: usize,
    hit: usize,
}

impl Count {
    fn add(&mut self, hit: bool) {
        self.n += 1;
        self.hit += usize::from(hit);
    }
    fn pct(self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            100.0 * self.hit as f64 / self.n as f64
        }
    }
}

/// Rules' verdict per sample id: (detected, false-positive-grade hit).
fn load_dump(path: &str) -> HashMap<String, (bool, bool)> {
    let mut out = HashMap::new();
    for l in std::fs::read_to_string(path).expect("dump").lines() {
        let v: serde_json::Value = serde_json::from_str(l).expect("dump line");
        let hits = v["hits"].as_array().expect("hits");
        let fp = hits.iter().any(|h| h[1] == "block" || h[1] == "alert");
        out.insert(
            v["id"].as_str().unwrap_or("").to_owned(),
            (!hits.is_empty(), fp),
        );
    }
    out
}

/// One threshold's figures: (threshold, category -> count, benign kind -> count, ordinary, hard).
type Row = (
    f64,
    BTreeMap<String, Count>,
    BTreeMap<String, Count>,
    Count,
    Count,
);

struct Table {
    rows: Vec<Row>,
}

fn tabulate(
    samples: &[Sample],
    probs: &[f64],
    rules: Option<&HashMap<String, (bool, bool)>>,
) -> Table {
    let mut rows = Vec::new();
    for &t in THRESHOLDS {
        let mut cats: BTreeMap<String, Count> = BTreeMap::new();
        let mut kinds: BTreeMap<String, Count> = BTreeMap::new();
        let (mut ord, mut hard) = (Count::default(), Count::default());
        for (s, &p) in samples.iter().zip(probs).filter(|(s, _)| s.scored) {
            let clf = s.seen && p >= t;
            let (rd, rfp) = rules
                .and_then(|r| r.get(&s.s.id).copied())
                .unwrap_or((false, false));
            if s.s.attack {
                cats.entry(s.s.category.clone()).or_default().add(clf || rd);
            } else {
                let fp = clf || rfp;
                kinds.entry(s.s.category.clone()).or_default().add(fp);
                if s.s.category == "hard_negative" {
                    hard.add(fp);
                } else if harness::ORDINARY_BENIGN.contains(&s.s.category.as_str()) {
                    ord.add(fp);
                }
            }
        }
        rows.push((t, cats, kinds, ord, hard));
    }
    Table { rows }
}

fn print_table(title: &str, table: &Table) {
    println!("\n{title}");
    let Some(first) = table.rows.first() else {
        return;
    };
    let mut head = format!("{:>6}", "thr");
    let cats: Vec<&String> = first
        .1
        .keys()
        .filter(|c| harness::CORE_CATEGORIES.contains(&c.as_str()))
        .collect();
    for c in &cats {
        let short: String = c.chars().take(9).collect();
        let _ = write!(head, " {short:>9}");
    }
    let kinds: Vec<&String> = first.2.keys().collect();
    for k in &kinds {
        let short: String = k.chars().take(9).collect();
        let _ = write!(head, " {short:>9}");
    }
    let _ = write!(head, " {:>9} {:>9}", "FP-ord", "FP-hard");
    println!("{head}");
    let mut ns = format!("{:>6}", "n");
    for c in &cats {
        let _ = write!(ns, " {:>9}", first.1[*c].n);
    }
    for k in &kinds {
        let _ = write!(ns, " {:>9}", first.2[*k].n);
    }
    let _ = write!(ns, " {:>9} {:>9}", first.3.n, first.4.n);
    println!("{ns}");
    for (t, c, k, ord, hard) in &table.rows {
        let mut line = format!("{t:>6}");
        for cat in &cats {
            let _ = write!(line, " {:>8.1}%", c[*cat].pct());
        }
        for kind in &kinds {
            let _ = write!(line, " {:>8.2}%", k[*kind].pct());
        }
        let _ = write!(line, " {:>8.2}% {:>8.2}%", ord.pct(), hard.pct());
        println!("{line}");
    }
}

fn main() {
    let a = parse_args();
    let corpora = harness::load_corpora(&harness::eval_dir().join("corpora")).expect("corpora");
    let training = a.extra.as_deref().map(|dir| {
        harness::load_corpora(std::path::Path::new(dir))
            .unwrap_or_else(|e| panic!("--extra {dir}: {e}"))
    });
    let extra_samples = training.as_ref().map_or(&[][..], |c| &c.samples[..]);
    // A training-only text that is also a corpus text would leak into the CV folds (and, were
    // it a test text, into the held-out figure).
    let corpus_texts: HashSet<String> = corpora
        .samples
        .iter()
        .map(|s| harness::same_text_key(&s.text))
        .collect();
    if let Some(s) = extra_samples
        .iter()
        .find(|s| corpus_texts.contains(&harness::same_text_key(&s.text)))
    {
        panic!("training-only sample {} repeats a corpus text", s.id);
    }
    let mut index: HashMap<u64, u32> = HashMap::new();
    let mut names: Vec<String> = Vec::new();
    let mut samples: Vec<Sample> = Vec::new();
    let mut hashes = Vec::new();
    let n_corpus = corpora.samples.len();
    for (k, s) in corpora.samples.iter().chain(extra_samples).enumerate() {
        let written = k >= n_corpus;
        let train_only = written || (a.evasion && evasion_case(s));
        if s.split != "dev" || (s.variant != "plain" && !train_only) {
            continue;
        }
        let text = normalize(&s.text);
        hashes.clear();
        let shape = feature_hashes(&text, &mut hashes);
        let strings = feature_strings(&text);
        assert_eq!(
            hashes.len(),
            strings.len(),
            "tokenizers disagree on {}",
            s.id
        );
        let mut feats: Vec<u32> = Vec::with_capacity(hashes.len());
        for (h, name) in hashes.iter().zip(&strings) {
            let next = u32::try_from(names.len()).expect("feature count");
            let j = *index.entry(*h).or_insert_with(|| {
                assert_eq!(feature_hash(name), *h, "hash of {name:?}");
                names.push(name.clone());
                next
            });
            assert_eq!(names[j as usize], *name, "hash collision");
            feats.push(j);
        }
        feats.sort_unstable();
        feats.dedup();
        let label = if shape.tokens == 0 {
            // Nothing the model judges (see `LinearModel::logit`): not a training example.
            None
        } else if !s.attack {
            Some(false)
        } else if a.positives.contains(&s.category) {
            Some(true)
        } else {
            None
        };
        // Training-only samples are in no fold: every fold model learns from them.
        let fold = if written {
            usize::MAX
        } else {
            usize::try_from(fnv1a(&s.id) % a.folds as u64).unwrap_or(0)
        };
        samples.push(Sample {
            s,
            feats,
            shape: shape.features().collect(),
            scale: f64::from(shape.word_scale()),
            words: shape.tokens > 0,
            label,
            fold,
            seen: a.targets.contains(&s.target),
            scored: !train_only,
        });
    }
    let nfeat = names.len();
    let npos = samples.iter().filter(|s| s.label == Some(true)).count();
    let nneg = samples.iter().filter(|s| s.label == Some(false)).count();
    println!(
        "training samples: {} ({npos} positives, {nneg} negatives; {} of them training-only \
         from --extra and {} dev evasion attacks, never scored), {nfeat} distinct features",
        samples.len(),
        samples.iter().filter(|s| s.fold == usize::MAX).count(),
        samples
            .iter()
            .filter(|s| !s.scored && s.fold != usize::MAX && s.label.is_some())
            .count()
    );

    // k-fold cross-validation on dev.
    let mut probs = vec![0f64; samples.len()];
    for f in 0..a.folds {
        let train_idx: Vec<usize> = (0..samples.len())
            .filter(|&i| samples[i].label.is_some() && samples[i].fold != f)
            .collect();
        let mut m = train(&samples, &train_idx, nfeat, &a);
        prune(&mut m, &a);
        for (i, s) in samples.iter().enumerate() {
            if s.fold == f {
                probs[i] = sigmoid(m.logit(s));
            }
        }
    }
    if let Some(path) = &a.cv_out {
        let mut out = String::new();
        for (s, &p) in samples.iter().zip(&probs) {
            out.push_str(
                &serde_json::json!({"id": s.s.id, "attack": s.s.attack, "category": s.s.category,
                "source": s.s.source, "target": s.s.target.as_str(), "p": p, "seen": s.seen})
                .to_string(),
            );
            out.push('\n');
        }
        std::fs::write(path, out).unwrap_or_else(|e| panic!("--cv-out {path}: {e}"));
    }
    let alone = tabulate(&samples, &probs, None);
    print_table(
        &format!(
            "{}-fold CV on dev, classifier alone (targets {}):",
            a.folds,
            a.targets
                .iter()
                .map(|t| t.as_str())
                .collect::<Vec<_>>()
                .join(",")
        ),
        &alone,
    );
    if let Some(t) = a.show_fp {
        println!("\nbenign samples at or above {t} in CV:");
        for (s, &p) in samples.iter().zip(&probs) {
            if !s.s.attack && s.seen && p >= t {
                let mut text: String = s.s.text.chars().take(110).collect();
                text = text.replace('\n', " ");
                println!("  {p:.3} {} [{}] {text}", s.s.id, s.s.category);
            }
        }
    }
    let dump = a.dump.as_deref().map(load_dump);
    if let Some(d) = &dump {
        print_table(
            "same, union with the shipped rules (from the dump):",
            &tabulate(&samples, &probs, Some(d)),
        );
        let rules_only = tabulate(&samples, &vec![0.0; samples.len()], Some(d));
        print_table("the shipped rules alone (dump):", &rules_only);
    }
    // The lowest threshold whose CV false-positive rates stay within the limits.
    let chosen = alone
        .rows
        .iter()
        .find(|r| r.3.pct() <= a.max_fp_ordinary && r.4.pct() <= a.max_fp_hard)
        .or(alone.rows.last())
        .expect("thresholds");
    let threshold = chosen.0;
    println!(
        "\nlowest threshold with CV FP <= {} % ordinary and <= {} % hard negatives: {threshold}",
        a.max_fp_ordinary, a.max_fp_hard
    );

    // Final model on all of dev.
    let train_idx: Vec<usize> = (0..samples.len())
        .filter(|&i| samples[i].label.is_some())
        .collect();
    let mut m = train(&samples, &train_idx, nfeat, &a);
    let mut kept = prune(&mut m, &a);
    // File order: most attack-like first, then most benign-like; ties by name.
    kept.sort_by(|&x, &y| {
        m.w[y]
            .total_cmp(&m.w[x])
            .then_with(|| names[x].cmp(&names[y]))
    });
    let cv: serde_json::Value = {
        let (_, cats, kinds, ord, hard) = chosen;
        json!({
            "threshold": threshold,
            "detection": cats.iter()
                .filter(|(c, _)| harness::CORE_CATEGORIES.contains(&c.as_str()))
                .map(|(c, n)| (c.clone(), json!(format!("{:.1} % of {}", n.pct(), n.n))))
                .collect::<serde_json::Map<_, _>>(),
            "false_positives": kinds.iter()
                .map(|(k, n)| (k.clone(), json!(format!("{:.2} % of {}", n.pct(), n.n))))
                .collect::<serde_json::Map<_, _>>(),
            "fp_ordinary": format!("{:.2} % of {}", ord.pct(), ord.n),
            "fp_hard_negative": format!("{:.2} % of {}", hard.pct(), hard.n),
        })
    };
    let data = {
        let corpora = if a.evasion {
            "eval/corpora/*.jsonl, split dev, variant plain (and evasion attacks, training only)"
        } else {
            "eval/corpora/*.jsonl, split dev, variant plain"
        };
        match (a.extra.as_deref(), extra_samples.len()) {
            (Some(dir), n) if n > 0 => {
                // Relative to the repository when inside it, so the file does not name this machine.
                let dir = std::path::Path::new(dir);
                let shown = dir
                    .strip_prefix(harness::repo_root())
                    .unwrap_or(dir)
                    .display();
                format!("{corpora}; {shown}/*.jsonl ({n} samples written for training only)")
            }
            _ => corpora.to_owned(),
        }
    };
    let training = json!({
        "trainer": "crates/palisade-policy/examples/train_classifier.rs",
        "data": data,
        "positives": a.positives,
        "negatives": "all benign samples",
        "samples": {"positive": npos, "negative": nneg},
        "algorithm": "logistic regression, Adagrad, per-sample updates in a seeded shuffled order",
        "epochs": a.epochs, "learning_rate": a.lr, "l2": a.l2, "negative_weight": a.neg_weight, "seed": format!("{:#x}", a.seed), "bagged_models": a.bag,
        "pruning": format!("top {} features by |weight|, |weight| >= {}", a.top_k, a.min_weight),
        "distinct_features_seen": nfeat,
        "cross_validation": format!("{}-fold on dev (fold = fnv1a(id) mod {}), pruned fold models, classifier alone, targets {}",
            a.folds, a.folds, a.targets.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(",")),
        "cv_at_threshold": cv,
    });
    let description = format!(
        "Linear classifier (logistic regression) over token unigrams and pairs of the normalised \
         text and a few whole-text shape features: probability that a text is a {} attempt. \
         Features are listed most attack-like first; a text's score is sigmoid(bias + the \
         weights of its shape features + 2/sqrt(2*tokens-1) times the sum of the weights of the \
         distinct listed features it contains).",
        a.positives.join(" / ").replace('_', " ")
    );
    // Keys in reading order (serde_json's maps would sort them).
    let shape: Vec<serde_json::Value> = SHAPE_FEATURES
        .iter()
        .zip(&m.ws)
        .map(|(n, w)| json!([n, (w * 1e4).round() / 1e4]))
        .collect();
    let header: [(&str, serde_json::Value); 8] = [
        ("format", json!(MODEL_FORMAT)),
        ("name", json!("prompt-attack")),
        ("version", json!("1")),
        ("description", json!(description)),
        ("tokenizer", json!(TokenizerSpec::current())),
        ("training", training),
        ("bias", json!((m.bias * 1e4).round() / 1e4)),
        ("shape", json!(shape)),
    ];
    let mut out = String::from("{\n");
    for (key, value) in &header {
        let pretty = serde_json::to_string_pretty(value).expect("header");
        let value = if *key == "shape" {
            serde_json::to_string(value).expect("shape")
        } else {
            pretty.replace('\n', "\n  ")
        };
        let _ = writeln!(out, "  {}: {value},", json!(key));
    }
    out.push_str("  \"features\": [\n");
    for (n, &j) in kept.iter().enumerate() {
        let sep = if n + 1 == kept.len() { "" } else { "," };
        let w = (m.w[j] * 1e4).round() / 1e4;
        let _ = writeln!(out, "[{},{w}]{sep}", json!(names[j]));
    }
    out.push_str("  ]\n}\n");

    // The shipped weights, through the engine's own loader, on the training data.
    let engine = LinearModel::from_json(&out).expect("the written model loads");
    let mut max_diff = 0f64;
    for s in &samples {
        let text = normalize(&s.s.text);
        let p = f64::from(engine.probability(&text));
        max_diff = max_diff.max((p - sigmoid(m.logit(s))).abs());
    }
    println!(
        "final model: {} features kept of {nfeat}, bias {:.4}, file {} bytes, table {} bytes, \
         max |p_engine - p_trainer| on dev {max_diff:.2e}",
        kept.len(),
        m.bias,
        out.len(),
        engine.table_bytes()
    );
    println!("top features:");
    for &j in kept.iter().take(25) {
        println!("  {:>8.4}  {}", m.w[j], names[j]);
    }
    if a.write {
        std::fs::write(&a.out, &out).expect("write model");
        println!("wrote {}", a.out);
    }
}
