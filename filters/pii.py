"""``pii``: find and redact e-mail addresses, IP addresses and phone numbers (regex, vectorised).

Writes ``text_redacted`` (the text with each finding replaced by ``<EMAIL>``, ``<IP_ADDRESS>`` or
``<PHONE>``; null where nothing was replaced, see engines/derived_text.py) and the counts
``pii_email``, ``pii_ip``, ``pii_phone``. Not a filter by default; with ``max_pii: N`` it also
writes ``keep``/``reason`` (``too_much_pii`` when the three counts sum above N).

Every pattern is a Rust regex run by Polars over the whole column (``str.replace_all``): no Python
loop over documents. Word boundaries and "not preceded by" guards are ASCII (``[^A-Za-z0-9_]``):
what is looked for is ASCII, and ASCII boundaries spare the regex engine Unicode word tables.

What is found, and the guards against look-alikes:

- **E-mail**: ``local@label.label.tld``; the local part starts with a letter, digit or ``_%+-`` (at
  most 64 characters), domain labels do not start or end with ``-``, the TLD is 2-24 ASCII letters
  followed by a word boundary (so ``pkg@1.2.3`` or ``a@b.c`` are not addresses). ASCII only.
- **IPv4**: four dotted decimal octets, each 0-255 without leading zeros, not preceded by a letter,
  digit, ``_`` or ``.``, and not followed by a word character. Not redacted (and not counted):
    * runs of five or more numbers joined by ``.`` or ``-`` (``1.3.6.1.4.1``, ``3.11.0.1.2``): OIDs,
      version strings (not after a ``+``, which starts a phone number);
    * a quad of single digits (``2.7.2.2``, ``1.2.3.4``): nearly always a version; the only real
      addresses of that shape are public DNS resolvers (``8.8.8.8``), which identify nobody;
    * a quad right after ``version``, ``ver``, ``v``, ``release``, ``rel``, ``build``, ``rev``,
      ``revision`` or ``firmware`` (case-insensitive, optional ``.``/``:`` and one space), or right
      after a product token and a slash (``Firefox/2.0.0.11``, ``Mozilla/5.0``; ``http://`` is not one);
    * unless ``redact_reserved_ips``: addresses that cannot identify a host on the internet:
      unspecified/this-network ``0/8``, private ``10/8``, ``172.16/12``, ``192.168/16``, shared
      ``100.64/10``, loopback ``127/8``, link-local ``169.254/16``, documentation ``192.0.2/24``,
      ``198.51.100/24``, ``203.0.113/24``, IETF ``192.0.0/24``, benchmarking ``198.18/15``,
      multicast and reserved ``224/3``.
- **IPv6**: eight colon-separated groups of 1-4 hex digits, or the ``::`` short form with at least
  three groups; the first group must contain a decimal digit (so ``add::bad`` or ``face::`` are
  words, and ``x[1::2]`` is a Python slice, not an address). Forms starting with ``::`` (``::1``) are
  not matched (an embedded IPv4 tail is, as IPv4). Unless ``redact_reserved_ips``, documentation
  ``2001:db8::/32``, link-local ``fe80::/10`` and unique-local ``fc00::/7`` are left alone. Eight
  groups of two hex digits (an EUI-64 hardware address) do count: they identify a device too.
- **Phone**: North American numbers ``(555) 234-5678``, ``555-234-5678``, ``555.234.5678``
  (optional ``1-`` prefix; area code and exchange start with 2-9; the separators are required, so a
  bare 10-digit number or an ISBN is not a phone) and international numbers with a ``+`` country
  code: ``+44 20 7946 0958``, ``+33 1 23 45 67 89``, ``+1 (555) 234-5678`` (a first group, then two
  or more groups of 2-8 digits or one of 4-8), or compact E.164 ``+4915112345678`` (10-15 digits).
  Not preceded by a word character, ``+``, ``.``, ``-`` or ``/``; the IPv4 exclusions apply too, so
  dotted or hyphenated runs of five or more numbers (ISBN-13 ``978-0-306-40615-7``) and numbers right
  after a version word are not phones. National formats
  without ``+`` (other than North American) are not detected: in running text they look exactly
  like tables of numbers or hex dumps. Dates (``2021-03-15``, ``15.03.2021``) do not fit any shape.

Order: e-mails, then IPs, then phones, so one span is counted once. The guards work by first
inserting the noncharacter U+FDD0 in front of each excluded run (Rust regex has no look-around),
running the detectors (which refuse to start after U+FDD0) and deleting U+FDD0 again: a U+FDD0 in
the input is therefore dropped from ``text_redacted``. Counts are the number of placeholders each
step inserted. Cost: five regex passes and a few literal ones over the text; see
``benchmarks/filters_extra.py`` (about ten times the same patterns run per document with ``re``).
"""
from __future__ import annotations

