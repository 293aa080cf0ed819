"""An offline prompt corpus built from text that ships with Python itself.

No dataset can be downloaded here, so the self-distillation prompts are made
from the standard library installed with the interpreter:

* **code** prompts from the source of stdlib modules (parsed with :mod:`ast`,
  never imported): "Write a Python function ``name(args)`` that <first
  docstring sentence>", "Explain what the following Python function does:
  <source>", "Add type hints ...", "Write pytest tests ...", "Rewrite ... more
  readable", "What does ``module.name`` do ...";
* **chat** prompts from (a) Unicode character names of pictographs in
  :mod:`unicodedata` (objects, animals, food, places: "Write a short poem
  about a rose.", "Describe a bicycle to a child who has never seen one."),
  (b) the Python language reference topics in ``pydoc_data.topics`` and
  (c) prose paragraphs of stdlib docstrings ("Summarize the following text
  ...", "Rewrite this paragraph for a beginner ...").

Determinism: the candidate prompts are enumerated in a fixed order (sorted
files, fixed templates), shuffled with ``random.Random(seed)``, de-duplicated
and truncated to the requested counts, so a given Python installation and
seed always yield the same list. (Another Python version ships other stdlib
text and gives another corpus.)

Split (documented contract):

* ``heldout``: a prompt whose ``sha1(text)`` falls in the first
  ``heldout_fraction`` of the hash space. Held-out prompts are distilled like
  the others but never used for gradient steps: the trainer uses them for
  validation and for fitting the STS calibration.
* ``train``: every other prompt.
* Evaluation prompts (``tests/data/eval_chat.jsonl``,
  ``tests/data/eval_code.jsonl``) are hand-written, not drawn from this
  source; :func:`build_corpus` additionally drops any candidate that shares
  an 8-word shingle with a prompt passed in ``exclude`` (the trainer passes
  the eval files when they exist), and the tests assert disjointness.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import random
import re
import sys
import sysconfig
import textwrap
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

__all__ = [
    "CHAT_SOURCES",
    "Prompt",
    "build_corpus",
    "corpus_summary",
    "heldout_split",
    "load_prompt_file",
    "shingles",
]

_SKIP_DIRS = {
    "test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages", "__pycache__",
    "turtledemo", "ensurepip", "venv", "tkinter", "config-3.11", "lib-dynload",
}
_SKIP_FILE_PREFIXES = ("test_", "_pydecimal", "pydoc_data")

_CODE_TEMPLATES_SIGNATURE = (
    "Write a Python function `{name}({params})` that {summary}",
    "Implement the following in Python as a function named `{name}`: {summary_cap}",
    "I need a Python helper `{name}({params})`. It should {summary_verb} Please include a short "
    "docstring.",
)
_CODE_TEMPLATES_SOURCE = (
    "Explain what the following Python function does:\n\n```python\n{source}\n```",
    "Add type hints and a short docstring to this Python function:\n\n```python\n{source}\n```",
    "Write two pytest unit tests for this function:\n\n```python\n{source}\n```",
    "Rewrite this Python function to be more readable and explain your changes:\n\n"
    "```python\n{source}\n```",
    "Is there a bug or an edge case this function does not handle? Explain.\n\n"
    "```python\n{source}\n```",
)
_CODE_TEMPLATES_API = (
    "What does `{module}.{name}` do in Python's standard library? Give a short example.",
    "Show me how to use `{module}.{name}` with a small code example.",
)
_CHAT_TEMPLATES_THING = (
    "Write a short poem about a {thing}.",
    "Describe a {thing} to a child who has never seen one.",
    "Write a short story in which a {thing} plays an important role.",
    "Give me five creative uses for a {thing}.",
    "Tell me three interesting facts related to a {thing}.",
    "Write a product description for a {thing}.",
    "What would a day in the life of a {thing} look like? Keep it light-hearted.",
    "Compare a {thing} and a {other}. How are they similar and how are they different?",
    "Write a haiku that mentions a {thing} and a {other}.",
)
_CHAT_TEMPLATES_TOPIC = (
    "Explain the Python concept of {topic} in simple terms.",
    "What should a beginner know about {topic} in Python?",
    "Give a short example that illustrates {topic} in Python and explain it.",
)
_CHAT_TEMPLATES_PARAGRAPH = (
    "Summarize the following text in two sentences:\n\n{para}",
    "Rewrite this paragraph so that a beginner can understand it:\n\n{para}",
    "List the key points of this passage:\n\n{para}",
    "Write three questions a student might ask after reading this:\n\n{para}",
)
_THING_STOPWORDS = {
    "ARROW", "ARROWHEAD", "SYMBOL", "CIRCLE", "BLACK", "WHITE", "SQUARE", "TRIANGLE", "LOZENGE",
    "CHESS", "XIANGQI", "CLOCK", "ALCHEMICAL", "SIGN", "MARK", "DIGIT", "LETTER", "HEAVY",
    "CROSS", "SHADOWED", "SHAFT", "DOTS", "DOT", "LEFTWARDS", "RIGHTWARDS", "UPWARDS",
    "DOWNWARDS", "NORTH", "SOUTH", "EAST", "WEST", "ORNAMENT", "FLORETTE", "DINGBAT",
    "SANS-SERIF", "OUTLINED", "SHADED", "HALF", "LEFT", "RIGHT", "TURNED", "ROTATED", "INVERSE",
    "SQUARED", "CIRCLED", "NEGATIVE", "DIAMOND", "PENTAGON", "TRIGRAM", "MONOGRAM", "DIGRAM",
    "TETRAGRAM", "HEXAGRAM", "FACE", "HAND", "HANDS", "FINGER", "TYPE-1", "TYPE-2", "TYPE-3",
    "TYPE-4", "TYPE-5", "TYPE-6", "TYPE-7", "KEYCAP", "REGIONAL", "INDICATOR", "VARIATION",
    "SELECTOR", "MODIFIER", "FITZPATRICK", "COMBINING", "ZERO", "ONE", "TWO", "THREE", "FOUR",
    "FIVE", "SIX", "SEVEN", "EIGHT", "NINE", "TEN", "TWELVE", "RECYCLING", "SHOGI", "DIE",
    "DOMINO", "MAHJONG", "PLAYING", "CARD", "LARGE", "SMALL", "MEDIUM", "VERY", "WITH", "AND",
    "OVER", "INSIDE", "BESIDE", "ABOVE", "BELOW", "ORANGE", "BLUE", "GREEN", "PURPLE", "BROWN",
    "YELLOW", "RED", "OPEN", "CLOSED", "DOUBLE", "TRIPLE", "REVERSED", "BOLD", "OPPOSITION",
    "CONJUNCTION", "QUADRANT", "SEXTILE", "TRINE", "RETROGRADE", "HORIZONTAL", "VERTICAL",
}


@dataclass(frozen=True)
class Prompt:
    """One corpus prompt.

    Attributes:
        id: ``"{kind}-{sha1[:12]}"`` of the text (stable across runs).
        kind: ``"chat"`` or ``"code"``.
        source: where it came from (``"unicodedata"``, ``"pydoc_topics"``,
            ``"docstring:<module>"``, ``"function:<module>.<name>"``).
        text: the user message.
        split: ``"train"`` or ``"heldout"`` (:func:`heldout_split`).
    """

    id: str
    kind: str
    source: str
    text: str
    split: str

    def to_json(self) -> dict[str, str]:
        """A JSON-ready dict."""
        return asdict(self)


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def heldout_split(text: str, heldout_fraction: float) -> str:
    """``"heldout"`` iff ``sha1(text)`` lies in the first ``heldout_fraction`` of the hash space."""
    bucket = int(_sha1(text)[:8], 16) / float(1 << 32)
    return "heldout" if bucket < heldout_fraction else "train"


#: where chat prompts come from (:func:`build_corpus`).
CHAT_SOURCES = ("stdlib", "sharegpt")

_WORD = re.compile(r"[a-z0-9]+")


def shingles(text: str, n: int = 8) -> set[tuple[str, ...]]:
    """Lower-cased word ``n``-grams of ``text`` (the whole text if shorter)."""
    words = _WORD.findall(text.lower())
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def load_prompt_file(path: str | Path) -> list[dict]:
    """Read a JSONL prompt file (one object per line with a ``"prompt"`` key)."""
    rows = []
    for line_no, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise ValueError(f"{path}:{line_no}: expected an object with a string 'prompt'.")
        rows.append(row)
    return rows


# ---------------------------------------------------------------------- #
# Sources
# ---------------------------------------------------------------------- #
def _stdlib_files() -> list[tuple[str, Path]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part in _SKIP_DIRS for part in rel.parts[:-1]):
            continue
        if rel.name.startswith(_SKIP_FILE_PREFIXES) or rel.name == "__main__.py":
            continue
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        out.append((module, path))
    return out


def _first_sentence(doc: str) -> str | None:
    para = doc.strip().split("\n\n")[0]
    para = " ".join(para.split())
    match = re.match(r"(.+?[.!?])(\s|$)", para)
    sentence = match.group(1) if match else para
    words = sentence.split()
    if not 4 <= len(words) <= 30 or not sentence[0].isalpha():
        return None
    if any(ch in sentence for ch in "`>|{}") or sentence.lower().startswith(("see ", "deprecated")):
        return None
    return sentence


def _lower_first(sentence: str) -> str:
    return sentence[0].lower() + sentence[1:] if sentence[:2] != sentence[:2].upper() else sentence


def _verb_form(summary: str) -> str:
    """'Return the sum.' -> 'return the sum.' (for 'It should ...')."""
    first, _, rest = summary.partition(" ")
    if first.endswith("s") and first.lower() not in {"is", "has", "was", "does", "this"}:
        first = first[:-1]
        if first.endswith("e") and first[:-1].endswith(("ss", "sh", "ch", "x")):
            first = first[:-1]
    return (first.lower() + " " + rest).strip()


def _params(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    args = [a.arg for a in node.args.posonlyargs + node.args.args if a.arg not in ("self", "cls")]
    if node.args.vararg:
        args.append("*" + node.args.vararg.arg)
    args += [a.arg for a in node.args.kwonlyargs]
    if node.args.kwarg:
        args.append("**" + node.args.kwarg.arg)
    return ", ".join(args)


def _strip_docstring(node: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]) -> str | None:
    body = node.body
    if (
        body
        and isinstance(body[0], ast.Expr)
        and isinstance(getattr(body[0], "value", None), ast.Constant)
        and isinstance(body[0].value.value, str)
    ):
        if len(body) == 1:
            return None
        start = body[0].end_lineno
        head = lines[node.lineno - 1 : body[0].lineno - 1]
        rest = lines[start : node.end_lineno]
        return textwrap.dedent("\n".join(head + rest))
    return textwrap.dedent("\n".join(lines[node.lineno - 1 : node.end_lineno]))


def _parsed(files: list[tuple[str, Path]]) -> list[tuple[str, ast.Module, list[str]]]:
    """(module, tree, lines) of every parsable file (each file parsed once)."""
    out = []
    for module, path in files:
        try:
            text = path.read_text(encoding="utf-8")
            tree = ast.parse(text)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        out.append((module, tree, text.splitlines()))
    return out


def _code_candidates(
    parsed: list[tuple[str, ast.Module, list[str]]]
) -> Iterator[tuple[str, str, str]]:
    """(kind, source, text) code prompts from function definitions."""
    for module, tree, lines in parsed:
        if module.startswith("_") or "._" in module:
            continue
        for node in tree.body:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            name = node.name
            if name.startswith("_"):
                continue
            src = f"function:{module}.{name}"
            doc = ast.get_docstring(node)
            summary = _first_sentence(doc) if doc else None
            if summary:
                fields = {
                    "name": name,
                    "params": _params(node),
                    "summary": _lower_first(summary),
                    "summary_cap": summary,
                    "summary_verb": _verb_form(summary),
                }
                for template in _CODE_TEMPLATES_SIGNATURE:
                    yield "code", src, template.format(**fields)
                for template in _CODE_TEMPLATES_API:
                    yield "code", src, template.format(module=module, name=name)
            n_lines = node.end_lineno - node.lineno + 1
            if 4 <= n_lines <= 22:
                source = textwrap.dedent("\n".join(lines[node.lineno - 1 : node.end_lineno]))
                for template in _CODE_TEMPLATES_SOURCE:
                    body = source
                    if template.startswith("Add type hints"):
                        body = _strip_docstring(node, lines)
                        if body is None:
                            continue
                    yield "code", src, template.format(source=body.rstrip())


def _paragraph_candidates(
    parsed: list[tuple[str, ast.Module, list[str]]]
) -> Iterator[tuple[str, str, str]]:
    """(kind, source, text) chat prompts from prose paragraphs of module docstrings."""
    for module, tree, _lines in parsed:
        nodes = [tree] + [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        for node in nodes:
            doc = ast.get_docstring(node)
            if not doc:
                continue
            for para in doc.split("\n\n"):
                flat = " ".join(para.split())
                words = flat.split()
                if not 25 <= len(words) <= 120:
                    continue
                if sum(ch.isalpha() or ch.isspace() for ch in flat) < 0.9 * len(flat):
                    continue  # tables, code, signatures
                if ">>>" in flat or flat.count("(") > 3:
                    continue
                for template in _CHAT_TEMPLATES_PARAGRAPH:
                    yield "chat", f"docstring:{module}", template.format(para=flat)


def _things() -> list[str]:
    """Everyday nouns from the Unicode names of pictographs (e.g. 'rose', 'bicycle')."""
    names = []
    ranges = list(range(0x1F300, 0x1FB00)) + list(range(0x2600, 0x27C0))
    for cp in ranges:
        char = chr(cp)
        if unicodedata.category(char) != "So":
            continue
        try:
            name = unicodedata.name(char)
        except ValueError:
            continue
        words = name.split()
        if not 1 <= len(words) <= 3 or any(w in _THING_STOPWORDS for w in words):
            continue
        if not all(w.replace("-", "").isalpha() for w in words):
            continue
        names.append(name.lower())
    return sorted(set(names))


def _with_article(template: str, **nouns: str) -> str:
    """Format ``template`` and turn "a <vowel>" into "an <vowel>" before the nouns."""
    text = template.format(**nouns)
    for noun in nouns.values():
        if noun[:1] in "aeiou":
            text = text.replace(f" a {noun}", f" an {noun}")
    return text


def _thing_candidates() -> Iterator[tuple[str, str, str]]:
    things = _things()
    for i, thing in enumerate(things):
        other = things[(i * 7919 + 13) % len(things)]
        if other == thing:
            other = things[(i + 1) % len(things)]
        for template in _CHAT_TEMPLATES_THING:
            yield "chat", "unicodedata", _with_article(template, thing=thing, other=other)


def _topic_candidates() -> Iterator[tuple[str, str, str]]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # pragma: no cover - stdlib always has it
        return
    for key in sorted(topics):
        topic = key.replace("-", " ").replace("bltin ", "built-in ")
        for template in _CHAT_TEMPLATES_TOPIC:
            yield "chat", "pydoc_topics", template.format(topic=topic)


#: Bump when templates or extraction rules change (invalidates the disk cache).
CORPUS_VERSION = 1


def _build_pools() -> dict[str, list[tuple[str, str]]]:
    parsed = _parsed(_stdlib_files())
    pools: dict[str, list[tuple[str, str]]] = {"chat": [], "code": []}
    sources = [
        _code_candidates(parsed),
        _paragraph_candidates(parsed),
        _thing_candidates(),
        _topic_candidates(),
    ]
    for iterator in sources:
        for kind, source, text in iterator:
            pools[kind].append((source, text))
    return pools


def _pool_cache_path(files: list[tuple[str, Path]]) -> Path | None:
    """Disk cache file for this interpreter's stdlib (``None`` if no cache root)."""
    try:
        from sglang_dspark.demo.prepare import default_cache_root

        root = default_cache_root()
    except Exception:  # pragma: no cover - no home directory
        return None
    digest = hashlib.sha256(f"{CORPUS_VERSION}|{sys.version}|{unicodedata.unidata_version}".encode())
    for module, path in files:
        stat = path.stat()
        digest.update(f"{module}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return root / "corpus" / f"candidates-{digest.hexdigest()[:16]}.json"


@functools.lru_cache(maxsize=4)
def _candidate_pools(max_chars: int) -> dict[str, list[tuple[str, str]]]:
    """Every candidate (source, text) per kind, in a fixed order.

    Parsing the stdlib takes 5-30 s on a busy CPU, so the candidate list is
    cached on disk (``<cache root>/corpus/``, keyed by the corpus version, the
    interpreter version and every stdlib file's size and mtime) and in memory.
    The cache holds exactly what :func:`_build_pools` returns, so the corpus is
    the same with or without it.
    """
    files = _stdlib_files()
    cache = _pool_cache_path(files)
    pools = None
    if cache is not None and cache.is_file():
        try:
            raw = json.loads(cache.read_text(encoding="utf-8"))
            pools = {kind: [tuple(item) for item in raw[kind]] for kind in ("chat", "code")}
        except (OSError, ValueError, KeyError, TypeError):
            pools = None
    if pools is None:
        pools = _build_pools()
        if cache is not None:
            try:
                cache.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache.with_name(f".{cache.name}.tmp-{os.getpid()}")
                tmp.write_text(json.dumps(pools), encoding="utf-8")
                os.replace(tmp, cache)
            except OSError:
                pass
    return {
        kind: [(src, text) for src, text in items if len(text) <= max_chars]
        for kind, items in pools.items()
    }


# ---------------------------------------------------------------------- #
# Corpus
# ---------------------------------------------------------------------- #
def build_corpus(
    *,
    seed: int,
    num_chat: int,
    num_code: int,
    heldout_fraction: float = 0.05,
    max_chars: int = 1500,
    exclude: Iterable[str] = (),
    chat_source: str = "stdlib",
) -> list[Prompt]:
    """Build the prompt corpus.

    Args:
        seed: shuffling seed (the same seed and Python installation give the
            same corpus).
        num_chat: chat prompts wanted (fewer if the source runs out).
        num_code: code prompts wanted.
        heldout_fraction: share of prompts (by text hash) in the ``heldout`` split.
        max_chars: longest prompt kept.
        exclude: prompts (e.g. evaluation prompts) that no corpus prompt may
            share an 8-word shingle with.
        chat_source: ``"stdlib"`` (the prompts above) or ``"sharegpt"``
            (first human turns of ShareGPT, :mod:`.sharegpt`, its eval split
            removed); code prompts always come from the stdlib.

    Returns:
        Chat and code prompts interleaved in a seeded order, each with its split.
    """
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}.")
    rng = random.Random(seed)
    banned: set[tuple[str, ...]] = set()
    for text in exclude:
        banned |= shingles(text)
    if chat_source not in CHAT_SOURCES:
        raise ValueError(f"chat_source must be one of {CHAT_SOURCES}, got {chat_source!r}.")
    pools = dict(_candidate_pools(max_chars))
    if chat_source == "sharegpt":
        from sglang_dspark.train.sharegpt import sharegpt_pool

        pools["chat"] = sharegpt_pool(max_chars)

    chosen: dict[str, list[Prompt]] = {}
    seen: set[str] = set()
    for kind, wanted in (("chat", num_chat), ("code", num_code)):
        pool = pools[kind]
        order = list(range(len(pool)))
        rng.shuffle(order)
        picked: list[Prompt] = []
        per_source: dict[str, int] = {}
        for idx in order:
            if len(picked) >= wanted:
                break
            source, text = pool[idx]
            # At most two prompts per function/docstring keeps the corpus varied.
            if per_source.get(source, 0) >= (2 if source.startswith(("function:", "docstring:")) else 10**9):
                continue
            if text in seen or (banned and shingles(text) & banned):
                continue
            seen.add(text)
            per_source[source] = per_source.get(source, 0) + 1
            picked.append(
                Prompt(
                    id=f"{kind}-{_sha1(text)[:12]}",
                    kind=kind,
                    source=source,
                    text=text,
                    split=heldout_split(text, heldout_fraction),
                )
            )
        chosen[kind] = picked

    # Interleave chat and code in proportion, deterministically.
    out: list[Prompt] = []
    chat, code = chosen["chat"], chosen["code"]
    total = len(chat) + len(code)
    ci = di = 0
    for i in range(total):
        take_chat = di >= len(code) or (
            ci < len(chat) and ci * max(total, 1) <= i * len(chat)
        )
        if take_chat:
            out.append(chat[ci])
            ci += 1
        else:
            out.append(code[di])
            di += 1
    return out


def corpus_summary(prompts: Sequence[Prompt]) -> dict[str, int]:
    """Counts per kind and split."""
    summary: dict[str, int] = {}
    for prompt in prompts:
        key = f"{prompt.kind}/{prompt.split}"
        summary[key] = summary.get(key, 0) + 1
    return dict(sorted(summary.items()))
