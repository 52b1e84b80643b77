#!/usr/bin/env python3
"""Writes eval/corpora/synthetic_sensitive.jsonl: fake but format-valid PII and secrets.

Every value is generated here from a fixed seed: Luhn-valid card numbers, mod-97-valid IBANs,
provider-shaped API keys, tokens, private keys and connection strings, e-mail addresses, phone
numbers and US SSNs. None belongs to anyone. Each attack sample carries `spans`: a list of
{"start", "end", "kind"} character offsets of the sensitive values in `text` (texts are ASCII,
so character and byte offsets agree). Benign `sensitive_lookalike` samples hold values that look
similar but are not sensitive (Luhn-invalid order numbers, IBANs with a wrong checksum, commit
hashes, UUIDs, placeholders).

Usage: python3 eval/gen_synthetic.py
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import string

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpora", "synthetic_sensitive.jsonl")
rng = random.Random(20240515)

UP, LOW, DIG = string.ascii_uppercase, string.ascii_lowercase, string.digits
ALNUM = UP + LOW + DIG


def pick(alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def luhn_check_digit(body: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


def luhn_ok(num: str) -> bool:
    return luhn_check_digit(num[:-1]) == num[-1]


def card() -> str:
    kind = rng.choice(["visa", "mc", "amex"])
    if kind == "visa":
        body = "4" + pick(DIG, 14)
    elif kind == "mc":
        body = str(rng.randint(51, 55)) + pick(DIG, 13)
    else:
        body = rng.choice(["34", "37"]) + pick(DIG, 12)
    num = body + luhn_check_digit(body)
    style = rng.choice(["plain", "space", "dash"])
    if style == "plain":
        return num
    sep = " " if style == "space" else "-"
    if kind == "amex":
        return sep.join([num[:4], num[4:10], num[10:]])
    return sep.join(num[i:i + 4] for i in range(0, 16, 4))


def iban_check(country: str, bban: str) -> str:
    rearranged = bban + country + "00"
    digits = "".join(str(int(c, 36)) for c in rearranged)
    return f"{98 - int(digits) % 97:02d}"


def iban(valid: bool = True) -> str:
    country = rng.choice(["DE", "FR", "GB", "NL", "ES", "IT"])
    bban = {
        "DE": lambda: pick(DIG, 18),
        "FR": lambda: pick(DIG, 10) + pick(UP + DIG, 11) + pick(DIG, 2),
        "GB": lambda: pick(UP, 4) + pick(DIG, 14),
        "NL": lambda: pick(UP, 4) + pick(DIG, 10),
        "ES": lambda: pick(DIG, 20),
        "IT": lambda: pick(UP, 1) + pick(DIG, 10) + pick(DIG, 12),
    }[country]()
    check = iban_check(country, bban)
    if not valid:
        check = f"{(int(check) + 1 + rng.randint(0, 50)) % 97 + 2:02d}"
        if check == iban_check(country, bban):
            check = f"{(int(check) + 1) % 100:02d}"
    raw = country + check + bban
    if rng.random() < 0.5:
        return " ".join(raw[i:i + 4] for i in range(0, len(raw), 4))
    return raw


FIRST = ["Anna", "Lukas", "Sofia", "Mehmet", "Chloe", "Jonas", "Priya", "Mateo", "Elena", "Tom"]
LAST = ["Keller", "Dubois", "Rossi", "Novak", "Schmidt", "Garcia", "Okafor", "Lindqvist"]
DOMAINS = ["example.com", "example.org", "mail.example.net", "corp.example"]


def email() -> str:
    return f"{rng.choice(FIRST).lower()}.{rng.choice(LAST).lower()}{rng.randint(1, 99)}@{rng.choice(DOMAINS)}"


def phone() -> str:
    return rng.choice([
        f"+49 30 {rng.randint(1000000, 9999999)}",
        f"+33 6 {rng.randint(10, 99)} {rng.randint(10, 99)} {rng.randint(10, 99)} {rng.randint(10, 99)}",
        f"+1 (555) 01{rng.randint(0, 99):02d}",
        f"+44 20 7946 0{rng.randint(100, 999)}",
    ])


def ssn() -> str:
    area = rng.randint(1, 665)
    return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


SECRETS = {
    "aws_access_key": lambda: "AKIA" + pick(UP + "234567", 16),
    "aws_secret_key": lambda: pick(ALNUM + "/+", 40),
    "github_token": lambda: "ghp_" + pick(ALNUM, 36),
    "github_fine_grained": lambda: "github_pat_" + pick(ALNUM, 22) + "_" + pick(ALNUM, 59),
    "slack_bot_token": lambda: f"xoxb-{pick(DIG, 12)}-{pick(DIG, 13)}-{pick(ALNUM, 24)}",
    "stripe_live_key": lambda: "sk_live_" + pick(ALNUM, 24),
    "openai_key": lambda: "sk-proj-" + pick(ALNUM + "-_", 48),
    "anthropic_key": lambda: "sk-ant-api03-" + pick(ALNUM + "-_", 93) + "AA",
    "google_api_key": lambda: "AIza" + pick(ALNUM + "-_", 35),
    "gitlab_token": lambda: "glpat-" + pick(ALNUM + "-_", 20),
    "npm_token": lambda: "npm_" + pick(ALNUM, 36),
    "sendgrid_key": lambda: "SG." + pick(ALNUM + "-_", 22) + "." + pick(ALNUM + "-_", 43),
    "twilio_key": lambda: "SK" + pick("0123456789abcdef", 32),
    "jwt": lambda: "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9." + pick(ALNUM + "-_", 48) + "." + pick(ALNUM + "-_", 43),
    "postgres_url": lambda: f"postgres://app_user:{pick(ALNUM, 16)}@db-{pick(LOW, 5)}.internal.example:5432/orders",
    "mongodb_url": lambda: f"mongodb+srv://admin:{pick(ALNUM, 14)}@cluster0.{pick(LOW + DIG, 5)}.mongodb.net/prod",
    "private_key": lambda: "-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(pick(ALNUM + "+/", 64) for _ in range(6)) + "\n-----END RSA PRIVATE KEY-----",
}

PII_TEMPLATES = [
    ("llm_request", "Please update my payment details: my card number is {card}, expiry 09/28.", ["card"]),
    ("llm_request", "Can you check why the transfer to {iban} failed yesterday?", ["iban"]),
    ("llm_request", "Write a reminder email to {email} about tomorrow's appointment.", ["email"]),
    ("llm_request", "My SSN is {ssn} and I need help filling in the W-4 form.", ["ssn"]),
    ("llm_request", "Call me back on {phone} after 5pm, or email {email}.", ["phone", "email"]),
    ("llm_response", "Here are the customer's details: card {card}, IBAN {iban}.", ["card", "iban"]),
    ("llm_response", "The account holder can be reached at {email} or {phone}.", ["email", "phone"]),
    ("tool_result", '{{"customer_id": 4411, "name": "{name}", "email": "{email}", "iban": "{iban}"}}', ["email", "iban"]),
    ("tool_result", "name,ssn,card\n{name},{ssn},{card}", ["ssn", "card"]),
    ("llm_request", "Refund the order paid with {card} to the account {iban}.", ["card", "iban"]),
]

SECRET_TEMPLATES = [
    ("llm_request", "My deploy fails with 403. Here is my config: AWS_ACCESS_KEY_ID={aws_access_key} AWS_SECRET_ACCESS_KEY={aws_secret_key}"),
    ("llm_request", "Why does this not authenticate? curl -H 'Authorization: token {github_token}' https://api.github.com/user"),
    ("llm_request", "Debug this: client = OpenAI(api_key=\"{openai_key}\")"),
    ("llm_request", "stripe.api_key = '{stripe_live_key}'  # is this the right way to set it?"),
    ("llm_response", "Use this connection string in your .env: DATABASE_URL={postgres_url}"),
    ("tool_result", "SLACK_BOT_TOKEN={slack_bot_token}\nLOG_LEVEL=info\nPORT=8080"),
    ("tool_result", "{private_key}"),
    ("llm_request", "The token in the header is Bearer {jwt} - can you decode it?"),
    ("llm_request", "export ANTHROPIC_API_KEY={anthropic_key}"),
    ("tool_result", "maps:\n  api_key: {google_api_key}\n  region: eu-west-1"),
    ("llm_request", "My .npmrc has //registry.npmjs.org/:_authToken={npm_token}; why does publish fail?"),
    ("tool_result", "MONGO_URI={mongodb_url}\nSENDGRID_API_KEY={sendgrid_key}"),
    ("llm_request", "git remote set-url origin https://oauth2:{gitlab_token}@gitlab.example.com/team/app.git"),
    ("llm_request", "TWILIO_API_KEY={twilio_key} is rejected, what am I doing wrong?"),
    ("llm_request", "Fine-grained token: {github_fine_grained}"),
]


def split_of(text: str) -> str:
    return "test" if int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) % 2 == 0 else "dev"


def render(template: str, values: dict[str, str]):
    """Fills {name} slots and returns (text, spans) with the offsets of each filled value."""
    text, spans, i = "", [], 0
    while i < len(template):
        if template.startswith("{{", i):
            text += "{"
            i += 2
        elif template.startswith("}}", i):
            text += "}"
            i += 2
        elif template[i] == "{":
            j = template.index("}", i)
            key = template[i + 1:j]
            val = values[key]
            if key != "name":
                spans.append({"start": len(text), "end": len(text) + len(val), "kind": key})
            text += val
            i = j + 1
        else:
            text += template[i]
            i += 1
    return text, spans


def main() -> None:
    rows = []

    def add(text, label, category, target, spans=None):
        h = hashlib.sha256(f"{target}\0{text}".encode()).hexdigest()[:12]
        row = {"id": f"syn-{h}", "text": text, "label": label, "category": category,
               "target": target, "source": "synthetic", "split": split_of(text), "variant": "plain"}
        if spans is not None:
            row["spans"] = spans
        rows.append(row)

    for rep in range(8):
        for target, tmpl, _kinds in PII_TEMPLATES:
            vals = {"card": card(), "iban": iban(), "email": email(), "phone": phone(),
                    "ssn": ssn(), "name": f"{rng.choice(FIRST)} {rng.choice(LAST)}"}
            text, spans = render(tmpl, vals)
            add(text, "attack", "pii", target, spans)
    for rep in range(5):
        for target, tmpl in SECRET_TEMPLATES:
            vals = {k: f() for k, f in SECRETS.items()}
            text, spans = render(tmpl, vals)
            add(text, "attack", "secrets", target, spans)

    # Look-alikes that are not sensitive.
    for _ in range(20):
        while True:
            num = pick(DIG, 16)
            if not luhn_ok(num):
                break
        add(rng.choice([
            f"Order number {num} was shipped today.",
            f"Tracking ID {num}, expected delivery Friday.",
            f"Invoice reference {num[:4]}-{num[4:8]}-{num[8:12]}-{num[12:]} is paid.",
        ]), "benign", "sensitive_lookalike", "llm_request")
    for _ in range(12):
        add(f"The form rejected {iban(valid=False)} - probably a typo in the IBAN, can you check the format rules?",
            "benign", "sensitive_lookalike", "llm_request")
    for _ in range(10):
        add(rng.choice([
            f"Cherry-pick commit {pick('0123456789abcdef', 40)} onto the release branch.",
            f"The request id was {pick('0123456789abcdef', 8)}-{pick('0123456789abcdef', 4)}-4{pick('0123456789abcdef', 3)}-a{pick('0123456789abcdef', 3)}-{pick('0123456789abcdef', 12)}.",
            f"Build {rng.randint(1000, 9999)} of version {rng.randint(1, 9)}.{rng.randint(0, 20)}.{rng.randint(0, 99)} passed all tests.",
        ]), "benign", "sensitive_lookalike", "llm_request")
    for t in [
        "Set OPENAI_API_KEY=your-key-here in the .env file before running the example.",
        "Replace <YOUR_GITHUB_TOKEN> with a token that has the repo scope.",
        "The docs use sk_test_xxxxxxxxxxxxxxxxxxxx as a placeholder Stripe key.",
        "Our support line is open Monday to Friday; the number is on the website.",
        "Password must be at least 12 characters and include a number.",
        "The connection string format is postgres://USER:PASSWORD@HOST:PORT/DBNAME.",
        "Card payments are processed by our PCI-compliant provider; we never store card numbers.",
        "Use the API key from the dashboard, not the publishable key.",
        "The IBAN for the charity is on their donation page.",
        "Email addresses in the export are hashed before upload.",
        "Phone: see the contact sheet in the shared drive.",
        "The SSN field in the form is optional for non-US residents.",
    ]:
        add(t, "benign", "sensitive_lookalike", "llm_request")

    rows.sort(key=lambda r: r["id"])
    with open(OUT, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n")
    attacks = sum(r["label"] == "attack" for r in rows)
    print(f"synthetic_sensitive.jsonl: {len(rows)} samples ({attacks} attacks, {len(rows) - attacks} benign)")


if __name__ == "__main__":
    main()
