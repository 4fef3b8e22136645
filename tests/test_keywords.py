"""Keyword engine: normalisation, matching per short code, config validation and reply templates."""

from __future__ import annotations

import textwrap
import tomllib
import unicodedata
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from keywords import (
    STANDARD_HELP,
    STANDARD_OPT_IN,
    STANDARD_OPT_OUT,
    CustomKeyword,
    Intent,
    KeywordMatcher,
    Match,
    ShortCodeKeywords,
    TemplateError,
    Templates,
    already_opted_out_reply,
    custom_reply,
    default_reply,
    help_reply,
    normalise,
    opt_in_confirmation,
    render,
    reply_fits_single_sms,
    reply_for,
    stop_confirmation,
    validate_template,
)
from keywords import config as config_module

SHORT_CODE = "12345"
OTHER_CODE = "67890"


def make_config(**overrides: Any) -> ShortCodeKeywords:
    """A realistic short code: two lists, Spanish extras, custom keywords; ``overrides`` replace fields."""
    fields: dict[str, Any] = {
        "program": "Acme Alerts",
        "contact": "support@example.com or 1-800-555-0100",
        "frequency": "Up to 4 msgs/week",
        "lists": [
            {"name": "news", "program": "Acme News", "join_keywords": ["NEWS"], "frequency": "Up to 4 msgs/week"},
            {
                "name": "deals",
                "program": "Acme Deals",
                "join_keywords": ["DEALS", "OFFERS"],
                "frequency": "Up to 2 msgs/week",
            },
        ],
        "default_list": "news",
        "extra_opt_out": ["PARAR", "cancelar", "Baja"],
        "extra_opt_in": ["ALTA"],
        "extra_help": ["AYUDA"],
        "custom": [
            {"word": "hours", "reply": "{program}: open 9-5 Mon-Fri. Reply HELP for help, STOP to cancel."},
            {"regex": r"ORDER\s*\d{6}", "forward_only": True},
            {"word": "VIP", "reply": "Welcome to {list_program}! Reply STOP to cancel.", "join": "deals"},
            {"word": "NO DEALS", "reply": "You left {list_program}.", "leave": "deals"},
            {"regex": r"promo-[a-z]+", "reply": "Promo {keyword} noted."},
        ],
    }
    fields.update(overrides)
    return ShortCodeKeywords.model_validate(fields)


@pytest.fixture(scope="module")
def cfg() -> ShortCodeKeywords:
    return make_config()


@pytest.fixture(scope="module")
def matcher(cfg: ShortCodeKeywords) -> KeywordMatcher:
    default = ShortCodeKeywords(program="Gateway", contact="help@example.com", frequency="Msg frequency varies")
    return KeywordMatcher({SHORT_CODE: cfg}, default)


@pytest.fixture(scope="module")
def phrase_matcher() -> KeywordMatcher:
    cfg = make_config(honour_opt_out_phrases=True)
    return KeywordMatcher({SHORT_CODE: cfg}, cfg)


# --- normalise -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("stop", "STOP"),
        (" Stop. ", "STOP"),
        ("STOP ALL", "STOP ALL"),
        ("stop   all", "STOP ALL"),
        ("ＳＴＯＰ", "STOP"),  # full-width, NFKC
        ("Unsubscribe", "UNSUBSCRIBE"),
        ("opt-out", "OPT-OUT"),  # inner hyphen kept
        ("opt–out", "OPT-OUT"),  # en dash from smart punctuation
        ("Opt Out", "OPT OUT"),
        ('"STOP"', "STOP"),
        ("“Stop”", "STOP"),  # curly quotes
        ("«stop»", "STOP"),  # guillemets
        ("'stop'", "STOP"),
        ("stop!!!", "STOP"),
        ("¡¿stop?!", "STOP"),
        ("STOP\n", "STOP"),
        ("\tSTOP\r\n", "STOP"),
        ("STOP\u00a0ALL", "STOP ALL"),  # NBSP
        ("STOP\u3000ALL", "STOP ALL"),  # ideographic space
        ("STOP \n\t ALL", "STOP ALL"),
        ("ST\u200bOP", "STOP"),  # zero-width space inside
        ("\ufeffSTOP", "STOP"),  # BOM
        ("STOP 👍", "STOP"),
        ("STOP ❤️", "STOP"),  # emoji + variation selector
        ("STOP 👍🏽", "STOP"),  # skin-tone modifier
        ("STOP 👨\u200d👩\u200d👧", "STOP"),  # ZWJ sequence
        ("STOP \U0001fae8", "STOP"),  # emoji possibly newer than this Python's Unicode database
        ("*STOP*", "STOP"),
        ("#STOP", "STOP"),
        ("don’t stop", "DON'T STOP"),  # curly apostrophe unified
        ("Straße", "STRASSE"),  # casefold
        ("Stop, please.", "STOP, PLEASE"),  # inner punctuation kept
        ("Café", "CAFÉ"),  # marks on letters kept
        ("...", ""),
        ("", ""),
        ("   ", ""),
    ],
)
def test_normalise(text: str, expected: str) -> None:
    assert normalise(text) == expected


