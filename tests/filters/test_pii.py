"""PII redaction on real text: planted addresses and numbers in Wikipedia articles (expected output
built while planting), look-alikes in the Python docs against a reference written with Python ``re``
look-arounds and the ``ipaddress`` module (no masking trick), and bad input."""
from __future__ import annotations

import ipaddress
import random
import re

import polars as pl
import pyarrow.parquet as pq

from engines.executor import LocalExecutor, ShardTask
from filters.pii import PiiRedaction
from schemas.config import ExecutorConfig
from tests.helpers import make_lake, real_texts
from warehouse.lake import Lake

A = re.ASCII
OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
R_EMAIL = re.compile(r"[\w%+-](?:[\w.%+-]{0,63})@(?:[A-Za-z\d](?:[A-Za-z\d-]{0,61}[A-Za-z\d])?\.)+[A-Za-z]{2,24}\b", A)
R_V4 = re.compile(rf"(?<![\w.]){OCTET}(?:\.{OCTET}){{3}}\b", A)
R_V6 = re.compile(r"(?<![\w.:])[0-9A-Fa-f]{1,4}(?:::?[0-9A-Fa-f]{1,4}){1,7}\b", A)
R_PHONE = re.compile(r"""(?<![\w+.\-/])(?:
      \+[1-9]\d{0,2}(?:[ .-]?\(\d{1,4}\)|[ .-]\d{1,5})(?:(?:[ .-]\d{2,8}){2,5}|[ .-]\d{4,8})
    | \+[1-9]\d{9,14}
    | (?:1[ .-])?(?:\([2-9]\d\d\)\x20?[2-9]\d\d[ .-]\d{4} | [2-9]\d\d-[2-9]\d\d-\d{4} | [2-9]\d\d\.[2-9]\d\d\.\d{4})
    )\b""", A | re.X)
VERSION_BEFORE = re.compile(r"(?i)(?:\b(?:version|ver|v|release|rel|build|rev|revision|firmware)\.?:?[ \t]?"
                            r"|[A-Za-z][\w-]*/)\Z", A)
SPECIAL_V4 = [ipaddress.ip_network(n) for n in ("192.0.0.0/24", "240.0.0.0/4", "224.0.0.0/4")]
SPECIAL_V6 = [ipaddress.ip_network(n) for n in ("2001:db8::/32", "fe80::/10", "fc00::/7")]


def _excluded_start(text: str, start: int, reserved: bool) -> bool:
    """The documented exclusions, checked at one candidate position with look-arounds."""
    head = text[start:start + 300]
    if not head[:1].isdigit() and not re.match(r"(?i)(?:2001|fe|f[cd])", head):
        return False
    if re.match(r"\d+(?:[.-]\d+){4,}", head) and not re.search(r"[\w.+]\Z", text[max(0, start - 1):start], A):
        return True  # a long dotted / hyphenated run of numbers
    if re.match(r"\d\.\d\.\d\.\d\b", head, A):
        return True
    if head[:1].isdigit() and VERSION_BEFORE.search(text[max(0, start - 40):start]):
        return True
    if not reserved:
        m = re.match(rf"{OCTET}(?:\.{OCTET}){{3}}\b", head, A)
        if m:
            ip = ipaddress.IPv4Address(m.group(0))
            if not ip.is_global or any(ip in n for n in SPECIAL_V4):
                return True
        if re.match(r"(?i)(?:2001:0?db8|fe[89ab][0-9a-f]|f[cd][0-9a-f]{2}):", head) \
                and not re.search(r"[\w.:+]\Z", text[max(0, start - 1):start], A):
            return True
    return False


