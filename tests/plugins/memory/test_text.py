# ruff: noqa: RUF001
"""Normalisation, explicit-request patterns and parsing of the LLM's facts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plugins.memory.extract import explicit_facts, parse_facts
from plugins.memory.normalize import clean, memory_id, normalize


@pytest.mark.parametrize(("a", "b"), [
    ("İstanbul'da yaşıyorum.", "ISTANBUL’DA   YAŞIYORUM!"),
    ("Işık", "ışık"),
    ("IŞIK", "işik"),
    ("ﬁsh\u00a0and chips", "FISH AND CHIPS"),
    ("Ａｄａ", "ada"),
    ("My name is  Ada — really", "my name is ada really"),
    ("e\u0301te\u0301", "été"),
])
def test_same_words_normalise_alike(a: str, b: str) -> None:
    assert normalize(a) == normalize(b)


@pytest.mark.parametrize(("a", "b"), [
    ("Kedimin adı Pamuk", "Köpeğimin adı Pamuk"),
    ("şeker", "seker"),  # only the i's fold; other Turkish letters stay distinct
    ("I like tea", "I like teal"),
])
def test_different_words_stay_apart(a: str, b: str) -> None:
    assert normalize(a) != normalize(b)


def test_no_combining_dot_survives() -> None:
    assert normalize("İİ") == "ii" and "\u0307" not in normalize("İZMİR")


@given(st.text())
def test_normalize_is_idempotent(text: str) -> None:
    once = normalize(text)
    assert normalize(once) == once
    assert once == once.strip() and "  " not in once


def test_memory_ids_are_deterministic_per_owner() -> None:
    key = normalize("My cat is Pamuk")
    assert memory_id("alice", key) == memory_id("alice", normalize("my CAT is pamuk!"))
    assert memory_id("alice", key) != memory_id("bob", key)
    assert len(memory_id("alice", key)) == 32
    assert clean("  two\n\tlines  ") == "two lines"


@pytest.mark.parametrize(("text", "facts"), [
    ("Remember that my cat is called Pamuk.", ["my cat is called Pamuk"]),
    ("Hi! Please remember that I am vegetarian. What should I cook?", ["I am vegetarian"]),
    ("remember: I live in Berlin", ["I live in Berlin"]),
    ("Can you remember that my son is 7?", ["my son is 7"]),
    ("Don't forget that I start work at 9.", ["I start work at 9"]),
    ("My wife is Sarah. Remember this.", ["My wife is Sarah"]),
    ("My wife is Sarah, remember!", ["My wife is Sarah"]),
    ("Hatırla ki kedimin adı Pamuk.", ["kedimin adı Pamuk"]),
    ("HATIRLA KI ISTANBULDA YASIYORUM", ["ISTANBULDA YASIYORUM"]),
    ("hatirla ki sut icmem", ["sut icmem"]),
    ("Kedimin adı Pamuk, bunu hatırla.", ["Kedimin adı Pamuk"]),
    ("Fıstık alerjim var lütfen hatırla", ["Fıstık alerjim var"]),
    ("Vejetaryenim. Bunu hatırla.", ["Vejetaryenim"]),
    ("Şunu hatırla: İzmir'de doğdum", ["İzmir'de doğdum"]),
    ("Kızım yedi yaşında, hatırlar mısın?", ["Kızım yedi yaşında"]),
    ("Unutma: salı günleri yüzerim", ["salı günleri yüzerim"]),
    ("Keep in mind that I am left-handed.", ["I am left-handed"]),
    ("Eşimin adı Deniz, bunu aklında tut.", ["Eşimin adı Deniz"]),
    ("Remember that I like tea.\nAlso remember that I hate coffee.",
     ["I like tea", "I hate coffee"]),
])
def test_explicit_requests_are_found(text: str, facts: list[str]) -> None:
    assert explicit_facts(text) == facts


@pytest.mark.parametrize("text", [
    "Do you remember that I live in Berlin?",
    "I remember that day well.",
    "What is the weather?",
    "Adımı hatırla",
    "Bunu hatırla",
    "Remember this.",
    "Dün ne konuştuğumuzu hatırlıyor musun?",
    "",
])
def test_other_messages_are_not_requests(text: str) -> None:
    assert explicit_facts(text) == []


@pytest.mark.parametrize(("output", "facts"), [
    ('{"facts": ["My cat is Pamuk", "I like tea"]}', ["My cat is Pamuk", "I like tea"]),
    ('```json\n{"facts": ["Kedimin adı Pamuk."]}\n```', ["Kedimin adı Pamuk"]),
    ('Sure! Here they are: ["a fact", "  "]', ["a fact"]),
    ('{"facts": []}', []),
])
def test_llm_facts_are_parsed(output: str, facts: list[str]) -> None:
    assert parse_facts(output) == facts


@pytest.mark.parametrize("output", [
    "", "no JSON here", '{"facts": [', '{"facts": "one"}', '{"facts": [1, 2]}', '{"x": []}',
    '{"facts": [["nested"]]}',
])
def test_malformed_llm_output_is_rejected(output: str) -> None:
    assert parse_facts(output) is None
