//! Redaction with stable placeholders, unmasking, and the value validators (Luhn, IBAN).

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use serde::Serialize;

use std::ops::Range;

use regex_automata::{Anchored, Input, PatternID};

use crate::engine::{PolicySet, RedactMatcher};
use crate::memo::{Kind, Memo, Scope};
use crate::model::{Target, Validator};

/// Text with sensitive values replaced by placeholders, and the map to restore them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Redacted {
    /// The redacted text.
    pub text: String,
    /// `(placeholder, original)` pairs, one per distinct value, in order of first appearance.
    pub map: Vec<(String, String)>,
}

impl Redacted {
    /// True when nothing was redacted.
    pub fn is_unchanged(&self) -> bool {
        self.map.is_empty()
    }
}

/// Applies a validator to a matched value.
pub(crate) fn validate(validator: Validator, value: &str) -> bool {
    match validator {
        Validator::None => true,
        Validator::Luhn => luhn_valid(value),
        Validator::Iban => iban_valid(value),
    }
}

/// Luhn check over the digits of `value` (separators ignored); requires 12..=19 digits.
pub fn luhn_valid(value: &str) -> bool {
    let mut sum = 0u32;
    let mut count = 0usize;
    for c in value.chars().rev() {
        let Some(d) = c.to_digit(10) else {
            // Any space (a no-break space too) or a hyphen separates groups.
            if c.is_whitespace() || c == '-' {
                continue;
            }
            return false;
        };
        let d = if count % 2 == 1 {
            let x = d * 2;
            if x > 9 { x - 9 } else { x }
        } else {
            d
        };
        sum += d;
        count += 1;
    }
    (12..=19).contains(&count) && sum.is_multiple_of(10)
}

