"""Input formats: each reader streams one source's raw text: a language pair's, or one language's.

A parallel reader yields ``(src, tgt)`` tuples, a monolingual one ``(sentence,)`` tuples (its formats are
in ``MONOLINGUAL_FORMATS``); either may yield a string naming why an input record was dropped (for
example ``"malformed"``) so that cleaning can count it. Readers stream: memory does not grow with the
file, except for gettext catalogs, which polib reads whole (catalogs are small). Every file may come
compressed (gzip, xz, bzip2, zstd: data_prep.compression); it is decompressed as it is read.
"""
from __future__ import annotations

import codecs
import logging
import math
import zipfile
from collections.abc import Callable, Iterator
from itertools import zip_longest
from pathlib import PurePosixPath
from typing import Any

import polib
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import ParseError, iterparse

from data_prep import PrepError
from data_prep.compression import CorruptInput, open_input, open_member
from data_prep.sentences import split_sentences

log = logging.getLogger(__name__)


class Source:
    """A configured source as a reader reads it: data_prep.config's ``PairConfig`` (a language pair; ``src``,
    ``tgt`` and ``msgid_side`` too) or ``MonolingualConfig`` (one language's text; ``documents`` too). Declared
    here, below the config, because the config checks a source against the readers registered here."""
    format: str
    path: list[str]
    key: str
    src_lang: str
    tgt_lang: str | None
    text_columns: list[str | None]
    files: list[str]
    score_column: str | int | None
    min_score: float | None

    def score_drop(self, value: Any) -> str | None:
        """Why a record scored ``value`` (a number, or a number's text as TSV holds it) is dropped:
        ``malformed`` (no number), ``low_score`` (under ``min_score``), or None to keep it."""
        score = _number(value)
        if score is None:
            return "malformed"
        return "low_score" if self.min_score is not None and score < self.min_score else None


def _number(value: Any) -> float | None:
    """``value`` as a score: a number, or text that reads as one; None for anything else (NaN, a bool)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


Record = tuple[str, ...] | str
Reader = Callable[[Source], Iterator[Record]]
READERS: dict[str, Reader] = {}
MONOLINGUAL_FORMATS: set[str] = set()
"""The formats of READERS that read one language's text (configured under ``monolingual:``)."""
PARALLEL_FORMATS: set[str] = set()
"""The formats of READERS that read language pairs (configured under ``pairs:``); a format may be both."""
# Formats read as bytes with an ASCII-compatible encoding (UTF-8 lines; a .po's charset): a UTF-16 or
# UTF-32 file would come out as noise, so the config refuses it (see encoding_problem).
TEXT_FORMATS = ("moses", "tsv", "po", "text")


def reader(name: str, monolingual: bool = False, parallel: bool | None = None):
    """Registers a reader of language pairs, or of one language's text (``monolingual``), or of both
    (``monolingual`` and ``parallel``: formats whose sources name their columns, data_prep.tabular)."""
    def register(fn: Reader) -> Reader:
        READERS[name] = fn
        if monolingual:
            MONOLINGUAL_FORMATS.add(name)
        if parallel or (parallel is None and not monolingual):
            PARALLEL_FORMATS.add(name)
        return fn
    return register


def read_pairs(source: Source) -> Iterator[Record]:
    """The records of one configured source: (src, tgt) pairs, or (sentence,) for monolingual text."""
    return READERS[source.format](source)


# Longest first: the UTF-32 little-endian mark begins with the UTF-16 one.
_BYTE_ORDER_MARKS = ((codecs.BOM_UTF32_LE, "UTF-32", "little"), (codecs.BOM_UTF32_BE, "UTF-32", "big"),
                     (codecs.BOM_UTF16_LE, "UTF-16", "little"), (codecs.BOM_UTF16_BE, "UTF-16", "big"))