def reference(text: str, reserved: bool = False) -> tuple[str, int, int, int]:
    counts = [0, 0, 0]

    def email(m: re.Match) -> str:
        counts[0] += 1
        return "<EMAIL>"

    def v4(m: re.Match) -> str:
        if _excluded_start(m.string, m.start(), reserved):
            return m.group(0)
        counts[1] += 1
        return "<IP_ADDRESS>"

    def v6(m: re.Match) -> str:
        s = m.group(0)
        try:
            ip = ipaddress.IPv6Address(s)
        except ValueError:
            return s
        groups = [g for g in s.split(":") if g]
        ok = ("::" in s and len(groups) >= 3) or ("::" not in s and len(groups) == 8)
        if not ok or not any(c.isdigit() for c in groups[0]) or _excluded_start(m.string, m.start(), reserved):
            return s
        if not reserved and any(ip in n for n in SPECIAL_V6):
            return s
        counts[1] += 1
        return "<IP_ADDRESS>"

    def phone(m: re.Match) -> str:
        if _excluded_start(m.string, m.start(), reserved):
            return m.group(0)
        counts[2] += 1
        return "<PHONE>"

    text = R_EMAIL.sub(email, text)
    text = R_V4.sub(v4, text)
    text = R_V6.sub(v6, text)
    text = R_PHONE.sub(phone, text)
    return text, *counts


# --- planting ------------------------------------------------------------------------------------


def _public_v4(rng: random.Random) -> str:
    while True:
        ip = ipaddress.IPv4Address(rng.getrandbits(32))
        s = str(ip)
        if ip.is_global and not any(ip in n for n in SPECIAL_V4) and any(len(o) > 1 for o in s.split(".")):
            return s


def _public_v6(rng: random.Random) -> str:
    while True:
        groups = [rng.choice([0x2001, 0x2a00, 0x2a02, 0x2604, 0x2803])] + [rng.getrandbits(16) for _ in range(7)]
        if rng.random() < 0.5:  # a run of zero groups: the :: form
            i = rng.randrange(2, 6)
            groups[i:i + rng.randrange(1, 3)] = [0] * 2
            groups = groups[:8]
        ip = ipaddress.IPv6Address(":".join(f"{g:x}" for g in groups))
        s = str(ip) if rng.random() < 0.7 else ip.exploded
        if ip.is_global and not any(ip in n for n in SPECIAL_V6) and not s.startswith(":"):
            return s


def _phone(rng: random.Random) -> str:
    d = lambda k: "".join(rng.choice("0123456789") for _ in range(k))  # noqa: E731
    area, exch = str(rng.randint(200, 999)), str(rng.randint(200, 999))
    return rng.choice([
        f"({area}) {exch}-{d(4)}", f"{area}-{exch}-{d(4)}", f"{area}.{exch}.{d(4)}", f"1-{area}-{exch}-{d(4)}",
        f"+1 {area} {exch} {d(4)}", f"+44 20 {d(4)} {d(4)}", f"+33 {rng.randint(1, 9)} {d(2)} {d(2)} {d(2)} {d(2)}",
        f"+49 30 {d(7)}", f"+81 3-{d(4)}-{d(4)}", f"+4915{d(9)}",
    ])


def _email(rng: random.Random, words: list[str]) -> str:
    local = rng.choice(words).lower() + rng.choice([".", "_", ""]) + rng.choice(words).lower() + str(rng.randint(1, 99))
    return local + "@" + rng.choice(["example.org", "mail.example.co.uk", "uni-bonn.de", "post.cz", "aol.com"])


def plant(texts: list[str], seed: int = 7) -> tuple[list[str], list[str], list[tuple[int, int, int]]]:
    """Insert PII after sentence ends; returns texts, the texts as they must come out, and counts."""
    rng = random.Random(seed)
    out, expected, counts = [], [], []
    for text in texts:
        words = [w for w in re.findall(r"[A-Za-z]{3,}", text)] or ["anna"]
        parts = re.split(r"(?<=\. )", text)
        got, want = [], []
        c = [0, 0, 0]
        for part in parts:
            got.append(part)
            want.append(part)
            if part.endswith(". ") and rng.random() < 0.4:
                kind = rng.randrange(4)
                if kind == 0:
                    value, token, k = _email(rng, words), "<EMAIL>", 0
                elif kind == 1:
                    value, token, k = _public_v4(rng), "<IP_ADDRESS>", 1
                elif kind == 2:
                    value, token, k = _public_v6(rng), "<IP_ADDRESS>", 1
                else:
                    value, token, k = _phone(rng), "<PHONE>", 2
                lead = rng.choice(["Contact: ", "Write to ", "Host ", "Call ", "See (", "At "])
                tail = ")" if lead.endswith("(") else rng.choice([".", ",", " today.", ";"])
                got.append(f"{lead}{value}{tail} ")
                want.append(f"{lead}{token}{tail} ")
                c[k] += 1
        out.append("".join(got))
        expected.append("".join(want))
        counts.append(tuple(c))
    return out, expected, counts