/// ISO 13616 IBAN check: country code, check digits, length 15..=34, mod 97 == 1 (spaces ignored).
pub fn iban_valid(value: &str) -> bool {
    let chars: Vec<char> = value
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .collect();
    if !(15..=34).contains(&chars.len()) {
        return false;
    }
    if !chars[..2].iter().all(char::is_ascii_alphabetic)
        || !chars[2..4].iter().all(char::is_ascii_digit)
        || !chars.iter().all(char::is_ascii_alphanumeric)
    {
        return false;
    }
    let mut rem: u32 = 0;
    for c in chars[4..].iter().chain(&chars[..4]) {
        let c = c.to_ascii_uppercase();
        let v = if c.is_ascii_digit() {
            u32::from(c) - u32::from('0')
        } else {
            u32::from(c) - u32::from('A') + 10
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

impl PolicySet {
    /// Replaces every match of the `redact` rules for `target` with a stable placeholder.
    ///
    /// Operates on the raw text (no normalisation) so the originals can be restored exactly with
    /// [`unmask`]. The same value gets the same placeholder (`[EMAIL_1]`) within one call;
    /// overlapping matches are resolved leftmost-first (the earliest value; at one start, the first
    /// rule in policy order that accepts it). Validators (Luhn, IBAN) must pass, and
    /// an occurrence is kept in clear when one of the rule's allow-patterns matches the value.
    pub fn redact(&self, target: Target, text: &str) -> Redacted {
        let mut map = Vec::new();
        let text = self.redact_into(target, text, &mut map);
        Redacted { text, map }
    }

    /// The accepted matches of the redact rules, sorted by start.
    ///
    /// One leftmost-first pass of all redact regexes (in policy and rule order) finds the next
    /// value. When its rule rejects it (validator, word boundary or allow-pattern), the other
    /// patterns that match at the same start are tried in order (anchored, so only the value is
    /// read again), and the search resumes one character further if none is accepted. Keyword
    /// rules add their matches rule by rule.
    fn redaction_hits(
        &self,
        rm: &RedactMatcher,
        applies: &[bool],
        text: &str,
    ) -> Vec<(usize, usize, u32)> {
        let mut hits: Vec<(usize, usize, u32)> = Vec::new();
        // A value of a rule for another target counts as rejected here.
        let accepts = |r: u32, span: &Range<usize>, bounds| {
            let rule = &self.rules[r as usize];
            applies[r as usize]
                && !span.is_empty()
                && rule.accept(text, span, bounds)
                && !rule.allow.iter().any(|a| a.is_match(&text[span.clone()]))
        };
        if let Some(first) = &rm.first {
            let mut pos = 0usize;
            // A rejected value that nothing else claims restarts the search one character after
            // its start.
            while pos <= text.len() {
                // The end and pattern of the leftmost-first value, then its start from that
                // pattern alone (see `StartFinder`).
                let Some(half) = first.search_half(&Input::new(text).range(pos..)) else {
                    break;
                };
                let (pid, end) = (half.pattern(), half.offset());
                let start = match rm.starts[pid.as_usize()].start(text, pos, end) {
                    Some(start) => start,
                    // The value ends at `end`: the full search need not read further.
                    None => match first.search(&Input::new(text).range(pos..end)) {
                        Some(m) => m.start(),
                        None => break,
                    },
                };
                let (r, bounds) = rm.owner[pid.as_usize()];
                if accepts(r, &(start..end), bounds) {
                    // Accepted values are never empty: the search moves on.
                    hits.push((start, end, r));
                    pos = end;
                    continue;
                }
                // Rejected: another pattern may still match a valid value here (tried
                // anchored, so each attempt reads only as far as its pattern goes).
                let other = (0..first.pattern_len())
                    .filter_map(|p| PatternID::new(p).ok())
                    .filter(|other| *other != pid)
                    .find_map(|pid| {
                        let input = Input::new(text)
                            .range(start..)
                            .anchored(Anchored::Pattern(pid));
                        let end = first.search_half(&input)?.offset();
                        let (r, bounds) = rm.owner[pid.as_usize()];
                        accepts(r, &(start..end), bounds).then_some((end, r))
                    });
                pos = match other {
                    Some((end, r)) => {
                        hits.push((start, end, r));
                        end
                    }
                    None => match text[start..].chars().next() {
                        Some(c) => start + c.len_utf8(),
                        None => break,
                    },
                };
            }
        }
        for &r in rm.keyword_rules.iter().filter(|&&r| applies[r as usize]) {
            let rule = &self.rules[r as usize];
            rule.for_each_keyword_match(text, |span| {
                if !rule.allow.iter().any(|a| a.is_match(&text[span.clone()])) {
                    hits.push((span.start, span.end, r));
                }
            });
        }
        hits.sort_by_key(|&(s, e, r)| (s, std::cmp::Reverse(e), r));
        hits
    }

    /// Like [`PolicySet::redact`], but continues an existing placeholder map, so that the same
    /// value gets the same placeholder across all the strings of one request.
    pub fn redact_into(
        &self,
        target: Target,
        text: &str,
        map: &mut Vec<(String, String)>,
    ) -> String {
        self.redact_into_in(None, target, text, map)
    }

    /// [`PolicySet::redact_into`] for a caller: the values found in a text this `scope` had
    /// redacted lately come from the set's memo (placeholders are numbered anew, in `map`).
    pub(crate) fn redact_into_in(
        &self,
        scope: Option<Scope>,
        target: Target,
        text: &str,
        map: &mut Vec<(String, String)>,
    ) -> String {
        let tm = &self.targets[target.index()];
        let Some(rm) = &tm.redact else {
            return text.to_owned();
        };
        let memo = scope.map(|scope| self.memo.get(scope, Kind::Redact, target, text));
        let hits: Vec<(usize, usize, u32)> = match memo {
            Some(Ok(Memo::Hits(hits))) => hits.to_vec(),
            Some(Ok(Memo::Eval(_))) => unreachable!("the kind is part of the memo's key"),
            Some(Err(slot)) => {
                let hits = self.redaction_hits(rm, &tm.applies, text);
                if let Some(slot) = slot {
                    self.memo.put(slot, Memo::Hits(hits.as_slice().into()));
                }
                hits
            }
            None => self.redaction_hits(rm, &tm.applies, text),
        };
        if hits.is_empty() {
            return text.to_owned();
        }
        self.apply_redactions(text, hits, map)
    }

    /// Redacts a stream's text up to about `upto` bytes: the values that end by then are
    /// replaced, and the cut moves back to the start of any value that reaches past it, so a
    /// value is never split between what is released now and what is held. Returns the
    /// redacted prefix and the length of `text` it covers (at most `upto`, a char boundary).
    /// Values are found in the whole of `text`, so what follows the cut still decides where a
    /// value before it ends.
    pub fn redact_prefix_into(
        &self,
        target: Target,
        text: &str,
        upto: usize,
        map: &mut Vec<(String, String)>,
    ) -> (String, usize) {
        let mut cut = upto.min(text.len());
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        let tm = &self.targets[target.index()];
        let mut hits = match &tm.redact {
            Some(rm) => self.redaction_hits(rm, &tm.applies, text),
            None => Vec::new(),
        };
        // Hits are sorted by start: walking back from the last, each one that straddles the
        // cut pulls it back to its start (which may make an earlier, overlapping one straddle).
        for &(s, e, _) in hits.iter().rev() {
            if s < cut && e > cut {
                cut = s;
            }
        }
        hits.retain(|&(_, e, _)| e <= cut);
        if hits.is_empty() {
            return (text[..cut].to_owned(), cut);
        }
        (self.apply_redactions(&text[..cut], hits, map), cut)
    }

    /// Writes `text` with `hits` replaced, numbering new values after those already in `map`
    /// (same label and value: same placeholder).
    fn apply_redactions(
        &self,
        text: &str,
        hits: Vec<(usize, usize, u32)>,
        map: &mut Vec<(String, String)>,
    ) -> String {
        let mut out = String::with_capacity(text.len());
        let mut literal: Option<HashSet<&str>> = None;
        let mut pos = 0usize;
        for (s, e, r) in hits {
            if s < pos {
                continue;
            }
            // A rule may mask only the value within its match (its first group, if it has
            // one), keeping the context in clear.
            let (s, e) = match &self.rules[r as usize].redact_value {
                Some(re) => re
                    .captures(&text[s..e])
                    .and_then(|c| c.get(1).or_else(|| c.get(0)))
                    .filter(|m| !m.is_empty())
                    .map_or((s, e), |m| (s + m.start(), s + m.end())),
                None => widen(text, s, e, pos),
            };
            let label: &str = &self.rules[r as usize].label;
            let value = &text[s..e];
            // A placeholder of the map is never a value (`"password": "[PASSWORD_1]"` in an
            // answer that repeats what the client sent): it stays, and unmasking restores it.
            if map.iter().any(|(p, _)| p == value) {
                continue;
            }
            let existing = map
                .iter()
                .position(|(p, v)| v == value && placeholder_label(p) == label);
            let idx = match existing {
                Some(i) => i,
                None => {
                    // After the highest number of the label so far (a map may keep only the
                    // highest of a long conversation's placeholders).
                    let mut n = map
                        .iter()
                        .filter(|(p, _)| placeholder_label(p) == label)
                        .filter_map(|(p, _)| placeholder_number(p))
                        .max()
                        .unwrap_or(0);
                    // Skip numbers whose placeholder already appears in the input, so unmasking
                    // never rewrites text the client wrote itself.
                    let literal = literal.get_or_insert_with(|| literal_placeholders(text));
                    let placeholder = loop {
                        n += 1;
                        let p = placeholder(label, n);
                        if !literal.contains(p.as_str()) && !map.iter().any(|(q, _)| *q == p) {
                            break p;
                        }
                    };
                    map.push((placeholder, value.to_owned()));
                    map.len() - 1
                }
            };
            out.push_str(&text[pos..s]);
            out.push_str(&map[idx].0);
            pos = e;
        }
        out.push_str(&text[pos..]);
        out
    }
}

/// `[LABEL_n]`, built without the formatting machinery (a measurable share of redaction).
fn placeholder(label: &str, n: usize) -> String {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut rest = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    let mut p = String::with_capacity(label.len() + 3 + digits.len() - i);
    p.push('[');
    p.push_str(label);
    p.push('_');
    p.extend(digits[i..].iter().map(|&d| char::from(d)));
    p.push(']');
    p
}

/// The label of a placeholder (`[EMAIL_12]` → `EMAIL`).
pub fn placeholder_label(placeholder: &str) -> &str {
    placeholder
        .strip_prefix('[')
        .and_then(|p| p.rsplit_once('_'))
        .map_or("", |(l, _)| l)
}

/// The number of a placeholder (`[EMAIL_12]` → 12).
pub fn placeholder_number(placeholder: &str) -> Option<usize> {
    placeholder
        .strip_suffix(']')
        .and_then(|p| p.rsplit_once('_'))
        .and_then(|(_, n)| n.parse().ok())
}

/// Most characters a replacement takes in on either side of a value (see [`widen`]).
const WIDEN_MAX: usize = 32;

/// A value whose pattern stopped at a letter of another script (`jоhn.smith@example.com` with
/// a Cyrillic `о`, `émile@…`, fullwidth `ｊｏｈｎ.smith@…`) would leave part of itself in clear
/// next to the placeholder. The replacement takes in the run of word characters touching the
/// value (at most [`WIDEN_MAX`] on each side, never before `floor`, the end of the previous
/// replacement) when that run holds a Latin, Greek, Cyrillic or fullwidth letter outside ASCII;
/// an ASCII neighbour alone means the pattern chose to stop there. Other scripts (CJK, Arabic…)
/// are never taken in: they are the surrounding sentence, not look-alikes.
fn widen(text: &str, s: usize, e: usize, floor: usize) -> (usize, usize) {
    fn lookalike(c: char) -> bool {
        matches!(c, '\u{00C0}'..='\u{024F}' | '\u{0370}'..='\u{03FF}' | '\u{0400}'..='\u{04FF}' | '\u{FF10}'..='\u{FF5A}')
            && c.is_alphanumeric()
    }
    fn word(c: char) -> bool {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '%' | '+' | '-') || lookalike(c)
    }
    let mut start = s;
    let mut odd = false;
    for (n, (i, c)) in text[floor.min(s)..s].char_indices().rev().enumerate() {
        if n == WIDEN_MAX || !word(c) {
            break;
        }
        odd |= lookalike(c);
        start = floor.min(s) + i;
    }
    let start = if odd { start } else { s };
    let mut end = e;
    let mut odd = false;
    for (n, (i, c)) in text[e..].char_indices().enumerate() {
        if n == WIDEN_MAX || !word(c) {
            break;
        }
        odd |= lookalike(c);
        end = e + i + c.len_utf8();
    }
    let end = if odd { end } else { e };
    (start, end)
}

/// Placeholder-shaped tokens (`[LABEL_12]`) the input already contains, found in one pass.
fn literal_placeholders(text: &str) -> HashSet<&str> {
    let mut found = HashSet::new();
    let mut rest = 0usize;
    while let Some(off) = text[rest..].find('[') {
        let open = rest + off;
        let token_len = text.as_bytes()[open + 1..]
            .iter()
            .position(|&b| !(b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'))
            .map_or(text.len() - open - 1, |p| p);
        let close = open + 1 + token_len;
        if text.as_bytes().get(close) == Some(&b']') && token_len > 0 {
            found.insert(&text[open..=close]);
        }
        rest = open + 1;
    }
    found
}

/// A word-at-a-time multiplicative hash (the rustc "Fx" scheme): placeholders are short, trusted
/// keys (they come from our own map), so a simple fast hash beats the default DoS-resistant one,
/// which showed in unmasking profiles.
#[derive(Default)]
struct PlaceholderHasher(u64);

impl PlaceholderHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for PlaceholderHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }
}

/// Restores the originals of a [`Redacted`] map in `text` (single pass, leftmost placeholders).
pub fn unmask(text: &str, map: &[(String, String)]) -> String {
    if map.is_empty() || !text.contains('[') {
        return text.to_owned();
    }
    let mut lookup: HashMap<&str, &str, BuildHasherDefault<PlaceholderHasher>> =
        HashMap::with_capacity_and_hasher(map.len(), BuildHasherDefault::default());
    lookup.extend(map.iter().map(|(p, o)| (p.as_str(), o.as_str())));
    let max_len = map.iter().map(|(p, _)| p.len()).max().unwrap_or(0);
    let mut out = String::with_capacity(text.len());
    let mut pos = 0usize;
    let mut search = 0usize;
    while let Some(off) = text[search..].find('[') {
        let open = search + off;
        let window_end = (open + max_len).min(text.len());
        // Byte search: `window_end` may fall inside a multi-byte char, `]` never does.
        let replaced = text.as_bytes()[open..window_end]
            .iter()
            .position(|&b| b == b']')
            .map(|close| &text[open..open + close + 1])
            .and_then(|candidate| lookup.get(candidate).map(|orig| (candidate.len(), *orig)));
        match replaced {
            Some((len, orig)) => {
                out.push_str(&text[pos..open]);
                out.push_str(orig);
                pos = open + len;
                search = pos;
            }
            None => search = open + 1,
        }
    }
    out.push_str(&text[pos..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn email_policy() -> crate::Policy {
        crate::Policy::from_json(
            r#"{"id": "pii", "name": "p", "description": "", "version": "1", "rules": [{
                "id": "E-1", "name": "email", "category": "pii", "severity": "low",
                "targets": ["llm_request"], "patterns": {"regex": ["[a-z]+@[a-z]+\\.io"]},
                "action": "redact", "redact": {"label": "EMAIL"}, "rationale": "r",
                "examples": {"positive": ["a@b.io"], "negative": ["nothing"]}}]}"#,
        )
        .unwrap()
    }

    #[test]
    fn redact_into_shares_placeholders_across_strings() {
        let set = crate::PolicySet::compile(&[email_policy()]).unwrap();
        let mut map = Vec::new();
        let a = set.redact_into(Target::LlmRequest, "mail a@x.io and b@y.io", &mut map);
        let b = set.redact_into(Target::LlmRequest, "again b@y.io, new c@z.io", &mut map);
        assert_eq!(a, "mail [EMAIL_1] and [EMAIL_2]");
        assert_eq!(b, "again [EMAIL_2], new [EMAIL_3]");
        assert_eq!(unmask(&b, &map), "again b@y.io, new c@z.io");
    }

    #[test]
    fn a_prefix_never_splits_a_value() {
        let set = crate::PolicySet::compile(&[email_policy()]).unwrap();
        let text = "mail a@x.io or bob@y.io now";
        let mut map = Vec::new();
        // The cut falls inside `bob@y.io`: it moves back to the value's start.
        let (out, used) = set.redact_prefix_into(Target::LlmRequest, text, 17, &mut map);
        assert_eq!((out.as_str(), used), ("mail [EMAIL_1] or ", 15));
        // The rest, with the same map, continues the numbering.
        let (rest, used) = set.redact_prefix_into(Target::LlmRequest, &text[15..], 99, &mut map);
        assert_eq!((rest.as_str(), used), ("[EMAIL_2] now", text.len() - 15));
        // A cut inside a multi-byte char moves to its start; no value, text unchanged.
        let (out, used) = set.redact_prefix_into(Target::LlmRequest, "ab\u{e9}cd", 3, &mut map);
        assert_eq!((out.as_str(), used), ("ab", 2));
        assert_eq!(map.len(), 2);
    }

    #[test]
    fn a_value_pattern_masks_only_the_value_within_a_match() {
        let doc = |value: &str| {
            format!(
                r#"{{"id": "pii", "name": "p", "description": "", "version": "1", "rules": [{{
                "id": "P-1", "name": "phone", "category": "pii", "severity": "low",
                "targets": ["llm_request"], "patterns": {{"regex": ["(?i)phone:?\\s*\\+?[0-9][0-9 ]{{6,}}[0-9]"]}},
                "action": "redact", "redact": {{"label": "PHONE", "value": "{value}"}}, "rationale": "r",
                "examples": {{"positive": ["phone +1 415 555 0133"], "negative": ["nothing"]}}}}]}}"#
            )
        };
        let set =
            crate::PolicySet::compile(&[
                crate::Policy::from_json(&doc("[+]?[0-9][0-9 ]+[0-9]")).unwrap()
            ])
            .unwrap();
        let r = set.redact(Target::LlmRequest, "call Phone: +1 415 555 0133 today");
        assert_eq!(r.text, "call Phone: [PHONE_1] today");
        assert_eq!(r.map, vec![("[PHONE_1]".into(), "+1 415 555 0133".into())]);
        assert_eq!(unmask(&r.text, &r.map), "call Phone: +1 415 555 0133 today");
        // With a group, only the group is masked: the shipped password rule keeps a JSON
        // member's quotes.
        let secrets = crate::Policy::from_json(
            &std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../policies/secrets-detection.json"
            ))
            .unwrap(),
        )
        .unwrap();
        let set = crate::PolicySet::compile(&[secrets]).unwrap();
        for (text, want) in [
            (
                r#"{"password": "Tr0ub4dor&3", "n": 1}"#,
                r#"{"password": "[PASSWORD_1]", "n": 1}"#,
            ),
            (
                r#"{"api_key":"a8f3k2m9x7q1w5e4r6t0"}"#,
                r#"{"api_key":"[API_KEY_1]"}"#,
            ),
            ("db_password = 'hunter2024'", "db_password = '[PASSWORD_1]'"),
            (
                "mysql -h my-prod -u root -pS3cretPw",
                "mysql -h my-prod -u root -p[PASSWORD_1]",
            ),
        ] {
            let r = set.redact(Target::LlmRequest, text);
            assert_eq!(r.text, want);
            assert_eq!(unmask(&r.text, &r.map), text);
        }
        // A placeholder the map already holds is not masked again, whatever the rule's match.
        let mut map = Vec::new();
        let first = set.redact_into(
            Target::LlmRequest,
            r#"{"password": "Tr0ub4dor&3"}"#,
            &mut map,
        );
        assert_eq!(first, r#"{"password": "[PASSWORD_1]"}"#);
        let again = set.redact_into(Target::LlmRequest, &first, &mut map);
        assert_eq!(again, first);
        assert_eq!(map.len(), 1);
        // A value pattern that does not compile is refused, naming the rule.
        let err = crate::Policy::from_json(&doc("[0-9"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("P-1"), "{err}");
    }

    #[test]
    fn luhn() {
        assert!(luhn_valid("4111 1111 1111 1111"));
        assert!(luhn_valid("4111\u{a0}1111\u{a0}1111\u{a0}1111"));
        assert!(luhn_valid("4111-1111-1111-1111"));
        assert!(luhn_valid("5500005555555559"));
        assert!(luhn_valid("378282246310005"));
        assert!(!luhn_valid("4111 1111 1111 1112"));
        assert!(!luhn_valid("1234"));
        assert!(!luhn_valid("4111x1111 1111 1111"));
    }

    #[test]
    fn iban() {
        assert!(iban_valid("DE89 3704 0044 0532 0130 00"));
        assert!(iban_valid("GB82WEST12345698765432"));
        assert!(iban_valid("fr1420041010050500013m02606"));
        assert!(!iban_valid("DE89 3704 0044 0532 0130 01"));
        assert!(!iban_valid("DE89"));
        assert!(!iban_valid("1289370400440532013000"));
    }

    #[test]
    fn unmask_restores_and_ignores_unknown() {
        let map = vec![
            ("[EMAIL_1]".to_owned(), "a@b.io".to_owned()),
            ("[EMAIL_2]".to_owned(), "c@d.io".to_owned()),
        ];
        assert_eq!(
            unmask("to [EMAIL_2], cc [EMAIL_1] [EMAIL_3] [x", &map),
            "to c@d.io, cc a@b.io [EMAIL_3] [x"
        );
        assert_eq!(unmask("nothing", &map), "nothing");
        assert_eq!(unmask("[[EMAIL_1]]", &map), "[a@b.io]");
        // A multi-byte char right where the search window ends must not panic.
        assert_eq!(unmask("[ééééé] [EMAIL_1]", &map), "[ééééé] a@b.io");
    }

    #[test]
    fn placeholders_are_numbered() {
        assert_eq!(placeholder("EMAIL", 1), "[EMAIL_1]");
        assert_eq!(placeholder("CARD", 20), "[CARD_20]");
        assert_eq!(placeholder("IBAN", 1_234_567), "[IBAN_1234567]");
        assert_eq!(placeholder_label(&placeholder("API_KEY", 3)), "API_KEY");
    }

    /// A letter of another script inside a value does not leave the rest of the value in
    /// clear; the surrounding sentence is not taken in.
    #[test]
    fn look_alike_letters_next_to_a_value_go_with_it() {
        let set = crate::PolicySet::compile(&[email_policy()]).unwrap();
        for (text, want) in [
            ("mail j\u{43e}hn@corp.io now", "mail [EMAIL_1] now"),
            ("mail \u{ff4a}\u{ff4f}hn@corp.io now", "mail [EMAIL_1] now"),
            ("mail \u{e9}mile@corp.io now", "mail [EMAIL_1] now"),
            ("mail ann@corp.io\u{e9}t\u{e9} now", "mail [EMAIL_1] now"),
            // ASCII neighbours: the pattern stopped there on purpose.
            ("mail X.ann@corp.io now", "mail X.[EMAIL_1] now"),
            ("mail ann@corp.io. Then", "mail [EMAIL_1]. Then"),
            // Other scripts are the sentence around the value.
            (
                "\u{79c1}\u{306e}ann@corp.io\u{3067}\u{3059}",
                "\u{79c1}\u{306e}[EMAIL_1]\u{3067}\u{3059}",
            ),
        ] {
            let r = set.redact(crate::Target::LlmRequest, text);
            assert_eq!(r.text, want, "{text}");
            assert_eq!(unmask(&r.text, &r.map), text);
        }
        // Taken in at most 32 characters on a side.
        let long = format!("{}ann@corp.io", "\u{e9}".repeat(40));
        let r = set.redact(crate::Target::LlmRequest, &long);
        assert_eq!(r.text, format!("{}[EMAIL_1]", "\u{e9}".repeat(8)));
    }

    #[test]
    fn literal_placeholders_are_found() {
        let found = literal_placeholders("a [EMAIL_1] b [x] [CARD_22][ [");
        assert!(found.contains("[EMAIL_1]") && found.contains("[CARD_22]"));
        assert_eq!(found.len(), 2);
    }
}
