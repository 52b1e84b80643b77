//! Learned detectors: linear classifiers over word n-grams, shipped as data.
//!
//! A rule may name a model in `patterns.classifier`; the rule then also matches when the model's
//! probability for the scanned text reaches the rule's threshold (see `model.rs`).
//!
//! Features (the trainer, `examples/train_classifier.rs`, calls the same functions):
//! - the text is the engine's normalised text ([`crate::normalize()`]: NFKC, invisible characters
//!   removed, confusables folded);
//! - a *word* is a maximal run of Unicode alphanumeric chars, lower-cased (`char::to_lowercase`);
//! - features are every word (unigram) and every pair of adjacent words joined by one space
//!   (bigram), identified by the FNV-1a 64-bit hash of their UTF-8 bytes;
//! - presence, not counts: a feature seen twice counts once.
//!
//! Score: `sigmoid(bias + Σ weight(f))` over the distinct features present. Only the features
//! listed in the model file carry a weight (pruned at training); all others weigh zero.
//!
//! Inference makes one pass over the text, hashing incrementally (no strings are built), and
//! looks each hash up in an open-addressing table; a small bitmap over the table's slots makes
//! repeated features count once.

use std::ops::Range;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::error::{PolicyError, Result};

/// Format tag of model files this engine reads.
pub const MODEL_FORMAT: &str = "palisade-linear-ngram-v1";
/// The normalisation a model's features assume (documentation in the model file, checked).
pub const TOKENIZER_NORMALIZE: &str =
    "palisade_policy::normalize (NFKC, invisible chars removed, confusables folded)";
/// The word definition (documentation in the model file, checked).
pub const TOKENIZER_WORDS: &str = "maximal runs of Unicode alphanumeric chars, lower-cased";
/// The feature hash (documentation in the model file, checked).
pub const TOKENIZER_HASH: &str = "fnv1a-64 of the UTF-8 bytes; bigram = \"w1 w2\"";
/// The n-gram orders a model uses.
pub const TOKENIZER_NGRAMS: [u8; 2] = [1, 2];
/// How features are counted.
pub const TOKENIZER_VALUES: &str = "presence";

/// The models built into the crate: (name, JSON text). Written by `examples/train_classifier.rs`.
const BUILTIN: &[(&str, &str)] = &[(
    "prompt-attack",
    include_str!("../../../policies/models/prompt-attack.json"),
)];

/// Names of the built-in classifier models a rule may reference in `patterns.classifier.model`.
pub fn classifier_models() -> Vec<&'static str> {
    BUILTIN.iter().map(|(name, _)| *name).collect()
}

/// A built-in model by name, parsed on first use.
///
/// # Panics
/// When a built-in model file does not parse (the crate's tests load every built-in model).
pub fn classifier_model(name: &str) -> Option<&'static LinearModel> {
    static MODELS: OnceLock<Vec<LinearModel>> = OnceLock::new();
    let models = MODELS.get_or_init(|| {
        BUILTIN
            .iter()
            .map(|(name, json)| {
                LinearModel::from_json(json)
                    .unwrap_or_else(|e| panic!("built-in classifier model `{name}`: {e}"))
            })
            .collect()
    });
    let idx = BUILTIN.iter().position(|(n, _)| *n == name)?;
    models.get(idx)
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

#[inline]
fn fnv_bytes(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// FNV-1a 64 of a feature string (`"word"` or `"word1 word2"`), as used in model files.
pub fn feature_hash(feature: &str) -> u64 {
    fnv_bytes(FNV_OFFSET, feature.as_bytes())
}

/// One feature occurrence: its hash, the index of the word it ends on, and its byte span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Feature {
    pub(crate) hash: u64,
    pub(crate) word: usize,
    /// First byte of the feature (of its first word).
    pub(crate) start: usize,
    /// End byte of the feature.
    pub(crate) end: usize,
}