# --- tests ---------------------------------------------------------------------------------------


def _resolved(out: pl.DataFrame, texts: list[str]) -> pl.DataFrame:
    """``text_redacted`` as readers see it: the text itself where nothing was redacted (null)."""
    return out.with_columns(pl.col("text_redacted").fill_null(pl.Series(texts)))


def test_planted_pii_in_wikipedia_through_the_executor(tmp_path, corpora):
    texts, expected, counts = plant(real_texts(corpora, "wiki_en", 300) + real_texts(corpora, "wiki_fr", 100))
    assert sum(c[0] for c in counts) > 30 and sum(c[1] for c in counts) > 60 and sum(c[2] for c in counts) > 30
    make_lake(tmp_path, {"wiki": [texts[:200], texts[200:]]})
    lake = Lake(str(tmp_path))
    stage = PiiRedaction()
    tasks = [ShardTask("wiki", p, lake.annotation_path(stage.key("pii"), p)) for p in lake.raw_shards("wiki")]
    with LocalExecutor(ExecutorConfig(workers=1, batch_rows=64), show_progress=False) as ex:
        results = ex.run_stage("pii", stage, tasks)
    assert {r.status for r in results} == {"computed"} and sum(r.row_errors for r in results) == 0
    got = [r for t in tasks for r in pq.read_table(t.out_path).to_pylist()]
    # null where nothing was redacted (stored once): readers resolve it with the text
    assert [r["text_redacted"] is None for r in got] == [e == t for e, t in zip(expected, texts)]
    assert [t if r["text_redacted"] is None else r["text_redacted"] for r, t in zip(got, texts)] == expected
    assert [(r["pii_email"], r["pii_ip"], r["pii_phone"]) for r in got] == counts
    # the look-around reference agrees on every document, planted or not
    assert [reference(t) for t in texts] == [(e, *c) for e, c in zip(expected, counts)]


def test_python_docs_lookalikes_match_the_reference(full_corpora):
    """Version strings, dates, times, slices, ISBN-like and documentation addresses in real docs
    (all 497 pages: the counts below are theirs)."""
    docs = real_texts(full_corpora, "python_docs", 497)
    out = _resolved(PiiRedaction().transform(pl.DataFrame({"text": docs})), docs)
    ref = [reference(t) for t in docs]
    assert out.get_column("text_redacted").to_list() == [r[0] for r in ref]
    assert out.select("pii_email", "pii_ip", "pii_phone").rows() == [r[1:] for r in ref]
    joined = "\n".join(out.get_column("text_redacted").to_list())
    for lookalike in ("GCC 2.7.2.2", "'192.0.2.1'", "2001:DB8::1", "Firefox/2.0.0.11", "127.0.0.1", "00:53:55",
                      "[1:3:5]"):
        assert lookalike in joined, lookalike
    totals = out.select(pl.col("pii_email", "pii_ip", "pii_phone").sum()).row(0)
    assert totals[0] >= 300 and 10 <= totals[1] <= 60 and 10 <= totals[2] <= 30
    # with reserved addresses redacted too, the documentation addresses go
    loud = _resolved(PiiRedaction({"redact_reserved_ips": True}).transform(pl.DataFrame({"text": docs})), docs)
    ref_loud = [reference(t, reserved=True) for t in docs]
    assert loud.get_column("text_redacted").to_list() == [r[0] for r in ref_loud]
    assert loud.get_column("pii_ip").sum() > out.get_column("pii_ip").sum() + 50