@given(st.text())
@example("\u0345")  # combining ypogegrammeni: casefold + upper gives a letter NFKC changes again
@example("ǰ\u0301")
@example("\ud800STOP")  # lone surrogate (e.g. from a lenient decoder)
@example("ﬁ ﬀ ß ς İ")
def test_normalise_is_idempotent(text: str) -> None:
    once = normalise(text)
    assert normalise(once) == once


@given(st.text())
def test_normalise_result_has_no_surrounding_junk(text: str) -> None:
    result = normalise(text)
    assert result == result.strip()
    assert "  " not in result
    if result:
        assert unicodedata.category(result[0])[0] in "LN"
        # The last cluster's base is a letter or digit (its combining marks are kept with it).
        base = len(result) - 1
        while unicodedata.category(result[base])[0] == "M":
            base -= 1
        assert unicodedata.category(result[base])[0] in "LN"


# --- matching: the tables of the issue -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "stop",
        "STOP",
        " Stop. ",
        "ＳＴＯＰ",
        "Unsubscribe",
        "cancel",
        "End",
        "quit",
        "revoke",
        "optout",
        "opt-out",
        "Opt Out",
        "OPT—OUT",  # em dash
        '"STOP"',
        "stop!!!",
        "STOP\n",
        "Stop 🙏",
        "parar",  # Spanish extras
        "Cancelar",
        "BAJA.",
    ],
)
def test_opt_out_words(matcher: KeywordMatcher, text: str) -> None:
    match = matcher.match(SHORT_CODE, text)
    assert match.intent is Intent.OPT_OUT
    assert match.list_name is None
    assert not match.stop_all


@pytest.mark.parametrize("text", ["STOP ALL", "stopall", "StopAll!", "STOP\u00a0ALL", "stop\nall"])
def test_stop_all(matcher: KeywordMatcher, text: str) -> None:
    match = matcher.match(SHORT_CODE, text)
    assert match == Match(Intent.OPT_OUT, normalise(text), stop_all=True)


@pytest.mark.parametrize(
    ("text", "list_name"),
    [("STOP NEWS", "news"), ("stop deals", "deals"), ("Unsubscribe offers", "deals"), ("opt out news", "news")],
)
def test_opt_out_naming_a_list(matcher: KeywordMatcher, text: str, list_name: str) -> None:
    match = matcher.match(SHORT_CODE, text)
    assert (match.intent, match.list_name, match.stop_all) == (Intent.OPT_OUT, list_name, False)


def test_every_standard_word_matches_on_the_default_config(matcher: KeywordMatcher) -> None:
    for word in STANDARD_OPT_OUT:
        assert matcher.match(OTHER_CODE, word.lower()).intent is Intent.OPT_OUT, word
    for word in STANDARD_HELP:
        assert matcher.match(OTHER_CODE, word.lower()).intent is Intent.HELP, word
    for word in STANDARD_OPT_IN:
        assert matcher.match(OTHER_CODE, word.lower()).intent is Intent.OPT_IN, word


