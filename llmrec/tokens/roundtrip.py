"""Check that every item's SID tokenises to exactly its code tokens, in the prompts we really use.

A SID that a tokenizer splits (``<a_1>`` → ``<a`` ``_1>``) or merges with its neighbours (``><``,
``>,``, ``:<``) silently breaks training targets, constrained decoding and evaluation at once,
and which merges happen depends on the surrounding text (``:<`` after a colon, ``Ġ<`` after a
space, ``>,`` before a comma). So the check tokenises each SID after and before the text that
surrounds it in prompts and in the chat template, batch by batch, and looks for the exact id
sequence.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from llmrec.errors import UserError
from llmrec.indexing.sid_map import SemanticIdMap

logger = logging.getLogger(__name__)

__all__ = [
    "RoundTripFailure",
    "RoundTripReport",
    "TokenizationError",
    "default_contexts",
    "require_sid_roundtrip",
    "verify_sid_roundtrip",
]

_ADVICE = "add them with add_sid_tokens()"
_CHAT_USER = "Recommend the next item."


class TokenizationError(UserError):
    """The tokenizer does not keep SIDs as exactly their code tokens."""


@dataclass(frozen=True)
class RoundTripFailure:
    """One SID (or one vocabulary token, ``item_id=None``) that did not round-trip."""

    item_id: str | None
    sid: str
    context: str
    expected: tuple[str, ...]
    got: tuple[str, ...]
    problem: str

    def message(self) -> str:
        """A sentence naming the item, the context and what came out."""
        if self.item_id is None:
            return f"SID token {self.sid!r} {self.context} {self.problem}"
        return f"item {self.item_id!r} SID {self.sid!r} {self.context} {self.problem}"


@dataclass(frozen=True)
class RoundTripReport:
    """How many SIDs were checked in how many contexts, and the first failures."""

    n_items: int
    n_checked: int
    n_failed: int
    failures: tuple[RoundTripFailure, ...]
    contexts: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """True when every check passed."""
        return self.n_failed == 0

    def summary(self) -> str:
        """One line, then one line per recorded failure."""
        head = (
            f"SID round trip: {self.n_items} items, {self.n_checked} checks in "
            f"{len(self.contexts)} contexts, {self.n_failed} failed"
        )
        return "\n".join([head, *("  " + f.message() for f in self.failures)])


def default_contexts(tokenizer: Any) -> list[tuple[str, str]]:
    """(text before, text after) pairs a SID meets in prompts and completions."""
    eos = getattr(tokenizer, "eos_token", None) or ""
    return [
        ("", ""),
        ("Response:", ""),
        ("Response: ", ","),
        ("### Response:\n", "\n"),
        (" ", str(eos)),
        ("History: ", ", then"),
    ]


def verify_sid_roundtrip(
    tokenizer: Any,
    sid_map: SemanticIdMap,
    *,
    contexts: Sequence[tuple[str, str]] | None = None,
    chat: bool = True,
    check_decode: bool = True,
    max_items: int | None = None,
    batch_size: int = 512,
    max_failures: int = 10,
) -> RoundTripReport:
    """Tokenise every item's SID alone, in ``contexts`` and in the chat template; report failures."""
    contexts = list(default_contexts(tokenizer) if contexts is None else contexts)
    if max_items is not None and max_items < len(sid_map):
        step = len(sid_map) / max(max_items, 1)  # evenly spread, deterministic
        picked = sorted({int(k * step) for k in range(max_items)})
    else:
        picked = list(range(len(sid_map)))
    all_sids = sid_map.all_sids()
    vocabulary = sid_map.vocabulary()
    unk = getattr(tokenizer, "unk_token_id", None)
    raw_ids = tokenizer.convert_tokens_to_ids(vocabulary)
    id_of: dict[str, int | None] = {
        tok: (None if i is None or i == unk else int(i))
        for tok, i in zip(vocabulary, raw_ids, strict=True)
    }
    check = _Checker(
        tokenizer,
        items=[sid_map.item_ids[r] for r in picked],
        sids=[all_sids[r] for r in picked],
        tokens=[tuple(sid_map.tokens_of(sid_map.item_ids[r])) for r in picked],
        id_of=id_of,
        batch_size=batch_size,
        max_failures=max_failures,
    )
    sids = check.sids

    # Items first, so that the first failure names an item: 1. in text contexts, 2. in the
    # chat template (the rendered text holds its own BOS and role tokens).
    labels: list[str] = []
    for before, after in contexts:
        labels.append(_describe(before, after))
        texts = [before + sid + after for sid in sids]
        check.texts(texts, [len(before)] * len(sids), labels[-1], add_special_tokens=True)
    if chat and getattr(tokenizer, "chat_template", None):
        for label, make in (
            ("in the chat template's assistant message", _assistant_chat),
            ("in the chat template's user message", _user_chat),
        ):
            labels.append(label)
            texts = [
                str(text)
                for batch in _batches([make(sid) for sid in sids], batch_size)
                for text in tokenizer.apply_chat_template(batch, tokenize=False)
            ]
            starts = [text.find(sid) for text, sid in zip(texts, sids, strict=True)]
            check.texts(texts, starts, label, add_special_tokens=False)
    # 3. The ids of a SID decode to the SID.
    if check_decode:
        labels.append("decoded")
        check.decoding()
    # 4. Each vocabulary token alone is one token: codes no item uses yet must work too.
    labels.append("vocabulary token alone")
    check.vocabulary(vocabulary)

    report = RoundTripReport(
        n_items=len(picked),
        n_checked=check.n_checked,
        n_failed=check.n_failed,
        failures=tuple(check.failures),
        contexts=tuple(labels),
    )
    # The summary's head and first failures; the report holds the rest.
    (logger.info if report.ok else logger.warning)(
        "%s", "\n".join(report.summary().split("\n")[:4])
    )
    return report