/// Calls `f` for every unigram and bigram of `text`, in text order (a word's unigram, then the
/// bigram ending on it). Allocates nothing.
#[inline]
pub(crate) fn for_each_feature(text: &str, mut f: impl FnMut(Feature)) {
    let bytes = text.as_bytes();
    let mut word = 0usize;
    // Previous word: unigram hash and start byte (valid when `word > 0`).
    let (mut prev_hash, mut prev_start) = (0u64, 0usize);
    // Current word: unigram hash, hash of "previous current", start byte.
    let (mut uni, mut bi, mut start) = (FNV_OFFSET, 0u64, 0usize);
    let mut in_word = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b.is_ascii_alphanumeric() {
            if !in_word {
                in_word = true;
                start = i;
                uni = FNV_OFFSET;
                bi = (prev_hash ^ u64::from(b' ')).wrapping_mul(FNV_PRIME);
            }
            let lc = u64::from(b.to_ascii_lowercase());
            uni = (uni ^ lc).wrapping_mul(FNV_PRIME);
            bi = (bi ^ lc).wrapping_mul(FNV_PRIME);
            i += 1;
            continue;
        }
        let (len, alnum) = if b.is_ascii() {
            (1, None)
        } else {
            let c = text[i..].chars().next().unwrap_or(' ');
            (c.len_utf8(), c.is_alphanumeric().then_some(c))
        };
        if let Some(c) = alnum {
            if !in_word {
                in_word = true;
                start = i;
                uni = FNV_OFFSET;
                bi = (prev_hash ^ u64::from(b' ')).wrapping_mul(FNV_PRIME);
            }
            let mut buf = [0u8; 4];
            for lc in c.to_lowercase() {
                let enc = lc.encode_utf8(&mut buf).as_bytes();
                uni = fnv_bytes(uni, enc);
                bi = fnv_bytes(bi, enc);
            }
        } else if in_word {
            in_word = false;
            emit(&mut f, word, uni, bi, start, prev_start, i);
            (prev_hash, prev_start) = (uni, start);
            word += 1;
        }
        i += len;
    }
    if in_word {
        emit(&mut f, word, uni, bi, start, prev_start, bytes.len());
    }
}

#[inline]
fn emit(
    f: &mut impl FnMut(Feature),
    word: usize,
    uni: u64,
    bi: u64,
    start: usize,
    prev_start: usize,
    end: usize,
) {
    f(Feature {
        hash: uni,
        word,
        start,
        end,
    });
    if word > 0 {
        f(Feature {
            hash: bi,
            word,
            start: prev_start,
            end,
        });
    }
}

/// The feature hashes of `text` in text order (repeats included). For the trainer and tests.
#[doc(hidden)]
pub fn feature_hashes(text: &str, out: &mut Vec<u64>) {
    for_each_feature(text, |f| out.push(f.hash));
}

/// The feature strings of `text` in the order of [`feature_hashes`]. For the trainer (to name
/// the features it writes) and tests; the engine never builds strings.
#[doc(hidden)]
pub fn feature_strings(text: &str) -> Vec<String> {
    let mut words: Vec<String> = Vec::new();
    let mut cur = String::new();
    for c in text.chars() {
        if c.is_alphanumeric() {
            cur.extend(c.to_lowercase());
        } else if !cur.is_empty() {
            words.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    let mut out = Vec::with_capacity(words.len() * 2);
    for (i, w) in words.iter().enumerate() {
        out.push(w.clone());
        if i > 0 {
            out.push(format!("{} {w}", words[i - 1]));
        }
    }
    out
}

/// The tokenizer section of a model file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerSpec {
    /// Normalisation applied before tokenizing ([`TOKENIZER_NORMALIZE`]).
    pub normalize: String,
    /// Word definition ([`TOKENIZER_WORDS`]).
    pub words: String,
    /// N-gram orders ([`TOKENIZER_NGRAMS`]).
    pub ngrams: Vec<u8>,
    /// Feature hash ([`TOKENIZER_HASH`]).
    pub hash: String,
    /// Feature values ([`TOKENIZER_VALUES`]).
    pub values: String,
}

impl TokenizerSpec {
    /// The tokenizer this engine implements.
    pub fn current() -> TokenizerSpec {
        TokenizerSpec {
            normalize: TOKENIZER_NORMALIZE.to_owned(),
            words: TOKENIZER_WORDS.to_owned(),
            ngrams: TOKENIZER_NGRAMS.to_vec(),
            hash: TOKENIZER_HASH.to_owned(),
            values: TOKENIZER_VALUES.to_owned(),
        }
    }
}

/// A model file as stored in `policies/models/<name>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    /// [`MODEL_FORMAT`].
    pub format: String,
    /// Model name (the file's stem; what rules reference).
    pub name: String,
    /// Version of the model.
    pub version: String,
    /// What the model detects and how it was trained.
    pub description: String,
    /// The feature extraction the weights assume.
    pub tokenizer: TokenizerSpec,
    /// Training settings and cross-validation figures (informational).
    #[serde(default)]
    pub training: serde_json::Value,
    /// Intercept.
    pub bias: f64,
    /// `[feature, weight]` pairs; a feature is a word or two words joined by one space.
    pub features: Vec<(String, f64)>,
}

