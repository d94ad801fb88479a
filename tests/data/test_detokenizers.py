"""Zero-shot detokenizers and presets (ddlm.data.detokenizers), on small strings."""

import pytest
from _corpus import write_jsonl

from ddlm.data import detokenizers as d
from ddlm.data.prepare_corpus import prepare_corpus
from ddlm.data.prepared import open_prepared


def test_ptb():
    assert d.ptb("the company 's N shares were n't sold") == "the company's 1 shares weren't sold"
    assert d.ptb(" N N N N ") == " 1 1 1 1 "  # adjacent N's need the repeated passes
    assert d.ptb("<unk> costs $ N and a\\/b") == "? costs $1 and a/b"
    assert d.ptb("the players ' union") == "the players' union"


def test_wikitext():
    assert d.wikitext("1 @,@ 000 @.@ 5 km @-@ long") == "1,000.5 km-long"
    assert d.wikitext(" = = Early life = = \n") == " == Early life ==\n"
    assert d.wikitext("he said ( in 1990 ) that , yes") == "he said (in 1990) that, yes"
    assert d.wikitext("the dog 's bone , 5 ° C") == "the dog's bone, 5°C"
    assert d.wikitext("\" quoted text \" here") == '"quoted text" here'
    assert d.wikitext("/' 5/") == "/'[0-9]/"  # the published rule's literal replacement, kept as is


def test_lm1b():
    assert d.lm1b("see http : / / example.com , now .") == "see http://example.com, now."
    assert d.lm1b("I do n't know what he 's doing ?") == "I do n't know what he's doing?"
    assert d.lm1b("it costs $ 5 ( or £ 4 ) !") == "it costs $5 (or £4)!"
    assert d.lm1b('he said " hello there " and left .') == 'he said "hello there" and left.'


def test_lambada_and_scientific_papers():
    assert d.lambada("  \u201cHi,\u201d she said.  ") == '\n"Hi," she said.'
    text = "results ( see fig . 1 ) @-@ good"
    assert d.scientific_papers(text) == d.lm1b(d.wikitext(text)) == "results (see fig. 1)-good"
    assert d.detokenizer(None) is None
    with pytest.raises(ValueError, match="detokenizer is 'nope', expected one of"):
        d.detokenizer("nope")


def test_every_preset_names_a_known_detokenizer():
    for name, p in d.PRESETS.items():
        assert p.detokenizer is None or p.detokenizer in d.DETOKENIZERS, name
        assert p.split == "none" and p.convention == "wrap"


def test_preset_applies_its_detokenizer_and_field(tmp_path):
    write_jsonl(tmp_path / "ptb.jsonl", ["the company 's N shares", "a <unk> day"], field="sentence")
    meta = prepare_corpus(tmp_path / "ptb.jsonl", tmp_path / "p", tokenizer="char", preset="ptb", progress=False,
                          log=lambda *_: None)
    corpus = open_prepared(tmp_path / "p")
    stream, tok = corpus.streams["all"], corpus.tokenizer
    assert tok.decode(stream.read(0, stream.tokens).tolist()) == "the company's 1 sharesa ? day"
    assert meta["source"]["detokenizer"] == "ptb" and list(meta["splits"]) == ["all"]
    assert corpus.eval_split == "all" and corpus.blocks("all", 8).describe["preset"] == "ptb"
