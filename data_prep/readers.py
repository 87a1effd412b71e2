"""Input formats: each reader streams one source's raw text: a language pair's, or one language's.

A parallel reader yields ``(src, tgt)`` tuples, a monolingual one ``(sentence,)`` tuples (its formats are
in ``MONOLINGUAL_FORMATS``); either may yield a string naming why an input record was dropped (for
example ``"malformed"``) so that cleaning can count it. Readers stream: memory does not grow with the
file, except for gettext catalogs, which polib reads whole (catalogs are small).
"""
from __future__ import annotations

import codecs
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import polib
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import ParseError, iterparse

from data_prep import PrepError
from data_prep.sentences import split_sentences

if TYPE_CHECKING:
    from data_prep.config import MonolingualConfig, PairConfig

log = logging.getLogger(__name__)

Record = tuple[str, ...] | str
Reader = Callable[["PairConfig | MonolingualConfig"], Iterator[Record]]
READERS: dict[str, Reader] = {}
MONOLINGUAL_FORMATS: set[str] = set()
"""The formats of READERS that read one language's text (configured under ``monolingual:``)."""
# Formats read as bytes with an ASCII-compatible encoding (UTF-8 lines; a .po's charset): a UTF-16 or
# UTF-32 file would come out as noise, so the config refuses it (see encoding_problem).
TEXT_FORMATS = ("moses", "tsv", "po", "text")


def reader(name: str, monolingual: bool = False):
    def register(fn: Reader) -> Reader:
        READERS[name] = fn
        if monolingual:
            MONOLINGUAL_FORMATS.add(name)
        return fn
    return register


def read_pairs(source: PairConfig | MonolingualConfig) -> Iterator[Record]:
    """The records of one configured source: (src, tgt) pairs, or (sentence,) for monolingual text."""
    return READERS[source.format](source)


# Longest first: the UTF-32 little-endian mark begins with the UTF-16 one.
_BYTE_ORDER_MARKS = ((codecs.BOM_UTF32_LE, "UTF-32", "little"), (codecs.BOM_UTF32_BE, "UTF-32", "big"),
                     (codecs.BOM_UTF16_LE, "UTF-16", "little"), (codecs.BOM_UTF16_BE, "UTF-16", "big"))