/// A loaded linear model: open-addressing table from feature hash to weight.
#[derive(Debug)]
pub struct LinearModel {
    name: String,
    version: String,
    bias: f32,
    /// Slot keys (0 = empty); the length is a power of two.
    keys: Vec<u64>,
    weights: Vec<f32>,
    shift: u32,
    /// One bit per value of a hash's top `FILTER_BITS` bits, set for the model's features: most
    /// words and word pairs of a text are not features, and this 32 KiB bitmap (which stays in
    /// cache) answers for them without a probe of the larger table.
    filter: Vec<u64>,
    features: usize,
}

/// Bits of the feature-hash prefilter (2^18 bits = 32 KiB).
const FILTER_BITS: u32 = 18;

#[inline]
fn filter_bit(h: u64) -> (usize, u64) {
    let b = usize::try_from(h >> (64 - FILTER_BITS)).unwrap_or(0);
    (b / 64, 1u64 << (b % 64))
}

/// Texts up to this many bytes track the features seen in a list instead of a bitmap.
const SHORT_TEXT: usize = 256;

/// Maximum words in the span reported for a classifier match.
const WINDOW_WORDS: usize = 12;

impl LinearModel {
    /// Parses and checks a model file.
    pub fn from_json(json: &str) -> Result<LinearModel> {
        let file: ModelFile = serde_json::from_str(json).map_err(|e| PolicyError::Json {
            message: format!("classifier model: {e}"),
        })?;
        LinearModel::from_file(&file)
    }

    /// Builds the lookup table of a parsed model file.
    pub fn from_file(file: &ModelFile) -> Result<LinearModel> {
        let bad =
            |problem: String| PolicyError::Compile(format!("model `{}`: {problem}", file.name));
        if file.format != MODEL_FORMAT {
            return Err(bad(format!(
                "format `{}` is not `{MODEL_FORMAT}`",
                file.format
            )));
        }
        if file.tokenizer != TokenizerSpec::current() {
            return Err(bad(
                "tokenizer differs from the one this engine implements".into()
            ));
        }
        if !file.bias.is_finite() {
            return Err(bad("bias is not finite".into()));
        }
        let n = file.features.len();
        // Load factor at most 2/3: linear probing stays short and the table small.
        let slots = (n + n / 2).next_power_of_two().max(16);
        let bits = slots.trailing_zeros();
        let mut keys = vec![0u64; slots];
        let mut weights = vec![0f32; slots];
        let mut filter = vec![0u64; (1usize << FILTER_BITS) / 64];
        let shift = 64 - bits;
        for (feature, weight) in &file.features {
            if !weight.is_finite() {
                return Err(bad(format!("weight of `{feature}` is not finite")));
            }
            let parts = feature_strings(feature);
            let canonical = match parts.len() {
                1 => parts[0] == *feature,
                3 => parts[2] == *feature,
                _ => false,
            };
            if !canonical {
                return Err(bad(format!(
                    "`{feature}` is not a lower-case word or two words joined by one space"
                )));
            }
            let h = feature_hash(feature);
            if h == 0 {
                return Err(bad(format!("`{feature}` hashes to the reserved value 0")));
            }
            let (word, bit) = filter_bit(h);
            filter[word] |= bit;
            let mut s = slot(h, shift);
            loop {
                if keys[s] == 0 {
                    keys[s] = h;
                    // Weights are stored as f32; the file's precision is below that anyway.
                    #[allow(clippy::cast_possible_truncation)]
                    {
                        weights[s] = *weight as f32;
                    }
                    break;
                }
                if keys[s] == h {
                    return Err(bad(format!("feature `{feature}` is listed twice")));
                }
                s = (s + 1) & (slots - 1);
            }
        }
        #[allow(clippy::cast_possible_truncation)]
        let bias = file.bias as f32;
        Ok(LinearModel {
            name: file.name.clone(),
            version: file.version.clone(),
            bias,
            keys,
            weights,
            shift,
            filter,
            features: n,
        })
    }

    /// The model's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The model's version.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Number of weighted features.
    pub fn feature_count(&self) -> usize {
        self.features
    }

    /// Bytes held by the lookup table.
    pub fn table_bytes(&self) -> usize {
        self.keys.len() * (std::mem::size_of::<u64>() + std::mem::size_of::<f32>())
            + self.filter.len() * std::mem::size_of::<u64>()
    }

    /// Table slot of a feature, or `None` when the model does not weigh it.
    #[inline]
    fn lookup(&self, h: u64) -> Option<usize> {
        let (word, bit) = filter_bit(h);
        if self.filter[word] & bit == 0 {
            return None;
        }
        let mask = self.keys.len() - 1;
        let mut s = slot(h, self.shift);
        loop {
            let k = self.keys[s];
            if k == h {
                return Some(s);
            }
            if k == 0 {
                return None;
            }
            s = (s + 1) & mask;
        }
    }