def test_shapes_and_guards():
    cases = {
        "mail anna.k@mail.example.co.uk, not x@y.z or pkg@1.2.3": ("mail <EMAIL>, not x@y.z or pkg@1.2.3", 1, 0, 0),
        "hosts 93.184.216.34; 256.1.1.1 01.2.3.4 1.2.3.4.5 version 10.20.30.40 v 10.20.30.41 8.8.8.8":
            ("hosts <IP_ADDRESS>; 256.1.1.1 01.2.3.4 1.2.3.4.5 version 10.20.30.40 v 10.20.30.41 8.8.8.8", 0, 1, 0),
        "at 2a00:1450:4007:80e::200e and 2001:db8::1, fe80::1, x[1::2], 12:30:45, add::bad":
            ("at <IP_ADDRESS> and 2001:db8::1, fe80::1, x[1::2], 12:30:45, add::bad", 0, 1, 0),
        "call (555) 234-5678, 555-234-5678, +44 20 7946 0958; not 2021-03-15, 555-1234, 978-0-306-40615-7, +3 10 20":
            ("call <PHONE>, <PHONE>, <PHONE>; not 2021-03-15, 555-1234, 978-0-306-40615-7, +3 10 20", 0, 0, 3),
        "server 10.0.0.1 and 192.168.1.20": ("server 10.0.0.1 and 192.168.1.20", 0, 0, 0),
    }
    out = PiiRedaction().transform(pl.DataFrame({"text": list(cases)}))
    assert out.get_column("text_redacted").to_list()[-1] is None  # nothing to redact: null, not a copy
    assert _resolved(out, list(cases)).rows() == list(cases.values())
    assert [reference(t) for t in cases] == list(cases.values())


def test_max_pii_makes_it_a_filter(corpora):
    texts, _, counts = plant(real_texts(corpora, "wiki_es", 80), seed=3)
    st = PiiRedaction({"max_pii": 1})
    assert set(st.writes()) == {"text_redacted", "pii_email", "pii_ip", "pii_phone", "keep", "reason"}
    out = st.transform(pl.DataFrame({"text": texts}))
    assert out.get_column("keep").to_list() == [sum(c) <= 1 for c in counts]
    assert out.get_column("reason").to_list() == [None if sum(c) <= 1 else "too_much_pii" for c in counts]
    assert "keep" not in PiiRedaction().writes()


def test_bad_input_has_defined_verdicts(corpora):
    en = real_texts(corpora, "wiki_en", 300)
    one_line = " ".join(t.replace("\n", " ") for t in en)
    big = ((one_line + " ") * (50_000_000 // (len(one_line) + 1) + 1))[:50_000_000]
    cut = len(big) // 2
    big = big[:1000] + " mail a.b@example.org " + big[1000:cut] + " host 93.184.216.34 call +44 20 7946 0958 " + big[cut:]
    fr = real_texts(corpora, "wiki_fr", 2)
    texts = ["", "   \n\t ", fr[0] + " \ufffd\ufffd a@b.example.com \ufffd", "Привет 93.184.216.34 東京 x@y.jp",
             "a\ufdd0b 1.2.3.4", "<EMAIL> already redacted, <PHONE> too", big, None]
    out = PiiRedaction().transform(pl.DataFrame({"text": texts}, schema={"text": pl.String}))
    assert out.get_column("text_redacted").is_null().to_list() == [True, True, False, False, False, True, False, False]
    rows = _resolved(out, [t or "" for t in texts]).rows()
    assert rows[0] == ("", 0, 0, 0) and rows[1] == ("   \n\t ", 0, 0, 0) and rows[7] == ("", 0, 0, 0)
    assert rows[2] == (fr[0] + " \ufffd\ufffd <EMAIL> \ufffd", 1, 0, 0)
    assert rows[3] == ("Привет <IP_ADDRESS> 東京 <EMAIL>", 1, 1, 0)
    assert rows[4] == ("ab 1.2.3.4", 0, 0, 0)  # the internal sentinel U+FDD0 is dropped (documented)
    assert rows[5] == ("<EMAIL> already redacted, <PHONE> too", 0, 0, 0)
    redacted, n_email, n_ip, n_phone = rows[6]
    assert (n_email, n_ip, n_phone) == (1, 1, 1)
    assert len(redacted) == len(big) - len("a.b@example.org") + 7 - len("93.184.216.34") + 12 - len("+44 20 7946 0958") + 7
    assert redacted.startswith(big[:1000] + " mail <EMAIL> ")
