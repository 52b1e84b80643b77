//! The declarative TOML config: parsed and validated whole before anything is applied.

use std::path::Path;

use anyhow::{Context, bail};
use palisade_core::model::{PromptSpec, ProxySpec, validate_name};
use palisade_core::oidc::IdentityProviderSpec;
use palisade_core::spend::{GroupSpec, Price};
use palisade_core::webhook::WebhookSpec;
use serde::Deserialize;

/// A parsed, validated config file with secrets resolved.
#[derive(Debug)]
pub struct Config {
    pub proxies: Vec<(ProxySpec, Option<String>)>,
    /// Proxies whose entry says `enabled`: the others keep the run state an administrator gave
    /// them (a proxy stopped during an incident is not restarted by an unrelated reload).
    pub run_state_set: std::collections::HashSet<String>,
    pub groups: Vec<GroupSpec>,
    pub api_keys: Vec<KeyConf>,
    pub prices: Vec<Price>,
    pub prompts: Vec<PromptSpec>,
    /// Alert webhooks with their signing secrets.
    pub webhooks: Vec<(WebhookSpec, Option<String>)>,
    /// OpenID Connect providers with their client secrets.
    pub identity_providers: Vec<(IdentityProviderSpec, String)>,
    pub organization: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    proxies: Vec<toml::Table>,
    #[serde(default)]
    groups: Vec<toml::Table>,
    #[serde(default)]
    api_keys: Vec<KeyConf>,
    #[serde(default)]
    prices: Vec<toml::Table>,
    #[serde(default)]
    prompts: Vec<toml::Table>,
    #[serde(default)]
    webhooks: Vec<toml::Table>,
    #[serde(default)]
    identity_providers: Vec<toml::Table>,
    /// Organisation name for the `{{organization}}` prompt variable.
    #[serde(default)]
    organization: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConf {
    pub name: String,
    pub group: Option<String>,
    /// The key itself, or `env:NAME`.
    pub key: String,
    #[serde(default)]
    pub allowed_proxies: Vec<String>,
    #[serde(default)]
    pub allowed_models: Vec<String>,
    #[serde(default)]
    pub rpm: Option<u32>,
    #[serde(default)]
    pub tpm: Option<u32>,
}

/// Resolves `env:NAME` to the variable's value; other strings are literal.
fn resolve_secret(field: &str, value: &str) -> anyhow::Result<String> {
    match value.strip_prefix("env:") {
        Some(var) => match std::env::var(var) {
            Ok(v) if !v.is_empty() => Ok(v),
            _ => bail!("{field}: environment variable `{var}` is not set"),
        },
        None => Ok(value.to_string()),
    }
}

impl Config {
    /// What the file refers to that it does not define itself: groups of keys and prompts,
    /// proxies of prompts, and policies of proxies that are not among `builtin_policies`. Each
    /// must exist on the gateway the file is applied to.
    pub fn outside_references(&self, builtin_policies: &[String]) -> Vec<Reference> {
        let group_here = |g: &str| self.groups.iter().any(|x| x.name == g);
        let proxy_here = |p: &str| self.proxies.iter().any(|(x, _)| x.name == p);
        let mut refs = Vec::new();
        for k in &self.api_keys {
            if let Some(g) = k.group.as_deref().filter(|g| !group_here(g)) {
                refs.push(Reference::new(
                    format!("api key `{}`", k.name),
                    RefKind::Group,
                    g,
                ));
            }
            for x in k.allowed_proxies.iter().filter(|x| !proxy_here(x)) {
                refs.push(Reference::new(
                    format!("api key `{}`", k.name),
                    RefKind::Proxy,
                    x,
                ));
            }
        }
        for p in &self.prompts {
            for g in p.groups.iter().filter(|g| !group_here(g)) {
                refs.push(Reference::new(
                    format!("prompt `{}`", p.name),
                    RefKind::Group,
                    g,
                ));
            }
            for x in p.proxies.iter().filter(|x| !proxy_here(x)) {
                refs.push(Reference::new(
                    format!("prompt `{}`", p.name),
                    RefKind::Proxy,
                    x,
                ));
            }
        }
        for (spec, _) in &self.proxies {
            for g in spec.allowed_groups.iter().filter(|g| !group_here(g)) {
                refs.push(Reference::new(
                    format!("proxy `{}`", spec.name),
                    RefKind::Group,
                    g,
                ));
            }
            for id in spec
                .policies
                .iter()
                .filter(|id| !builtin_policies.contains(id))
            {
                refs.push(Reference::new(
                    format!("proxy `{}`", spec.name),
                    RefKind::Policy,
                    id,
                ));
            }
        }
        refs
    }
}

/// A name a config file uses without defining it.
#[derive(Debug)]
pub struct Reference {
    /// The entry that uses it (`api key `ci``).
    pub from: String,
    pub kind: RefKind,
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefKind {
    Group,
    Proxy,
    /// A custom policy (built-in packs are always there).
    Policy,
}

impl Reference {
    fn new(from: String, kind: RefKind, name: &str) -> Self {
        Self {
            from,
            kind,
            name: name.to_string(),
        }
    }