    /// The log-odds `bias + Σ weights` over the distinct features of `text` (already normalised).
    pub fn logit(&self, text: &str) -> f32 {
        let mut sum = self.bias;
        if text.len() <= SHORT_TEXT {
            // Few features: a list of the slots seen is cheaper than zeroing a bitmap (decoded
            // segments are scanned one by one and are often short).
            let mut seen: Vec<usize> = Vec::new();
            for_each_feature(text, |f| {
                if let Some(s) = self.lookup(f.hash)
                    && !seen.contains(&s)
                {
                    seen.push(s);
                    sum += self.weights[s];
                }
            });
            return sum;
        }
        let mut seen = vec![0u64; self.keys.len().div_ceil(64)];
        for_each_feature(text, |f| {
            if let Some(s) = self.lookup(f.hash) {
                let bit = 1u64 << (s % 64);
                if seen[s / 64] & bit == 0 {
                    seen[s / 64] |= bit;
                    sum += self.weights[s];
                }
            }
        });
        sum
    }

    /// The probability `sigmoid(logit)` that `text` (already normalised) is an attack.
    pub fn probability(&self, text: &str) -> f32 {
        sigmoid(self.logit(text))
    }

    /// The span of at most 12 consecutive words with the largest summed positive contribution
    /// (each distinct feature credited at its first occurrence), trimmed of words that
    /// contribute nothing. `None` when no feature has a positive weight.
    pub fn best_window(&self, text: &str) -> Option<Range<usize>> {
        // Per word: (start, end, own contribution, contribution of the bigram ending on it).
        let mut words: Vec<(usize, usize, f32, f32)> = Vec::new();
        let mut seen = vec![0u64; self.keys.len().div_ceil(64)];
        for_each_feature(text, |f| {
            if f.word == words.len() {
                words.push((f.start, f.end, 0.0, 0.0));
            }
            let Some(s) = self.lookup(f.hash) else {
                return;
            };
            let bit = 1u64 << (s % 64);
            if seen[s / 64] & bit != 0 {
                return;
            }
            seen[s / 64] |= bit;
            let w = self.weights[s].max(0.0);
            let entry = &mut words[f.word];
            if f.start == entry.0 {
                entry.2 += w;
            } else {
                entry.3 += w;
            }
        });
        let contrib = |i: usize| words[i].2 + words[i].3;
        let n = words.len();
        let win = WINDOW_WORDS.min(n);
        if win == 0 {
            return None;
        }
        let mut sum: f32 = (0..win).map(contrib).sum();
        let (mut best, mut best_at) = (sum, 0usize);
        for i in win..n {
            sum += contrib(i) - contrib(i - win);
            if sum > best {
                best = sum;
                best_at = i + 1 - win;
            }
        }
        if best <= 0.0 {
            return None;
        }
        let (mut a, mut b) = (best_at, best_at + win - 1);
        // A bigram's credit sits on its second word; keep its first word when trimming.
        while a < b && words[a].2 <= 0.0 && words[a].3 <= 0.0 && words[a + 1].3 <= 0.0 {
            a += 1;
        }
        while b > a && contrib(b) <= 0.0 {
            b -= 1;
        }
        if words[a].3 > 0.0 && a > best_at {
            a -= 1;
        }
        Some(words[a].0..words[b].1)
    }
}

#[inline]
fn slot(h: u64, shift: u32) -> usize {
    // Fibonacci hashing spreads FNV's weaker low bits over the table.
    usize::try_from(h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> shift).unwrap_or(0)
}