def encoding_problem(path: str) -> str | None:
    """Why ``path`` is no UTF-8 text at all (UTF-16 or UTF-32), or None. Single bad lines are only
    dropped by the readers; a whole file in another encoding is an error to fix. A compressed file is
    judged by its decompressed head (its own bytes are full of NULs)."""
    try:
        with open_input(path) as f:
            head = f.read(1 << 16)
    except OSError as exc:
        return f"cannot read ({exc.strerror})"
    except CorruptInput as exc:
        return exc.problem
    for mark, encoding, order in _BYTE_ORDER_MARKS:
        if head.startswith(mark):
            return (f"{encoding} ({order}-endian byte-order mark), not UTF-8; "
                    f"convert it with iconv -f {encoding} -t UTF-8")
    if b"\0" in head:  # never in text, but in every ASCII character of UTF-16 or UTF-32
        return ("NUL bytes, so not UTF-8 text (UTF-16 or UTF-32 without a byte-order mark?); "
                "convert it with iconv -f <its encoding> -t UTF-8")
    return None


def _lines(path: str) -> Iterator[str | None]:
    """The lines of the file at ``path``, decompressed if it is compressed (see _decoded_lines)."""
    try:
        with open_input(path) as f:
            yield from _decoded_lines(path, f)
    except OSError as exc:
        raise PrepError(f"{path}: cannot read ({exc.strerror})") from None


def _decoded_lines(name: str, stream) -> Iterator[str | None]:
    """Lines split on '\\n' only (a lone '\\r' inside a line is text, as in `wc -l`), decoded as UTF-8.

    A line that is not valid UTF-8 comes as None (the reader drops its record as malformed), and the
    count and first line numbers of such lines are logged once the stream has been read.
    """
    n_bad, first_bad = 0, []
    for lineno, raw in enumerate(stream, 1):
        try:
            line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8").rstrip("\n").rstrip("\r")
        except UnicodeDecodeError:
            n_bad += 1
            if len(first_bad) < 5:
                first_bad.append(lineno)
            line = None
        yield line
    if n_bad:
        shown = ", ".join(map(str, first_bad)) + (", ..." if n_bad > len(first_bad) else "")
        log.warning("%s: %d lines are not valid UTF-8, dropped as malformed (lines %s)", name, n_bad, shown)


_ENDED = object()


def _line_pairs(key: str, src: tuple[str, Iterator], tgt: tuple[str, Iterator]) -> Iterator[Record]:
    """Line i of one (name, lines) with line i of the other, both read once, side by side (a second pass
    to count lines first would decompress a large corpus twice). If one ends first, the rest of the other
    is counted for the error, which a clean stage raises before marking anything complete."""
    n_src = n_tgt = 0
    # Both are read to their end, so both report their undecodable lines.
    for s, t in zip_longest(src[1], tgt[1], fillvalue=_ENDED):
        n_src, n_tgt = n_src + (s is not _ENDED), n_tgt + (t is not _ENDED)
        if n_src == n_tgt:
            yield "malformed" if s is None or t is None else (s, t)
    if n_src != n_tgt:
        raise PrepError(f"{key}: line counts differ: {src[0]} has {n_src} lines, {tgt[0]} has {n_tgt}")


@reader("moses")
def read_moses(pair: Source) -> Iterator[Record]:
    """Two files, line i of one translating line i of the other."""
    return _line_pairs(pair.key, (pair.src, _lines(pair.src)), (pair.tgt, _lines(pair.tgt)))