@pytest.mark.parametrize(
    ("text", "keyword"), [("HELP", "HELP"), ("help?", "HELP"), ("Info", "INFO"), ("ayuda", "AYUDA")]
)
def test_help(matcher: KeywordMatcher, text: str, keyword: str) -> None:
    assert matcher.match(SHORT_CODE, text) == Match(Intent.HELP, keyword)


@pytest.mark.parametrize(
    ("text", "keyword"), [("START", "START"), ("unstop", "UNSTOP"), ("Yes!", "YES"), ("alta", "ALTA")]
)
def test_opt_in_resubscribes_to_the_default_list(matcher: KeywordMatcher, text: str, keyword: str) -> None:
    assert matcher.match(SHORT_CODE, text) == Match(Intent.OPT_IN, keyword, "news")


@pytest.mark.parametrize(
    ("text", "keyword", "list_name"),
    [
        ("JOIN NEWS", "JOIN NEWS", "news"),
        ("join news", "JOIN NEWS", "news"),
        ("Join Deals!", "JOIN DEALS", "deals"),
        ("join offers", "JOIN OFFERS", "deals"),  # JOIN + a join keyword
        ("NEWS", "NEWS", "news"),  # dedicated join word
        ("offers", "OFFERS", "deals"),
        ("join", "JOIN", "news"),  # bare JOIN: the default list
    ],
)
def test_join(matcher: KeywordMatcher, text: str, keyword: str, list_name: str) -> None:
    assert matcher.match(SHORT_CODE, text) == Match(Intent.JOIN, keyword, list_name)


def test_join_unknown_list_is_other(matcher: KeywordMatcher) -> None:
    assert matcher.match(SHORT_CODE, "JOIN SPORTS") == Match(Intent.OTHER, "JOIN SPORTS")


def test_opt_in_without_default_list() -> None:
    cfg = make_config(default_list=None)
    matcher = KeywordMatcher({}, cfg)
    assert matcher.match(SHORT_CODE, "START") == Match(Intent.OPT_IN, "START", None)
    assert matcher.match(SHORT_CODE, "JOIN").intent is Intent.OTHER  # two lists, no default: ambiguous


def test_single_list_is_the_default() -> None:
    cfg = make_config(
        default_list=None, lists=[{"name": "news", "program": "Acme News", "frequency": "1 msg/day"}], custom=[]
    )
    assert cfg.effective_default_list == "news"
    matcher = KeywordMatcher({}, cfg)
    assert matcher.match(SHORT_CODE, "YES") == Match(Intent.OPT_IN, "YES", "news")
    assert matcher.match(SHORT_CODE, "JOIN") == Match(Intent.JOIN, "JOIN", "news")


@pytest.mark.parametrize(
    ("text", "index", "list_name"),
    [
        ("hours", 0, None),
        ("Hours?", 0, None),
        ("order 123456", 1, None),  # regex fullmatch on the normalised text
        ("ORDER123456", 1, None),
        ("VIP", 2, "deals"),
        ("no deals", 3, "deals"),
        ("promo-spring", 4, None),  # regex written in lower case: compiled case-insensitively
    ],
)
def test_custom(matcher: KeywordMatcher, cfg: ShortCodeKeywords, text: str, index: int, list_name: str | None) -> None:
    match = matcher.match(SHORT_CODE, text)
    assert match.intent is Intent.CUSTOM
    assert match.custom is cfg.custom[index]
    assert match.list_name == list_name


@pytest.mark.parametrize("text", ["order 12345", "my order 123456", "hours please", "promo-"])
def test_custom_needs_whole_match(matcher: KeywordMatcher, text: str) -> None:
    assert matcher.match(SHORT_CODE, text).intent is Intent.OTHER


def test_unknown_short_code_uses_default(matcher: KeywordMatcher) -> None:
    assert matcher.match(OTHER_CODE, "NEWS").intent is Intent.OTHER  # lists belong to 12345 only
    assert matcher.match(OTHER_CODE, "PARAR").intent is Intent.OTHER
    assert matcher.match(OTHER_CODE, "STOP").intent is Intent.OPT_OUT
    assert matcher.match(OTHER_CODE, "YES") == Match(Intent.OPT_IN, "YES", None)
    assert matcher.config_for(OTHER_CODE).program == "Gateway"
    assert matcher.config_for(SHORT_CODE).program == "Acme Alerts"