    /// `group `x``, `proxy `x``, `custom policy `x``.
    pub fn what(&self) -> String {
        let noun = match self.kind {
            RefKind::Group => "group",
            RefKind::Proxy => "proxy",
            RefKind::Policy => "custom policy",
        };
        format!("{noun} `{}`", self.name)
    }
}

/// Reads and validates a config file.
pub fn load(path: &Path) -> anyhow::Result<Config> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    parse(&text).with_context(|| format!("invalid config file {}", path.display()))
}

/// A TOML error with its line and column but without the line itself: the line may hold a
/// key or a password, and the error goes to logs.
fn syntax_error(text: &str, e: &toml::de::Error) -> anyhow::Error {
    let message = e.message().trim_end();
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            anyhow::anyhow!("line {line}, column {column}: {message}")
        }
        None => anyhow::anyhow!("{message}"),
    }
}

/// Parses and validates config text.
pub fn parse(text: &str) -> anyhow::Result<Config> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| syntax_error(text, &e))?;
    let mut proxies = Vec::new();
    let mut names = std::collections::HashSet::new();
    let mut run_state_set = std::collections::HashSet::new();
    for (i, mut table) in raw.proxies.into_iter().enumerate() {
        let sets_run_state = table.contains_key("enabled");
        let key = match table.remove("upstream_key") {
            None => None,
            Some(toml::Value::String(s)) => {
                Some(resolve_secret(&format!("proxies[{i}].upstream_key"), &s)?)
            }
            Some(_) => bail!("proxies[{i}].upstream_key: must be a string"),
        };
        let spec: ProxySpec = toml::Value::Table(table)
            .try_into()
            .map_err(|e| anyhow::anyhow!("proxies[{i}]: {e}"))?;
        spec.validate()
            .map_err(|e| anyhow::anyhow!("proxies[{i}] ({}): {e}", spec.name))?;
        if !names.insert(spec.name.clone()) {
            bail!("proxies[{i}]: duplicate proxy name `{}`", spec.name);
        }
        if sets_run_state {
            run_state_set.insert(spec.name.clone());
        }
        proxies.push((spec, key));
    }
    let mut groups = Vec::new();
    for (i, table) in raw.groups.into_iter().enumerate() {
        let g: GroupSpec = toml::Value::Table(table)
            .try_into()
            .map_err(|e| anyhow::anyhow!("groups[{i}]: {e}"))?;
        g.validate()
            .map_err(|e| anyhow::anyhow!("groups[{i}] ({}): {e}", g.name))?;
        if groups.iter().any(|x: &GroupSpec| x.name == g.name) {
            bail!("groups[{i}]: duplicate group `{}`", g.name);
        }
        groups.push(g);
    }
    let mut prices = Vec::new();
    for (i, table) in raw.prices.into_iter().enumerate() {
        let p: Price = toml::Value::Table(table)
            .try_into()
            .map_err(|e| anyhow::anyhow!("prices[{i}]: {e}"))?;
        p.validate()
            .map_err(|e| anyhow::anyhow!("prices[{i}] ({}): {e}", p.model))?;
        if prices.iter().any(|x: &Price| x.model == p.model) {
            bail!("prices[{i}]: duplicate price for model `{}`", p.model);
        }
        prices.push(p);
    }
    let mut prompts = Vec::new();
    for (i, table) in raw.prompts.into_iter().enumerate() {
        let p: PromptSpec = toml::Value::Table(table)
            .try_into()
            .map_err(|e| anyhow::anyhow!("prompts[{i}]: {e}"))?;
        p.validate()
            .map_err(|e| anyhow::anyhow!("prompts[{i}] ({}): {e}", p.name))?;
        if prompts.iter().any(|q: &PromptSpec| q.name == p.name) {
            bail!("prompts[{i}]: duplicate prompt `{}`", p.name);
        }
        prompts.push(p);
    }
    let mut webhooks = Vec::new();
    for (i, mut table) in raw.webhooks.into_iter().enumerate() {
        // The URL may be a credential (a chat webhook's path), so it may come from the
        // environment like the secret.
        let secret = match table.remove("secret") {
            None => None,
            Some(toml::Value::String(s)) => {
                let s = resolve_secret(&format!("webhooks[{i}].secret"), &s)?;
                palisade_core::webhook::check_secret(&s)
                    .map_err(|e| anyhow::anyhow!("webhooks[{i}]: {e}"))?;
                Some(s)
            }
            Some(_) => bail!("webhooks[{i}].secret: must be a string"),
        };
        if let Some(toml::Value::String(u)) = table.get("url") {
            let u = resolve_secret(&format!("webhooks[{i}].url"), u)?;
            table.insert("url".into(), toml::Value::String(u));
        }
        let w: WebhookSpec = toml::Value::Table(table)
            .try_into()
            .map_err(|e| anyhow::anyhow!("webhooks[{i}]: {e}"))?;
        w.validate()
            .map_err(|e| anyhow::anyhow!("webhooks[{i}] ({}): {e}", w.name))?;
        if webhooks
            .iter()
            .any(|(x, _): &(WebhookSpec, _)| x.name == w.name)
        {
            bail!("webhooks[{i}]: duplicate webhook `{}`", w.name);
        }
        webhooks.push((w, secret));
    }
    let mut identity_providers: Vec<(IdentityProviderSpec, String)> = Vec::new();
    for (i, mut table) in raw.identity_providers.into_iter().enumerate() {
        let secret = match table.remove("client_secret") {
            Some(toml::Value::String(s)) => {
                resolve_secret(&format!("identity_providers[{i}].client_secret"), &s)?
            }
            Some(_) => bail!("identity_providers[{i}].client_secret: must be a string"),
            None => bail!(
                "identity_providers[{i}].client_secret: required (the secret the provider gave the gateway, e.g. `env:NAME`)"
            ),
        };
        if secret.is_empty() || secret.len() > 1024 || secret.chars().any(char::is_control) {
            bail!("identity_providers[{i}].client_secret: 1 byte to 1 KiB, no control characters");
        }
        let p: IdentityProviderSpec = toml::Value::Table(table)
            .try_into()
            .map_err(|e| anyhow::anyhow!("identity_providers[{i}]: {e}"))?;
        p.validate()
            .map_err(|e| anyhow::anyhow!("identity_providers[{i}] ({}): {e}", p.name))?;
        if identity_providers.iter().any(|(x, _)| x.name == p.name) {
            bail!(
                "identity_providers[{i}]: duplicate identity provider `{}`",
                p.name
            );
        }
        identity_providers.push((p, secret));
    }
    let mut api_keys = Vec::new();
    for (i, k) in raw.api_keys.into_iter().enumerate() {
        validate_name("name", &k.name).map_err(|e| anyhow::anyhow!("api_keys[{i}]: {e}"))?;
        let key = resolve_secret(&format!("api_keys[{i}].key"), &k.key)?;
        if key.len() < 20 {
            bail!("api_keys[{i}].key: must be at least 20 characters");
        }
        if key.trim() != key {
            bail!("api_keys[{i}].key: must not begin or end with spaces (no client could send it)");
        }
        if api_keys.iter().any(|x: &KeyConf| x.name == k.name) {
            bail!("api_keys[{i}]: duplicate key name `{}`", k.name);
        }
        if api_keys.iter().any(|x: &KeyConf| x.key == key) {
            bail!(
                "api_keys[{i}] ({}): the same key as another entry; each entry needs its own key",
                k.name
            );
        }
        palisade_admin::identity::validate_key_options(&palisade_store::KeyOptions {
            allowed_proxies: k.allowed_proxies.clone(),
            allowed_models: k.allowed_models.clone(),
            rpm: k.rpm,
            tpm: k.tpm,
            expires_at: None,
        })
        .map_err(|e| anyhow::anyhow!("api_keys[{i}] ({}): {}", k.name, e.message))?;
        api_keys.push(KeyConf { key, ..k });
    }
    for (i, (p, _)) in proxies.iter().enumerate() {
        if let Some((q, _)) = proxies[..i]
            .iter()
            .find(|(q, _)| palisade_core::model::listens_clash(&q.listen, &p.listen))
        {
            bail!(
                "proxies[{i}] ({}): listens on `{}` like proxy `{}`",
                p.name,
                p.listen,
                q.name
            );
        }
    }
    Ok(Config {
        run_state_set,
        proxies,
        groups,
        api_keys,
        prices,
        prompts,
        webhooks,
        identity_providers,
        organization: raw.organization,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quickstart_example_loads() {
        let text = include_str!("../../../examples/quickstart.toml");
        // SAFETY of test env: the example reads its CI key from the environment.
        let cfg = parse(&text.replace("env:PALISADE_CI_KEY", "pal_example_key_0123456789abcdef"))
            .unwrap();
        assert_eq!(cfg.proxies.len(), 2);
        assert_eq!(cfg.groups[0].name, "engineering");
        assert_eq!(cfg.groups[0].monthly_budget_usd, Some(500.0));
        assert_eq!(cfg.prices[0].model, "mock-gpt");
        assert_eq!(cfg.api_keys[0].group.as_deref(), Some("engineering"));
    }

    #[test]
    fn errors_point_at_the_entry() {
        let e = parse("[[proxies]]\nname='a'\nkind='llm'\nlisten='nope'\nupstream='http://x'\n")
            .unwrap_err();
        assert!(format!("{e:#}").contains("proxies[0]"), "{e:#}");
        assert!(format!("{e:#}").contains("listen"), "{e:#}");
        let e = parse("[[proxies]]\nname='a'\nkind='llm'\nlisten='127.0.0.1:1'\nupstream='http://x'\nbogus=1\n").unwrap_err();
        assert!(format!("{e:#}").contains("bogus"), "{e:#}");
        let e = parse("[[api_keys]]\nname='k'\nkey='env:PALISADE_SURELY_UNSET_VAR'\n").unwrap_err();
        assert!(
            format!("{e:#}").contains("PALISADE_SURELY_UNSET_VAR"),
            "{e:#}"
        );
        assert!(parse("[[nonsense]]\n").is_err());
        let e = parse("[[api_keys]]\nname='k'\nkey='pal_0123456789abcdefghij '\n").unwrap_err();
        assert!(format!("{e:#}").contains("spaces"), "{e:#}");
        let e = parse(
            "[[api_keys]]\nname='k'\nkey='pal_0123456789abcdefghij'\nallowed_proxies=['p','p']\n",
        )
        .unwrap_err();
        assert!(
            format!("{e:#}")
                .contains("api_keys[0] (k): invalid `allowed_proxies[1]`: `p` is listed twice"),
            "{e:#}"
        );
    }

    #[test]
    fn syntax_errors_give_the_place_not_the_line() {
        let text = "[[api_keys]]\nname = 'k'\ngroup = 'g'\nkey = \"pal_LITERAL_fixed_key_zzzz999\" extra\n";
        let e = format!("{:#}", parse(text).unwrap_err());
        assert!(e.contains("line 4"), "{e}");
        assert!(!e.contains("pal_LITERAL"), "{e}");
    }

    #[test]
    fn two_proxies_cannot_share_a_port() {
        let two = |a: &str, b: &str| {
            parse(&format!(
                "[[proxies]]\nname='a'\nkind='llm'\nlisten='{a}'\nupstream='http://x'\n\
                 [[proxies]]\nname='b'\nkind='llm'\nlisten='{b}'\nupstream='http://x'\n"
            ))
        };
        for (a, b) in [
            ("127.0.0.1:9000", "127.0.0.1:9000"),
            ("127.0.0.1:9000", "127.0.0.1:09000"),
            ("0.0.0.0:9000", "127.0.0.1:9000"),
            ("[::ffff:127.0.0.1]:9000", "127.0.0.1:9000"),
        ] {
            let e = two(a, b).unwrap_err();
            assert!(
                format!("{e:#}").contains("like proxy `a`"),
                "{a} {b}: {e:#}"
            );
        }
        assert!(two("127.0.0.1:0", "127.0.0.1:0").is_ok());
        assert!(two("127.0.0.1:9000", "127.0.0.2:9000").is_ok());
    }

    #[test]
    fn references_outside_the_file_are_listed() {
        let cfg = parse(
            "[[api_keys]]\nname='k'\ngroup='g'\nkey='pal_0123456789abcdefghij'\nallowed_proxies=['p']\n",
        )
        .unwrap();
        let refs: Vec<String> = cfg
            .outside_references(&[])
            .iter()
            .map(Reference::what)
            .collect();
        assert_eq!(refs, vec!["group `g`", "proxy `p`"]);
    }
}