@reader("opus_moses")
def read_opus_moses(pair: Source) -> Iterator[Record]:
    """OPUS Moses downloads: a zip holding ``<Corpus>.<l1>-<l2>.<l1>`` and ``.<l2>`` (read as moses, the
    members streamed) beside a README and a LICENSE, which are ignored."""
    for path in pair.path:
        try:
            with zipfile.ZipFile(path) as archive:
                src, tgt = (_opus_member(path, archive, lang) for lang in (pair.src_lang, pair.tgt_lang))
                with open_member(archive, src) as src_stream, open_member(archive, tgt) as tgt_stream:
                    src_name, tgt_name = f"{path}: {src}", f"{path}: {tgt}"
                    yield from _line_pairs(pair.key, (src_name, _decoded_lines(src_name, src_stream)),
                                           (tgt_name, _decoded_lines(tgt_name, tgt_stream)))
        except zipfile.BadZipFile as exc:
            raise PrepError(f"{path}: not a zip archive ({exc})") from None
        except OSError as exc:
            raise PrepError(f"{path}: cannot read ({exc.strerror})") from None


def _opus_member(path: str, archive: zipfile.ZipFile, lang: str) -> str:
    """The one member whose suffix is ``lang`` (compared as TMX compares language tags)."""
    members = [m for m in archive.namelist() if not m.endswith("/")]
    found = [m for m in members if _same_language(PurePosixPath(m).suffix[1:], lang)]
    if len(found) != 1:
        raise PrepError(f"{path}: expected one file ending in .{lang}, found {len(found)} among "
                        f"{', '.join(members) or 'no files'}")
    return found[0]


@reader("tsv")
def read_tsv(pair: Source) -> Iterator[Record]:
    """One pair per line: src<TAB>tgt, or with ``score_column`` (the score's field index) three fields, such
    as WikiMatrix's score<TAB>src<TAB>tgt: a pair under ``min_score`` is dropped as low_score. Lines with
    another number of fields, a score that is no number, or not UTF-8 are dropped as malformed."""
    scored = pair.score_column is not None
    for path in pair.path:
        for line in _lines(path):
            fields = [] if line is None else line.split("\t")
            if len(fields) != 2 + scored:
                yield "malformed"
            elif not scored:
                yield fields[0], fields[1]
            else:
                score = fields.pop(pair.score_column)
                yield pair.score_drop(score) or (fields[0], fields[1])


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
def read_tmx(pair: Source) -> Iterator[Record]:
    """TMX translation memories, parsed incrementally with entity expansion refused (defusedxml)."""
    for path in pair.path:
        try:
            with open_input(path) as f:
                yield from _tmx_pairs(f, pair)
        except ParseError as exc:
            raise PrepError(f"{path}: not valid TMX ({exc})") from None
        except DefusedXmlException as exc:
            raise PrepError(f"{path}: refused unsafe XML ({exc})") from None
        except OSError as exc:
            raise PrepError(f"{path}: cannot read ({exc.strerror})") from None


def _tmx_pairs(stream, pair: Source) -> Iterator[Record]:
    """The translation units of one TMX stream, each a pair or the reason it is dropped."""
    events = iterparse(stream, events=("start", "end"))
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


def _catalog_pairs(pair: Source, load: Callable[[bytes], polib.POFile | polib.MOFile]) -> Iterator[Record]:
    for path in pair.path:
        try:
            with open_input(path) as f:
                catalog = load(f.read())
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
def read_po(pair: Source) -> Iterator[Record]:
    """gettext source catalogs: msgid → msgstr; fuzzy and untranslated entries are counted and dropped."""
    return _catalog_pairs(pair, _po_catalog)


def _po_catalog(content: bytes) -> polib.POFile:
    """polib takes a catalog's content as text only: decode it in the charset its header names."""
    encoding = polib.detect_encoding(content)
    return polib.pofile(content.decode(encoding), encoding=encoding)


@reader("mo")
def read_mo(pair: Source) -> Iterator[Record]:
    """Compiled gettext catalogs (the same pairs as the .po they were built from)."""
    return _catalog_pairs(pair, polib.mofile)


# A document without blank lines or sentence ends would otherwise be held whole; past this many
# characters its pending text is let go as one record (cleaning drops it as too long).
_MAX_PENDING_CHARS = 1 << 16


@reader("text", monolingual=True)
def read_text(source: Source) -> Iterator[Record]:
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
