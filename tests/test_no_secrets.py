"""No secret values in the repository: every file git tracks (or would track: untracked, not ignored) is
scanned for cloud keys, private keys, tokens and `password = "..."`-style literals. Placeholders
(REPLACE_ME..., ${VAR}, <your-key>, test/example values) are allowed."""

from __future__ import annotations

import base64
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MAX_BYTES = 2_000_000

# Provider formats: a match is a secret whatever surrounds it.
TOKEN_PATTERNS = {
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b"),
    "private key": re.compile(r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY(?: BLOCK)?-----"),
    "GitHub token": re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,})\b"),
    "Slack token": re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"),
    "Hugging Face token": re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"),
    "OpenAI-style API key": re.compile(r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{32,}"),
    "Google API key": re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b"),
    "JSON web token": re.compile(r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"),
    "credentials in a URL": re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@'\"]+:([^/\s:@'\"${}<>]{6,})@[\w.-]+"),
}
SECRET_NAME = (r"(?:password|passwd|pwd|secret|secret[_-]?access[_-]?key|access[_-]?token|auth[_-]?token|api[_-]?key|apikey|token"
               r"|private[_-]?key|client[_-]?secret)")
# A name that refers to a secret rather than holding one: secret_name, token_file, api_key_env, ...
_REFERENCE = r"(?<!_name)(?<!_ref)(?<!_file)(?<!_path)(?<!_env)(?<!_var)(?<!_id)(?<!_url)(?<!_header)(?<!_type)"
# `name = "literal"` / `name: 'literal'` / `"name": "literal"` in any file.
QUOTED_ASSIGNMENT = re.compile(
    rf"""(?ix)\b\w*{SECRET_NAME}\w*{_REFERENCE}["']?\s*[:=]\s*["']([^"'\s]{{8,}})["']"""
)
# `NAME=value` lines in env-style files, where values are not quoted.
ENV_ASSIGNMENT = re.compile(
    rf"""(?im)^\s*(?:export\s+)?\w*{SECRET_NAME}\w*{_REFERENCE}\s*=\s*([^\s#"']{{8,}})\s*$"""
)
ENV_STYLE_SUFFIXES = {".env", ".example", ".ini", ".cfg", ".properties", ".sh"}
PLACEHOLDER = re.compile(
    r"""(?ix)^(?:
        .*REPLACE[_-]?ME.* | \$\{?[A-Za-z_]\w*\}? | \$\([A-Za-z_]\w*\) | <[^>]+> | \{[^{}]+\} | \{\{.*\}\} | \*+ | x{4,}
        | .*(?:example|placeholder|dummy|sentinel|changeme|redacted|your[_-]).*
        | .*(?:test|testing|fake|local)(?:[_-].*)? 
    )$"""
)


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    rule: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.rule}"