def require_sid_roundtrip(
    tokenizer: Any,
    sid_map: SemanticIdMap,
    *,
    contexts: Sequence[tuple[str, str]] | None = None,
    chat: bool = True,
    check_decode: bool = True,
    max_items: int | None = None,
    batch_size: int = 512,
) -> RoundTripReport:
    """:func:`verify_sid_roundtrip`, raising :class:`TokenizationError` on the first failure."""
    report = verify_sid_roundtrip(
        tokenizer,
        sid_map,
        contexts=contexts,
        chat=chat,
        check_decode=check_decode,
        max_items=max_items,
        batch_size=batch_size,
    )
    if not report.ok:
        more = report.n_failed - 1
        raise TokenizationError(
            report.failures[0].message()
            + (f" ({more} more failures of {report.n_checked} checks)" if more else "")
        )
    return report


# ---- internals -----------------------------------------------------------------------------


class _Checker:
    """Runs the checks on the picked items; counts them and keeps the first failures."""

    def __init__(
        self,
        tokenizer: Any,
        *,
        items: list[str],
        sids: list[str],
        tokens: list[tuple[str, ...]],
        id_of: dict[str, int | None],
        batch_size: int,
        max_failures: int,
    ) -> None:
        self.tokenizer = tokenizer
        self.items, self.sids, self.tokens, self.id_of = items, sids, tokens, id_of
        self.expected = [[id_of[t] for t in toks] for toks in tokens]
        self.batch_size = batch_size
        self.max_failures = max_failures
        self.n_checked = 0
        self.n_failed = 0
        self.failures: list[RoundTripFailure] = []

    def fail(
        self, k: int | None, context: str, got: tuple[str, ...], problem: str, token: str = ""
    ) -> None:
        """Record a failure of item ``k`` (or of vocabulary ``token`` when ``k`` is None)."""
        self.n_failed += 1
        if len(self.failures) < self.max_failures:
            failure = (
                RoundTripFailure(None, token, context, (token,), got, problem)
                if k is None
                else RoundTripFailure(
                    self.items[k], self.sids[k], context, self.tokens[k], got, problem
                )
            )
            self.failures.append(failure)

    def texts(
        self, texts: list[str], starts: list[int], label: str, *, add_special_tokens: bool
    ) -> None:
        """Item ``k``'s SID, at ``starts[k]`` in ``texts[k]``, is exactly its token ids."""
        enc = _encode(self.tokenizer, texts, self.batch_size, add_special_tokens=add_special_tokens)
        for k, (ids, offsets) in enumerate(enc):
            self.n_checked += 1
            want = self.expected[k]
            if starts[k] < 0:
                self.fail(k, label, (), "is not kept verbatim by the chat template")
            elif None in want or not _contains(ids, want):  # type: ignore[arg-type]
                got = _tokens_over(self.tokenizer, ids, offsets, starts[k], len(self.sids[k]))
                self.fail(k, label, got, _problem(self.tokens[k], got, self.id_of))

    def decoding(self) -> None:
        """Each SID's ids decode to the SID string."""
        complete = [k for k, ids in enumerate(self.expected) if None not in ids]
        if not complete:  # nothing to decode; the other checks already report the missing tokens
            return
        decoded = self.tokenizer.batch_decode([self.expected[k] for k in complete])
        for k, text in zip(complete, decoded, strict=True):
            self.n_checked += 1
            if text != self.sids[k]:
                self.fail(k, "as ids", self.tokens[k], f"decodes as {text!r}")

    def vocabulary(self, vocabulary: list[str]) -> None:
        """Each vocabulary token alone is its one id."""
        enc = _encode(self.tokenizer, vocabulary, self.batch_size, add_special_tokens=False)
        for tok, (ids, _) in zip(vocabulary, enc, strict=True):
            self.n_checked += 1
            if self.id_of[tok] is None or ids != [self.id_of[tok]]:
                got = tuple(self.tokenizer.convert_ids_to_tokens(ids))
                self.fail(None, "on its own", got, _problem((tok,), got, self.id_of), token=tok)