/// The logistic function.
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// The log-odds of a probability threshold (`ln(t / (1 - t))`), for comparing logits.
pub(crate) fn threshold_logit(t: f64) -> f32 {
    #[allow(clippy::cast_possible_truncation)]
    {
        (t / (1.0 - t)).ln() as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(bias: f64, features: &[(&str, f64)]) -> LinearModel {
        LinearModel::from_file(&ModelFile {
            format: MODEL_FORMAT.into(),
            name: "tiny".into(),
            version: "1".into(),
            description: "test".into(),
            tokenizer: TokenizerSpec::current(),
            training: serde_json::Value::Null,
            bias,
            features: features
                .iter()
                .map(|(f, w)| ((*f).to_owned(), *w))
                .collect(),
        })
        .unwrap()
    }

    #[test]
    fn fnv1a_is_the_reference_function() {
        // Reference values of FNV-1a 64.
        assert_eq!(feature_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(feature_hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(feature_hash("foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn tokenizer_words_and_bigrams() {
        let text = "Ignore ALL previous-instructions, ÉTÉ 42x!";
        assert_eq!(
            feature_strings(text),
            [
                "ignore",
                "all",
                "ignore all",
                "previous",
                "all previous",
                "instructions",
                "previous instructions",
                "été",
                "instructions été",
                "42x",
                "été 42x",
            ]
        );
        // The streaming hashes are the hashes of those strings, in the same order.
        let mut hashes = Vec::new();
        feature_hashes(text, &mut hashes);
        let expected: Vec<u64> = feature_strings(text)
            .iter()
            .map(|s| feature_hash(s))
            .collect();
        assert_eq!(hashes, expected);
        // Stable across releases: a model file's features must keep their hashes.
        assert_eq!(hashes[2], feature_hash("ignore all"));
        assert_eq!(hashes[2], 0xb76b_a0ae_964a_8f80);
        let mut none = Vec::new();
        feature_hashes(" ,;- ", &mut none);
        assert!(none.is_empty());
    }

    #[test]
    fn spans_of_features() {
        let mut spans = Vec::new();
        for_each_feature("ab, cd", |f| spans.push((f.word, f.start..f.end)));
        assert_eq!(spans, [(0, 0..2), (1, 4..6), (1, 0..6)]);
    }

    #[test]
    fn score_of_a_known_text() {
        let m = model(
            -2.0,
            &[
                ("ignore", 1.0),
                ("previous instructions", 2.5),
                ("weather", -1.5),
            ],
        );
        // ignore (1.0, counted once) + "previous instructions" (2.5) - 2.0 = 1.5
        let logit = m.logit("Ignore previous instructions, IGNORE them!");
        assert!((logit - 1.5).abs() < 1e-6, "{logit}");
        let p = m.probability("Ignore previous instructions, IGNORE them!");
        assert!((p - 0.817_574_5).abs() < 1e-5, "{p}");
        assert!((m.logit("what is the weather") + 3.5).abs() < 1e-6);
        assert!((m.logit("") + 2.0).abs() < 1e-6);
        assert_eq!(m.feature_count(), 3);
        assert!((threshold_logit(0.5)).abs() < 1e-6);
    }

    #[test]
    fn short_and_long_texts_count_each_feature_once() {
        let m = model(-2.0, &[("ignore", 1.0), ("previous instructions", 2.5)]);
        let short = "ignore previous instructions ignore";
        assert!(short.len() <= SHORT_TEXT);
        let long = format!("{short} {}", "x ".repeat(SHORT_TEXT));
        assert!((m.logit(short) - 1.5).abs() < 1e-6);
        assert!((m.logit(&long) - 1.5).abs() < 1e-6);
    }

    #[test]
    fn best_window_shows_the_offending_phrase() {
        let m = model(
            -2.0,
            &[
                ("ignore", 1.0),
                ("previous instructions", 2.5),
                ("the", 0.1),
            ],
        );
        let text = "a b c d e f g h i j k l m n o p please ignore all previous instructions now";
        let w = m.best_window(text).unwrap();
        assert_eq!(&text[w], "ignore all previous instructions");
        assert_eq!(m.best_window("nothing here"), None);
    }

    #[test]
    fn bad_model_files_are_rejected() {
        let file = |features: Vec<(String, f64)>| ModelFile {
            format: MODEL_FORMAT.into(),
            name: "bad".into(),
            version: "1".into(),
            description: String::new(),
            tokenizer: TokenizerSpec::current(),
            training: serde_json::Value::Null,
            bias: 0.0,
            features,
        };
        let err = LinearModel::from_file(&file(vec![("Upper".into(), 1.0)])).unwrap_err();
        assert!(err.to_string().contains("Upper"), "{err}");
        let err =
            LinearModel::from_file(&file(vec![("a".into(), 1.0), ("a".into(), 2.0)])).unwrap_err();
        assert!(err.to_string().contains("twice"), "{err}");
        let mut f = file(vec![]);
        f.tokenizer.ngrams = vec![1, 2, 3];
        assert!(LinearModel::from_file(&f).is_err());
    }

    #[test]
    fn builtin_models_load() {
        for name in classifier_models() {
            let m = classifier_model(name).unwrap();
            assert_eq!(m.name(), name);
            assert!(m.table_bytes() < 1 << 20, "{}", m.table_bytes());
        }
        assert!(classifier_model("no-such-model").is_none());
    }
}