import polars as pl
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from engines.derived_text import store_once
from engines.stage import Stage, register_stage

EMAIL_TOKEN = "<EMAIL>"
IP_TOKEN = "<IP_ADDRESS>"
PHONE_TOKEN = "<PHONE>"
_MARK = "\ufdd0"  # internal sentinel: a Unicode noncharacter
_MARK_RE = r"\x{FDD0}"

_WB = r"(?-u:\b)"  # ASCII word boundary
_OCT = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_H = r"[0-9A-Fa-f]{1,4}"
# A hex group of 1-4 characters that contains at least one decimal digit.
_HD = r"(?:[0-9][0-9A-Fa-f]{0,3}|[A-Fa-f][0-9][0-9A-Fa-f]{0,2}|[A-Fa-f]{2}[0-9][0-9A-Fa-f]?|[A-Fa-f]{3}[0-9])"

EMAIL = (r"[A-Za-z0-9_%+\-][A-Za-z0-9._%+\-]{0,63}@(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+"
         r"[A-Za-z]{2,24}" + _WB)

IPV4 = rf"(?P<pre>^|[^A-Za-z0-9_.{_MARK_RE}]){_OCT}\.{_OCT}\.{_OCT}\.{_OCT}{_WB}"
IPV6 = (rf"(?P<pre>^|[^A-Za-z0-9_.:{_MARK_RE}])"
        rf"(?:{_HD}(?::{_H}){{7}}|{_HD}(?::{_H}){{1,5}}::{_H}(?::{_H}){{0,5}}|{_HD}::{_H}(?::{_H}){{1,5}}){_WB}")

_NANP = (r"(?:1[ .\-])?(?:\([2-9][0-9]{2}\) ?[2-9][0-9]{2}[ .\-][0-9]{4}|[2-9][0-9]{2}-[2-9][0-9]{2}-[0-9]{4}"
         r"|[2-9][0-9]{2}\.[2-9][0-9]{2}\.[0-9]{4})")
_INTL = (r"\+[1-9][0-9]{0,2}(?:[ .\-]?\([0-9]{1,4}\)|[ .\-][0-9]{1,5})(?:(?:[ .\-][0-9]{2,8}){2,5}|[ .\-][0-9]{4,8})"
         r"|\+[1-9][0-9]{9,14}")
PHONE = rf"(?P<pre>^|[^A-Za-z0-9_+.\-/{_MARK_RE}])(?:{_INTL}|{_NANP}){_WB}"

# Runs that must not be read as an IP or a phone: U+FDD0 goes in front of them.
_LONG_RUN = r"[0-9]+(?:[.\-][0-9]+){4,}"
_SINGLE_DIGIT_QUAD = r"[0-9]\.[0-9]\.[0-9]\.[0-9]" + _WB
_RESERVED_V4 = (
    rf"(?:(?:0|10|127|22[4-9]|23[0-9]|24[0-9]|25[0-5])\.{_OCT}\.{_OCT}"
    rf"|(?:169\.254|192\.168|172\.(?:1[6-9]|2[0-9]|3[01])|198\.1[89]|100\.(?:6[4-9]|[7-9][0-9]|1[01][0-9]|12[0-7]))"
    rf"\.{_OCT}"
    rf"|192\.0\.[02]|198\.51\.100|203\.0\.113)\.{_OCT}{_WB}"
)
_RESERVED_V6 = r"(?i:2001:0?db8|fe[89ab][0-9a-f]|f[cd][0-9a-f]{2}):"
_VERSION_WORD = (r"(?i:" + _WB + r"(?:version|ver|v|release|rel|build|rev|revision|firmware)\.?:?[ \t]?)"
                 r"|[A-Za-z][A-Za-z0-9_\-]*/")


def _mask_pattern(redact_reserved: bool) -> str:
    runs = [_LONG_RUN, _SINGLE_DIGIT_QUAD] + ([] if redact_reserved else [_RESERVED_V4])
    alts = [rf"(?P<p>^|[^A-Za-z0-9_.+])(?P<r>{'|'.join(runs)})"]
    if not redact_reserved:  # an IPv6 prefix only where an address can start (not after a colon)
        alts.append(rf"(?P<p6>^|[^A-Za-z0-9_.:+])(?P<r6>{_RESERVED_V6})")
    alts.append(rf"(?P<w>{_VERSION_WORD})(?P<v>[0-9])")
    return "|".join(alts)