def test_precedence_opt_out_beats_custom_regex() -> None:
    # A catch-all regex never swallows the compliance keywords.
    cfg = make_config(custom=[{"regex": ".*", "forward_only": True}])
    matcher = KeywordMatcher({}, cfg)
    assert matcher.match(SHORT_CODE, "stop").intent is Intent.OPT_OUT
    assert matcher.match(SHORT_CODE, "help").intent is Intent.HELP
    assert matcher.match(SHORT_CODE, "yes").intent is Intent.OPT_IN
    assert matcher.match(SHORT_CODE, "join deals").intent is Intent.JOIN
    assert matcher.match(SHORT_CODE, "anything").intent is Intent.CUSTOM
    assert matcher.match(SHORT_CODE, "!!!").intent is Intent.OTHER  # empty after normalising: never a keyword


# --- opt-out phrases -----------------------------------------------------------------------------------------

OPT_OUT_PHRASES = [
    "STOP PLEASE",
    "stop, please!",
    "Please stop",
    "pls stop",
    "please stop texting me",
    "Stop texting me",
    "stop messaging me",
    "Stop sending me messages",
    "stop sending texts",
    "stop it",
    "stop now",
    "Stop. Thank you",
    "stop receiving these messages",
    "unsubscribe me",
    "Unsubscribe me please",
    "unsubscribe me from this list",
    "I want to unsubscribe",
    "I'd like to opt out",
    "remove me",
    "Remove me from your list",
    "please remove me from your mailing list",
    "take me off your list",
    "Take me off your list, thanks!",
    "take me off",
    "opt me out",
    "do not text me",
    "Don’t text me again",
    "no more texts",
    "cancel please",
    "parar please",  # extras take filler too
]
OPT_OUT_PHRASES_STOP_ALL = ["stop all messages", "stop all please", "stopall now"]

NOT_OPT_OUT = [
    "don't stop",
    "Don’t stop!",
    "please don't stop",
    "don't stop texting me",
    "do not stop",
    "stop by later",
    "Stop by the store",
    "I can't stop laughing",
    "stopwatch",
    "stops",
    "when does it stop",
    "I want to stop by",
    "cancel my order",
    "the end",
    "end of story",
    "quit smoking",
    "remove me from the group chat",
    "take me off the schedule",
    "help me with my order",
    "yes please",
    "no",
    "please text me",
]


@pytest.mark.parametrize("text", OPT_OUT_PHRASES + OPT_OUT_PHRASES_STOP_ALL)
def test_phrases_are_other_by_default(matcher: KeywordMatcher, text: str) -> None:
    assert matcher.match(SHORT_CODE, text).intent is Intent.OTHER


@pytest.mark.parametrize("text", OPT_OUT_PHRASES)
def test_phrases_opt_out_when_honoured(phrase_matcher: KeywordMatcher, text: str) -> None:
    match = phrase_matcher.match(SHORT_CODE, text)
    assert match == Match(Intent.OPT_OUT, normalise(text))


@pytest.mark.parametrize("text", OPT_OUT_PHRASES_STOP_ALL)
def test_stop_all_phrases(phrase_matcher: KeywordMatcher, text: str) -> None:
    match = phrase_matcher.match(SHORT_CODE, text)
    assert (match.intent, match.stop_all) == (Intent.OPT_OUT, True)


@pytest.mark.parametrize("text", NOT_OPT_OUT)
def test_not_opt_out_even_with_phrases(matcher: KeywordMatcher, phrase_matcher: KeywordMatcher, text: str) -> None:
    assert matcher.match(SHORT_CODE, text).intent is not Intent.OPT_OUT
    assert phrase_matcher.match(SHORT_CODE, text).intent is not Intent.OPT_OUT