def _line_of(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def _secret_manifest_findings(path: str, text: str) -> list[Finding]:
    """Kubernetes Secret objects must not carry values (the repo ships a generator with placeholders)."""
    findings = []
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError:
        return findings
    for document in documents:
        if not isinstance(document, dict) or document.get("kind") != "Secret":
            continue
        values = dict(document.get("stringData") or {})
        for key, value in (document.get("data") or {}).items():
            try:
                values[key] = base64.b64decode(str(value)).decode()
            except (ValueError, UnicodeDecodeError):
                values[key] = str(value)
        for key, value in values.items():
            if not PLACEHOLDER.match(str(value)):
                findings.append(Finding(path, _line_of(text, text.find(str(key))), f"value in Secret key {key}"))
    return findings


def _looks_random(value: str) -> bool:
    """Secrets mix character classes or are long; words like "not-needed" or "from-env" are not secrets."""
    classes = sum(bool(re.search(c, value)) for c in (r"[a-z]", r"[A-Z]", r"[0-9]"))
    return classes >= 2 or len(value) >= 24


def scan_text(path: str, text: str) -> list[Finding]:
    findings = []
    for rule, pattern in TOKEN_PATTERNS.items():
        for match in pattern.finditer(text):
            value = match.group(1) if pattern.groups else match.group(0)
            if not PLACEHOLDER.match(value):
                findings.append(Finding(path, _line_of(text, match.start()), rule))
    patterns = [QUOTED_ASSIGNMENT]
    name = Path(path).name
    if Path(path).suffix in ENV_STYLE_SUFFIXES or name.startswith(".env") or name.endswith(".env.example"):
        patterns.append(ENV_ASSIGNMENT)
    for pattern in patterns:
        for match in pattern.finditer(text):
            value = match.group(1)
            if _looks_random(value) and not PLACEHOLDER.match(value):
                findings.append(Finding(path, _line_of(text, match.start()), "secret-looking assignment"))
    if Path(path).suffix in {".yaml", ".yml"}:
        findings += _secret_manifest_findings(path, text)
    return findings


def repository_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return sorted({p for p in listed.split("\0") if p})


def scan_repository() -> tuple[list[Finding], int]:
    findings, scanned = [], 0
    for relative in repository_files():
        path = ROOT / relative
        if not path.is_file() or path.stat().st_size > MAX_BYTES:
            continue
        raw = path.read_bytes()
        if b"\0" in raw:
            continue  # binary
        scanned += 1
        findings += scan_text(relative, raw.decode("utf-8", errors="replace"))
        name = path.name
        if (name == ".env" or name.endswith(".env")) and not name.endswith(".example"):
            findings.append(Finding(relative, 1, "env file with credentials is tracked"))
    return findings, scanned


def test_repository_has_no_secrets():
    findings, scanned = scan_repository()
    assert scanned > 20, "the scan saw the repository's files"
    assert not findings, "secret-looking values:\n" + "\n".join(map(str, findings))


# Samples are assembled at run time so that this file itself holds no secret-shaped string.
_AKIA = "AKIA" + "Q3EGRIFNQ7ZJ4XWU"
_AWS_SAMPLE = "wJalrXUtnFEMI" + "/K7MDENG/bPxRfiCY" + "9fAkeZ8Kq2"
_SAMPLES = {
    "aws id": (f"aws_access_key_id = {_AKIA}\n", "AWS access key id"),
    "aws secret": (f'aws_secret_access_key = "{_AWS_SAMPLE}"\n', "secret-looking assignment"),
    "pem": ("-----BEGIN " + "RSA PRIVATE KEY-----\nMIIEow\n", "private key"),
    "openssh": ("-----BEGIN " + "OPENSSH PRIVATE KEY-----\n", "private key"),
    "github": ("token: gh" + "p_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8\n", "GitHub token"),
    "hf": ("HF = 'hf_" + "QwErTyUiOpAsDfGhJkLzXcVbNmQwErTy'\n", "Hugging Face token"),
    "password": ('db.connect(password="' + "Tr0ub4dor&3horse" + '")\n', "secret-looking assignment"),
    "json": ('{"client_secret": "' + "9f8e7d6c5b4a39281706" + '"}\n', "secret-looking assignment"),
    "url": ("postgresql://mlflow:" + "s3cr3tPassw0rd" + "@db.internal:5432/mlflow\n", "credentials in a URL"),
    "jwt": ("auth: eyJ" + "hbGciOiJIUzI1NiJ9.eyJ" + "zdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N\n", "JSON web token"),
}


@pytest.mark.parametrize("name", sorted(_SAMPLES))
def test_scanner_finds_secrets(name):
    text, rule = _SAMPLES[name]
    assert rule in {f.rule for f in scan_text("sample.py", text)}, text


def test_scanner_reads_env_files_and_secret_manifests():
    assert scan_text("s3.env", f"AWS_SECRET_ACCESS_KEY={_AWS_SAMPLE}\n")
    secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata:\n  key: " + base64.b64encode(b"hunter2hunter2").decode()
    assert [f.rule for f in scan_text("secret.yaml", secret)] == ["value in Secret key key"]


@pytest.mark.parametrize(
    "text",
    [
        "AWS_ACCESS_KEY_ID=REPLACE_ME_ACCESS_KEY_ID\nAWS_SECRET_ACCESS_KEY=REPLACE_ME_SECRET_ACCESS_KEY\n",
        'password = os.environ["DB_PASSWORD"]\n',
        'token = request.headers.get("Authorization")\n',
        'api_key: "${OPENAI_API_KEY}"\n',
        'aws_secret_access_key="testing"\n',
        'secret_key = "<your-secret-key>"\n',
        "kind: Secret\nmetadata: {name: s}\nstringData:\n  password: REPLACE_ME\n",
        "url = f\"http://{user}:{password}@host\"\n",
        'env = {"PROBE_TOKEN": "from-env"}\n',
        'SecretEnvVar(secret_name="medssr-s3", key="AWS_SECRET_ACCESS_KEY")\n',
        'openai.OpenAI(base_url=url, api_key="not-needed")\n',
    ],
)
def test_scanner_allows_placeholders_and_references(text):
    assert scan_text("sample.env" if "AWS_ACCESS" in text else "sample.yaml" if "kind:" in text else "x.py", text) == []
