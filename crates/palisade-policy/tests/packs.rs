//! Every shipped policy pack in `policies/` loads, and every in-file example behaves as declared.

use std::path::PathBuf;

use palisade_policy::{Policy, PolicySet, load_dir};

fn policies_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../policies")
}

fn load_packs() -> Vec<Policy> {
    load_dir(policies_dir()).unwrap_or_else(|e| panic!("loading packs: {e}"))
}

#[test]
fn packs_load_and_compile_together() {
    let packs = load_packs();
    let total: usize = packs.iter().map(|p| p.rules.len()).sum();
    println!("{} packs, {total} rules", packs.len());
    for p in &packs {
        println!("  {:<28} {:>4} rules", p.id, p.rules.len());
    }
    if packs.len() >= 7 {
        assert!(
            total >= 250,
            "the shipped packs hold {total} rules, expected at least 250"
        );
    }
    // The gateway may assign any combination of packs to one proxy: all together must compile.
    let set = PolicySet::compile(&packs).unwrap_or_else(|e| panic!("compiling all packs: {e}"));
    assert_eq!(set.rule_count(), total);
    assert_eq!(set.policies().len(), packs.len());
}

#[test]
fn pack_examples_behave_as_declared() {
    let packs = load_packs();
    let mut failures: Vec<String> = Vec::new();
    let mut checked = 0usize;
    for pack in &packs {
        let set = PolicySet::compile(std::slice::from_ref(pack))
            .unwrap_or_else(|e| panic!("compiling {}: {e}", pack.id));
        for rule in &pack.rules {
            let where_ = format!("{}/{}", pack.id, rule.id);
            if rule.rationale.trim().is_empty() {
                failures.push(format!("{where_}: missing rationale"));
            }
            if rule.examples.positive.is_empty() || rule.examples.negative.is_empty() {
                failures.push(format!(
                    "{where_}: needs at least one positive and one negative example"
                ));
            }
            let target = rule.targets[0];
            for ex in &rule.examples.positive {
                checked += 1;
                let e = set.evaluate(target, ex);
                if !e.matches.iter().any(|m| *m.rule_id == *rule.id) {
                    failures.push(format!(
                        "{where_}: positive example did not match ({target}): {ex:?}"
                    ));
                }
            }
            for ex in &rule.examples.negative {
                checked += 1;
                let e = set.evaluate(target, ex);
                if e.matches.iter().any(|m| *m.rule_id == *rule.id) {
                    failures.push(format!(
                        "{where_}: negative example matched ({target}): {ex:?}"
                    ));
                }
            }
        }
    }
    println!("checked {checked} examples");
    assert!(
        failures.is_empty(),
        "{} pack example failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn schema_is_published_beside_the_packs() {
    let path = policies_dir().join("policy.schema.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let schema: serde_json::Value = serde_json::from_str(&text).expect("schema is JSON");
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    // The schema and the loader agree on the rule fields.
    let props = schema["$defs"]["rule"]["properties"]
        .as_object()
        .expect("rule properties");
    for field in [
        "id",
        "name",
        "category",
        "severity",
        "targets",
        "patterns",
        "allow",
        "action",
        "score",
        "redact",
        "rationale",
        "examples",
    ] {
        assert!(props.contains_key(field), "schema lacks rule field {field}");
    }
}