def test_help_is_whole_message(phrase_matcher: KeywordMatcher) -> None:
    assert phrase_matcher.match(SHORT_CODE, "help me with my order") == Match(Intent.OTHER, "HELP ME WITH MY ORDER")
    assert phrase_matcher.match(SHORT_CODE, "yes please").intent is Intent.OTHER


@given(short_code=st.sampled_from([SHORT_CODE, OTHER_CODE, ""]), text=st.text())
@example(short_code=SHORT_CODE, text="\ud800")
@example(short_code=SHORT_CODE, text="STOP " * 2000)
@example(short_code=SHORT_CODE, text="please " * 500 + "stop")
@settings(max_examples=300)
def test_matching_never_raises(
    matcher: KeywordMatcher, phrase_matcher: KeywordMatcher, short_code: str, text: str
) -> None:
    for m in (matcher, phrase_matcher):
        match = m.match(short_code, text)
        assert isinstance(match.intent, Intent)
        assert match.keyword == normalise(match.keyword)


@given(st.sampled_from(sorted(STANDARD_OPT_OUT)), st.sampled_from(["", " ", ".", "!", '"', "\n", "\u00a0", "🛑"]))
def test_opt_out_survives_decoration(word: str, decoration: str) -> None:
    cfg = make_config()
    matcher = KeywordMatcher({}, cfg)
    text = f"{decoration}{word.lower()}{decoration}"
    assert matcher.match(SHORT_CODE, text).intent is Intent.OPT_OUT