def _problem(expected: tuple[str, ...], got: tuple[str, ...], id_of: dict[str, int | None]) -> str:
    missing = [t for t in expected if id_of.get(t) is None]
    n = len(expected)
    head = f"tokenises as {list(got)}; expected {n} token{'s' if n > 1 else ''} {list(expected)}"
    if missing:
        return f"{head}: {missing[:3]} not in the tokenizer's vocabulary — {_ADVICE}"
    return f"{head}: the tokenizer splits or merges SID tokens — {_ADVICE}"


def _describe(before: str, after: str) -> str:
    if not before and not after:
        return "on its own"
    parts = [f"after {before!r}"] if before else []
    parts += [f"before {after!r}"] if after else []
    return " and ".join(parts)


def _assistant_chat(sid: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": _CHAT_USER}, {"role": "assistant", "content": sid}]


def _user_chat(sid: str) -> list[dict[str, str]]:
    return [
        {"role": "user", "content": f"I liked {sid}, then? " + _CHAT_USER},
        {"role": "assistant", "content": "OK."},
    ]


def _batches(values: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _encode(
    tokenizer: Any, texts: list[str], batch_size: int, *, add_special_tokens: bool
) -> list[tuple[list[int], list[tuple[int, int]] | None]]:
    """Ids (and character offsets where the tokenizer can give them) of each text."""
    fast = bool(getattr(tokenizer, "is_fast", False))
    out: list[tuple[list[int], list[tuple[int, int]] | None]] = []
    for batch in _batches(texts, batch_size):
        enc = tokenizer(batch, add_special_tokens=add_special_tokens, return_offsets_mapping=fast)
        offsets = enc["offset_mapping"] if fast else [None] * len(batch)
        out.extend(
            (list(ids), [tuple(o) for o in offs] if offs is not None else None)
            for ids, offs in zip(enc["input_ids"], offsets, strict=True)
        )
    return out


def _contains(seq: list[int], sub: list[int]) -> bool:
    n = len(sub)
    return any(seq[i : i + n] == sub for i in range(len(seq) - n + 1) if seq[i] == sub[0])


def _tokens_over(
    tokenizer: Any, ids: list[int], offsets: list[tuple[int, int]] | None, start: int, length: int
) -> tuple[str, ...]:
    """The tokens that cover the SID's characters (all tokens when offsets are unknown)."""
    tokens = tokenizer.convert_ids_to_tokens(ids)
    if offsets is None:
        return tuple(tokens[:40])
    end = start + length
    return tuple(
        tok for tok, (a, b) in zip(tokens, offsets, strict=True) if b > a and a < end and b > start
    )