def encoding_problem(path: str) -> str | None:
    """Why ``path`` is no UTF-8 text at all (UTF-16 or UTF-32), or None. Single bad lines are only
    dropped by the readers; a whole file in another encoding is an error to fix."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError as exc:
        return f"cannot read ({exc.strerror})"
    for mark, encoding, order in _BYTE_ORDER_MARKS:
        if head.startswith(mark):
            return (f"{encoding} ({order}-endian byte-order mark), not UTF-8; "
                    f"convert it with iconv -f {encoding} -t UTF-8")
    if b"\0" in head:  # never in text, but in every ASCII character of UTF-16 or UTF-32
        return ("NUL bytes, so not UTF-8 text (UTF-16 or UTF-32 without a byte-order mark?); "
                "convert it with iconv -f <its encoding> -t UTF-8")
    return None


def _lines(path: str) -> Iterator[str | None]:
    """Lines split on '\\n' only (a lone '\\r' inside a line is text, as in `wc -l`), decoded as UTF-8.

    A line that is not valid UTF-8 comes as None (the reader drops its record as malformed), and the
    count and first line numbers of such lines are logged once the file has been read.
    """
    n_bad, first_bad = 0, []
    try:
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8").rstrip("\n").rstrip("\r")
                except UnicodeDecodeError:
                    n_bad += 1
                    if len(first_bad) < 5:
                        first_bad.append(lineno)
                    line = None
                yield line
    except OSError as exc:
        raise PrepError(f"{path}: cannot read ({exc.strerror})") from None
    if n_bad:
        shown = ", ".join(map(str, first_bad)) + (", ..." if n_bad > len(first_bad) else "")
        log.warning("%s: %d lines are not valid UTF-8, dropped as malformed (lines %s)", path, n_bad, shown)


def count_lines(path: str) -> int:
    try:
        with open(path, "rb") as f:
            n, last = 0, b"\n"
            for block in iter(lambda: f.read(1 << 20), b""):
                n += block.count(b"\n")
                last = block[-1:]
            return n + (last != b"\n")
    except OSError as exc:
        raise PrepError(f"{path}: cannot read ({exc.strerror})") from None


@reader("moses")
def read_moses(pair: PairConfig) -> Iterator[Record]:
    """Two files, line i of one translating line i of the other."""
    n_src, n_tgt = count_lines(pair.src), count_lines(pair.tgt)
    if n_src != n_tgt:
        raise PrepError(f"{pair.key}: line counts differ: {pair.src} has {n_src} lines, {pair.tgt} has {n_tgt}")
    # strict: both files are read to their end, so both report their undecodable lines.
    for src, tgt in zip(_lines(pair.src), _lines(pair.tgt), strict=True):
        yield "malformed" if src is None or tgt is None else (src, tgt)


@reader("tsv")
def read_tsv(pair: PairConfig) -> Iterator[Record]:
    """One pair per line: src<TAB>tgt. Lines with another number of fields (or not UTF-8) are dropped as
    malformed."""
    for path in pair.path:
        for line in _lines(path):
            fields = [] if line is None else line.split("\t")
            yield (fields[0], fields[1]) if len(fields) == 2 else "malformed"


_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
# TMX inline elements that carry native markup codes rather than translatable text.
_TMX_CODE_TAGS = {"bpt", "ept", "it", "ph", "ut"}


def _same_language(tag: str, lang: str) -> bool:
    """TMX uses RFC 3066 tags (pt-BR); a pair names a language (pt): compare primary subtags."""
    return tag.replace("_", "-").split("-")[0].lower() == lang.replace("_", "-").split("-")[0].lower()


def _segment_text(seg) -> str:
    parts = [seg.text or ""]
    for child in seg:
        if child.tag not in _TMX_CODE_TAGS:
            parts.append(_segment_text(child))
        parts.append(child.tail or "")
    return "".join(parts)


@reader("tmx")
def read_tmx(pair: PairConfig) -> Iterator[Record]:
    """TMX translation memories, parsed incrementally with entity expansion refused (defusedxml)."""
    for path in pair.path:
        try:
            events = iterparse(path, events=("start", "end"))
            body = None
            for event, elem in events:
                if event == "start":
                    if elem.tag == "body":
                        body = elem
                    continue
                if elem.tag != "tu":
                    continue
                segs = {}
                for tuv in elem.iter("tuv"):
                    lang = tuv.get(_XML_LANG) or tuv.get("lang") or ""
                    seg = tuv.find("seg")
                    for side, want in (("src", pair.src_lang), ("tgt", pair.tgt_lang)):
                        if seg is not None and _same_language(lang, want) and side not in segs:
                            segs[side] = _segment_text(seg)
                yield (segs["src"], segs["tgt"]) if len(segs) == 2 else "missing_language"
                if body is not None:
                    body.clear()  # processed units are dropped, so memory stays flat
        except ParseError as exc:
            raise PrepError(f"{path}: not valid TMX ({exc})") from None
        except DefusedXmlException as exc:
            raise PrepError(f"{path}: refused unsafe XML ({exc})") from None
        except OSError as exc:
            raise PrepError(f"{path}: cannot read ({exc.strerror})") from None


def _catalog_pairs(pair: PairConfig, load) -> Iterator[Record]:
    for path in pair.path:
        try:
            catalog = load(path)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise PrepError(f"{path}: cannot read gettext catalog ({str(exc).splitlines()[0]})") from None
        for entry in catalog:
            if entry.obsolete or not entry.msgid:
                continue
            if "fuzzy" in getattr(entry, "flags", ()):  # compiled .mo catalogs hold no fuzzy entries
                yield "fuzzy"
                continue
            # For plural entries the first form pairs with the singular msgid.
            translation = entry.msgstr_plural.get(0, "") if entry.msgid_plural else entry.msgstr
            if not translation:
                yield "untranslated"
            elif pair.msgid_side == "tgt":
                yield translation, entry.msgid
            else:
                yield entry.msgid, translation


@reader("po")
def read_po(pair: PairConfig) -> Iterator[Record]:
    """gettext source catalogs: msgid → msgstr; fuzzy and untranslated entries are counted and dropped."""
    return _catalog_pairs(pair, polib.pofile)


@reader("mo")
def read_mo(pair: PairConfig) -> Iterator[Record]:
    """Compiled gettext catalogs (the same pairs as the .po they were built from)."""
    return _catalog_pairs(pair, polib.mofile)


# A document without blank lines or sentence ends would otherwise be held whole; past this many
# characters its pending text is let go as one record (cleaning drops it as too long).
_MAX_PENDING_CHARS = 1 << 16


@reader("text", monolingual=True)
def read_text(source: MonolingualConfig) -> Iterator[Record]:
    """One language's plain UTF-8 text: one sentence per line, or (``documents``) documents separated
    by blank lines, whose lines are joined and split into sentences (data_prep.sentences). A line that
    is not UTF-8 is dropped as malformed; a document goes on after it."""
    for path in source.path:
        if not source.documents:
            for line in _lines(path):
                yield "malformed" if line is None else (line,)
            continue
        pending = ""  # the document's text after its last complete sentence
        for line in _lines(path):
            if line is None:
                yield "malformed"
                continue
            if not line.strip():  # a document ends
                yield from ((s,) for s in split_sentences(pending))
                pending = ""
                continue
            # Sentences may run over line ends: only those followed by more text are known to be complete.
            *complete, pending = split_sentences(f"{pending} {line}") or [""]
            yield from ((s,) for s in complete)
            if len(pending) > _MAX_PENDING_CHARS:
                yield (pending,)
                pending = ""
        yield from ((s,) for s in split_sentences(pending))