# --- config validation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"lists": [{"name": "news", "program": "A", "frequency": "f"}] * 2}, "'news' is used more than once"),
        ({"default_list": "sports"}, "default_list: 'sports' is not one of the lists"),
        ({"lists": [{"name": "News", "program": "A", "frequency": "f"}], "default_list": None}, "lower-case id"),
        (
            {"lists": [{"name": "news", "program": "A", "frequency": "f", "join_keywords": ["help"]}]},
            "'HELP' is already a standard help keyword",
        ),
        (
            {"lists": [{"name": "news", "program": "A", "frequency": "f", "join_keywords": ["Stop!"]}]},
            "'STOP' is already a standard opt-out keyword",
        ),
        (
            {"lists": [{"name": "news", "program": "A", "frequency": "f", "join_keywords": ["JOIN"]}]},
            "already the JOIN keyword",
        ),
        (
            {
                "lists": [
                    {"name": "news", "program": "A", "frequency": "f", "join_keywords": ["GO"]},
                    {"name": "deals", "program": "B", "frequency": "f", "join_keywords": ["go"]},
                ]
            },
            "'GO' is already a join keyword of list 'news'",
        ),
        (
            {
                "lists": [
                    {"name": "news", "program": "A", "frequency": "f"},
                    {"name": "deals", "program": "B", "frequency": "f", "join_keywords": ["NEWS"]},
                ]
            },
            "'NEWS' already names list 'news'",
        ),
        ({"lists": [{"name": "all", "program": "A", "frequency": "f"}], "default_list": None}, "'STOP ALL' is already"),
        ({"extra_opt_out": ["YES"]}, "'YES' is already a standard opt-in keyword"),
        ({"extra_help": ["baja"]}, "'BAJA' is already an opt-out keyword"),
        ({"extra_opt_in": ["!!!"]}, "is empty once normalised"),
        ({"custom": [{"word": "help", "reply": "x"}]}, "'HELP' is already a standard help keyword"),
        ({"custom": [{"word": "news", "reply": "x"}]}, "'NEWS' is already a join keyword"),
        ({"custom": [{"word": "join deals", "reply": "x"}]}, "'JOIN DEALS' is already"),
        ({"custom": [{"word": "stop news", "reply": "x"}]}, "is already an opt-out naming list 'news'"),
        ({"custom": [{"word": "A", "reply": "x"}, {"word": "a", "reply": "y"}]}, "'A' is already custom keyword"),
        ({"custom": [{"word": "A", "reply": "x", "join": "sports"}]}, "join 'sports' is not one of the lists"),
        ({"custom": [{"word": "A", "reply": "x", "leave": "sports"}]}, "leave 'sports' is not one of the lists"),
        ({"custom": [{"word": "A", "regex": "A", "reply": "x"}]}, "exactly one of 'word' or 'regex'"),
        ({"custom": [{"reply": "x"}]}, "exactly one of 'word' or 'regex'"),
        ({"custom": [{"regex": "(", "reply": "x"}]}, "does not compile"),
        ({"custom": [{"word": "A"}]}, "needs 'reply'"),
        ({"custom": [{"word": "A", "leave": "news"}]}, "needs 'reply'"),
        ({"custom": [{"word": "A", "reply": "x", "forward_only": True}]}, "forward_only"),
        ({"custom": [{"word": "A", "reply": "x", "join": "news", "leave": "news"}]}, "same list"),
        ({"custom": [{"word": "A", "reply": "{list_program}"}]}, "unknown placeholder(s) {list_program}"),
        ({"custom": [{"word": "A", "reply": "x", "colour": "red"}]}, "Extra inputs are not permitted"),
        ({"templates": {"help": "{program} {phone}"}}, "help: unknown placeholder(s) {phone}"),
        ({"templates": {"stop_confirmation": "{list_program}"}}, "stop_confirmation: unknown placeholder(s)"),
        ({"templates": {"opt_in_confirmation": "{program.__class__}"}}, "not a plain placeholder name"),
        ({"templates": {"help": "{program!r}"}}, "conversion or format spec"),
        ({"templates": {"help": "{program:>10}"}}, "conversion or format spec"),
        ({"templates": {"help": "{}"}}, "not a plain placeholder name"),
        ({"templates": {"help": "{program"}}, "malformed template"),
        ({"templates": {"already_opted_out": "{oops}"}}, "already_opted_out: unknown placeholder(s) {oops}"),
        ({"templates": {"halp": "x"}}, "Extra inputs are not permitted"),
        ({"default_reply": "Thanks! {contact} {list}"}, "default_reply: unknown placeholder(s) {list}"),
        ({"program": ""}, "at least 1 character"),
        ({"colour": "red"}, "Extra inputs are not permitted"),
    ],
)
def test_config_errors(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        make_config(**overrides)
    assert message in str(info.value)


def test_config_normalises_and_freezes(cfg: ShortCodeKeywords) -> None:
    assert cfg.extra_opt_out == ("PARAR", "CANCELAR", "BAJA")
    assert cfg.custom[0].word == "HOURS"
    assert cfg.lists[1].join_keywords == ("DEALS", "OFFERS")
    assert "PARAR" in cfg.opt_out_words and "STOP" in cfg.opt_out_words
    with pytest.raises(ValidationError):
        cfg.program = "x"  # type: ignore[misc]
    with pytest.raises(KeyError):
        cfg.list_named("sports")


def test_config_from_toml() -> None:
    # The example in keywords/config.py's docstring is real TOML that loads.
    doc = config_module.__doc__ or ""
    toml_text = textwrap.dedent(doc[doc.index("Example::") + len("Example::") :])
    table = tomllib.loads(toml_text)["keywords"]
    configs = {code: ShortCodeKeywords.model_validate(value) for code, value in table.items()}
    matcher = KeywordMatcher(configs, configs[SHORT_CODE])
    assert matcher.match(SHORT_CODE, "baja") == Match(Intent.OPT_OUT, "BAJA")
    assert matcher.match(SHORT_CODE, "order 123456").intent is Intent.CUSTOM


def test_custom_keyword_standalone() -> None:
    custom = CustomKeyword(regex=r"code \d+", forward_only=True)
    pattern = custom.pattern()
    assert pattern is not None and pattern.fullmatch("CODE 42")
    assert CustomKeyword(word="x", reply="y").pattern() is None


# --- templates -----------------------------------------------------------------------------------------------


def test_default_replies(cfg: ShortCodeKeywords) -> None:
    assert stop_confirmation(cfg) == (
        "You are unsubscribed from Acme Alerts. No more messages will be sent. Reply HELP for help."
    )
    assert help_reply(cfg) == (
        "Acme Alerts: help at support@example.com or 1-800-555-0100. Msg&data rates may apply. "
        "Up to 4 msgs/week. Reply STOP to cancel."
    )
    assert opt_in_confirmation(cfg, "deals") == (
        "Acme Alerts: you are subscribed to Acme Deals. Up to 2 msgs/week. Msg&data rates may apply. "
        "Reply HELP for help, STOP to cancel."
    )
    assert opt_in_confirmation(cfg, cfg.lists[0]) == opt_in_confirmation(cfg, "news")
    assert "subscribed to Acme Alerts. Up to 4 msgs/week." in opt_in_confirmation(cfg, None)
    assert already_opted_out_reply(cfg) is None
    assert default_reply(cfg, keyword="HI") is None
    for reply in (stop_confirmation(cfg), help_reply(cfg), opt_in_confirmation(cfg, "deals")):
        assert reply_fits_single_sms(reply)


def test_reply_for(matcher: KeywordMatcher, cfg: ShortCodeKeywords) -> None:
    def reply(text: str, **kwargs: bool) -> str | None:
        return reply_for(cfg, matcher.match(SHORT_CODE, text), **kwargs)

    assert reply("stop") == stop_confirmation(cfg)
    assert reply("stop", already_opted_out=True) is None
    assert reply("info") == help_reply(cfg)
    assert reply("yes") == opt_in_confirmation(cfg, "news")
    assert reply("join offers") == opt_in_confirmation(cfg, "deals")
    assert reply("hours") == "Acme Alerts: open 9-5 Mon-Fri. Reply HELP for help, STOP to cancel."
    assert reply("vip") == "Welcome to Acme Deals! Reply STOP to cancel."
    assert reply("no deals") == "You left Acme Deals."
    assert reply("promo-spring") == "Promo PROMO-SPRING noted."
    assert reply("order 123456") is None  # forward only
    assert reply("hello there") is None  # default reply is off by default


def test_reply_for_optional_templates() -> None:
    cfg = make_config(
        default_reply="{program}: we got your message. Reply HELP for help.",
        templates=Templates(already_opted_out="You are already unsubscribed from {program}."),
        custom=[{"word": "GO", "join": "deals"}],
    )
    matcher = KeywordMatcher({}, cfg)
    assert reply_for(cfg, matcher.match(SHORT_CODE, "hi")) == "Acme Alerts: we got your message. Reply HELP for help."
    opted_out = reply_for(cfg, matcher.match(SHORT_CODE, "stop"), already_opted_out=True)
    assert opted_out == "You are already unsubscribed from Acme Alerts."
    # A joining keyword without its own reply still confirms the opt-in.
    assert reply_for(cfg, matcher.match(SHORT_CODE, "go")) == opt_in_confirmation(cfg, "deals")
    assert custom_reply(cfg, cfg.custom[0], keyword="GO") == opt_in_confirmation(cfg, "deals")


def test_render() -> None:
    assert render("{program}: {{literal}} {keyword}", program="Acme", keyword="STOP", unused=1) == (
        "Acme: {literal} STOP"
    )
    assert render("no fields") == "no fields"
    with pytest.raises(TemplateError, match=r"needs \{contact\}"):
        render("{contact}", program="Acme")
    with pytest.raises(TemplateError, match="not a plain placeholder"):
        render("{program.upper}", program="Acme")
    with pytest.raises(TemplateError, match="malformed"):
        render("}{")


def test_validate_template() -> None:
    validate_template("{program} {list}")
    validate_template("{program}", {"program"})
    with pytest.raises(TemplateError, match=r"where: unknown placeholder\(s\) \{list\}"):
        validate_template("{list}", {"program"}, where="where")


@pytest.mark.parametrize(
    ("text", "fits"),
    [
        ("x" * 160, True),
        ("x" * 161, False),
        ("€" * 80, True),  # extension character: two septets each
        ("€" * 81, False),
        ("é" * 160, True),  # é is in the GSM-7 default alphabet
        ("ą" * 70, True),  # UCS-2: 70 units
        ("ą" * 71, False),
        ("\ud800", False),
    ],
)
def test_reply_fits_single_sms(text: str, fits: bool) -> None:
    assert reply_fits_single_sms(text) is fits