_MASK_TEMPLATE = "${p}${p6}${w}" + _MARK + "${r}${r6}${v}"


class PiiParams(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    emails: bool = True
    """Redact e-mail addresses as ``<EMAIL>`` in ``text_redacted``."""
    ips: bool = True
    """Redact public IPv4/IPv6 addresses as ``<IP_ADDRESS>`` (version strings and OIDs spared)."""
    phones: bool = True
    """Redact North American and ``+``-prefixed international numbers as ``<PHONE>``."""
    redact_reserved_ips: bool = False
    """Also redact private, loopback, documentation, multicast ... addresses."""
    max_pii: int | None = Field(default=None, ge=0)
    """Null: not a filter. A number: more findings than this: dropped (``too_much_pii``)."""


def _step(frame: pl.DataFrame, pattern: str, template: str, token: str | None = None) -> tuple[pl.DataFrame, pl.Series]:
    """Replace ``pattern`` in column ``t``; returns the new frame and how many ``token`` it inserted.

    Each step is materialised before the next (one regex pass each): a chain of expressions would
    recompute the earlier replacements for every count taken from it.
    """
    out = frame.select(pl.col("t").str.replace_all(pattern, template))
    if token is None:
        return out, pl.Series([0] * frame.height, dtype=pl.Int64)
    n = (out.get_column("t").str.count_matches(token, literal=True).cast(pl.Int64)
         - frame.get_column("t").str.count_matches(token, literal=True).cast(pl.Int64))
    return out, n


def redact(text: pl.Series, p: PiiParams) -> pl.DataFrame:
    """``text_redacted``, ``pii_email``, ``pii_ip`` and ``pii_phone`` for a column of texts."""
    frame = pl.DataFrame({"t": text.fill_null("")}, schema={"t": pl.String})
    zero = pl.Series([0] * frame.height, dtype=pl.Int64)
    n_email = n_ip = n_phone = zero
    if p.emails:
        frame, n_email = _step(frame, EMAIL, EMAIL_TOKEN, EMAIL_TOKEN)
    if p.ips or p.phones:
        frame, _ = _step(frame, _mask_pattern(p.redact_reserved_ips), _MASK_TEMPLATE)
        if p.ips:
            frame, n4 = _step(frame, IPV4, "${pre}" + IP_TOKEN, IP_TOKEN)
            frame, n6 = _step(frame, IPV6, "${pre}" + IP_TOKEN, IP_TOKEN)
            n_ip = n4 + n6
        if p.phones:
            frame, n_phone = _step(frame, PHONE, "${pre}" + PHONE_TOKEN, PHONE_TOKEN)
        frame = frame.select(pl.col("t").str.replace_all(_MARK, "", literal=True))
    return pl.DataFrame({"text_redacted": frame.get_column("t"), "pii_email": n_email, "pii_ip": n_ip,
                         "pii_phone": n_phone})


@register_stage
class PiiRedaction(Stage):
    kind = "pii"
    version = "2"  # 2: text_redacted is null where nothing was redacted
    needs = ("text",)
    Params = PiiParams
    text_columns = ("text_redacted",)

    def writes(self) -> dict[str, pa.DataType]:
        cols: dict[str, pa.DataType] = {"text_redacted": pa.large_string(), "pii_email": pa.int64(),
                                        "pii_ip": pa.int64(), "pii_phone": pa.int64()}
        if self.params.max_pii is not None:  # type: ignore[attr-defined]
            cols.update({"keep": pa.bool_(), "reason": pa.string()})
        return cols

    def transform(self, batch: pl.DataFrame) -> pl.DataFrame:
        p: PiiParams = self.params  # type: ignore[assignment]
        text = batch.get_column("text")
        out = redact(text, p).with_columns(store_once(pl.col("text_redacted"), pl.lit(text)).alias("text_redacted"))
        if p.max_pii is not None:
            too_many = (pl.col("pii_email") + pl.col("pii_ip") + pl.col("pii_phone")) > p.max_pii
            out = out.with_columns(
                (~too_many).alias("keep"),
                pl.when(too_many).then(pl.lit("too_much_pii")).otherwise(pl.lit(None, pl.String)).alias("reason"))
        return out
