"""Every request option a user can send gives the same tokens with DSPARK as without speculation.

Two real servers (the session pair: plain, and DSPARK with the copy drafter and
the speculation gate off, so every step drafts). Greedy requests must be
identical token for token; each must also have drafted (accept length > 1
where the drafter proposes what the constraint allows).
"""

from __future__ import annotations

import concurrent.futures as cf
import json

import pytest
import requests

from tests.serving.test_dspark_server import PROMPTS, generate

pytestmark = pytest.mark.slow

REGEX = r"(cat|dog|bird)( and (cat|dog|bird)){0,3}\."
JSON_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}
EBNF = 'root ::= "yes" | "no" | "maybe " root'

# name -> extra sampling parameters of a greedy /generate request
OPTIONS = {
    "frequency_penalty": {"frequency_penalty": 1.0},
    "frequency_penalty_0.3": {"frequency_penalty": 0.3},
    "presence_penalty": {"presence_penalty": 1.0},
    "repetition_penalty": {"repetition_penalty": 1.3},
    "penalties_combined": {"frequency_penalty": 0.5, "presence_penalty": 0.4, "repetition_penalty": 1.2},
    "ignore_eos": {"ignore_eos": True},
    "logit_bias": {"logit_bias": {"101": 4.0, "32": -2.5}},
    "regex": {"regex": REGEX},
    "json_schema": {"json_schema": json.dumps(JSON_SCHEMA)},
    "ebnf": {"ebnf": EBNF},
    "regex_with_penalty": {"regex": REGEX, "frequency_penalty": 0.7},
}


def _same(plain, spec, prompt, **params):
    ref = generate(plain, prompt, **params)
    out = generate(spec, prompt, **params)
    assert out["output_ids"] == ref["output_ids"], (prompt, params, ref["text"], out["text"])
    assert out["meta_info"]["finish_reason"] == ref["meta_info"]["finish_reason"], (prompt, params)
    return out


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_greedy_option_identical_to_plain(servers, name):
    plain, spec = servers
    accept = []
    for prompt in PROMPTS[:4]:
        out = _same(plain, spec, prompt, max_new_tokens=24, **OPTIONS[name])
        if out["meta_info"].get("spec_verify_ct"):
            accept.append(out["meta_info"]["spec_accept_length"])
    assert accept and max(accept) > 1.0, (name, accept)  # the drafts were verified, not skipped


def test_constrained_output_follows_its_grammar(servers):
    import re

    _, spec = servers
    text = generate(spec, "Pets:", max_new_tokens=40, regex=REGEX)["text"]
    assert re.fullmatch(REGEX, text), text
    # JSON: the tiny model loops on the whitespace JSON allows, so check the prefix it must start with.
    text = generate(spec, "Person:", max_new_tokens=40, json_schema=json.dumps(JSON_SCHEMA))["text"]
    assert re.match(r'\{\s*"(name|age)"', text), text


def test_min_new_tokens_holds_back_stop_tokens_inside_blocks(servers):
    plain, spec = servers
    checked = 0
    for prompt in PROMPTS[4:10]:
        ids = generate(plain, prompt, max_new_tokens=30)["output_ids"]
        stop_id = ids[3]  # would stop 4 tokens in; min_new_tokens holds it back until 12
        ref = _same(plain, spec, prompt, max_new_tokens=30, stop_token_ids=[stop_id], min_new_tokens=12)
        assert len(ref["output_ids"]) >= 12
        checked += 1
    assert checked == 6


def test_openai_response_format_json_schema(servers):
    plain, spec = servers
    body = {
        "model": "default", "max_tokens": 60, "temperature": 0,
        "messages": [{"role": "user", "content": "Describe a person."}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": JSON_SCHEMA}},
        "frequency_penalty": 0.2, "logit_bias": {"34": 3.0},
    }
    ref = requests.post(plain.url + "/v1/chat/completions", json=body, timeout=600)
    out = requests.post(spec.url + "/v1/chat/completions", json=body, timeout=600)
    assert ref.status_code == out.status_code == 200, out.text
    assert out.json()["choices"][0]["message"] == ref.json()["choices"][0]["message"]
    assert out.json()["choices"][0]["message"]["content"].startswith("{")


def test_batch_mixing_constrained_and_unconstrained_requests(servers):
    plain, spec = servers
    names = sorted(OPTIONS)
    jobs = [(PROMPTS[i % len(PROMPTS)], {"max_new_tokens": 20, **OPTIONS[names[i % len(names)]]})
            for i in range(16)]
    jobs += [(PROMPTS[i], {"max_new_tokens": 20}) for i in range(4, 8)]
    refs = [generate(plain, p, **params)["output_ids"] for p, params in jobs]
    with cf.ThreadPoolExecutor(len(jobs)) as ex:
        outs = list(ex.map(lambda job: generate(spec, job[0], **job[1])["output_ids"], jobs))
    for (prompt, params), ref, out in zip(jobs, refs, outs):
        assert out == ref, (prompt, params)


def test_stop_regex_parallel_samples_and_structural_tag(servers):
    import re

    plain, spec = servers
    for prompt in PROMPTS[:4]:
        text = generate(plain, prompt, max_new_tokens=40)["text"]
        if len(text) >= 14:
            _same(plain, spec, prompt, max_new_tokens=40, stop_regex=re.escape(text[10:13]))
    refs = requests.post(plain.url + "/generate", json={"text": PROMPTS[0], "sampling_params": {
        "temperature": 0, "max_new_tokens": 20, "n": 2}}, timeout=600).json()
    outs = requests.post(spec.url + "/generate", json={"text": PROMPTS[0], "sampling_params": {
        "temperature": 0, "max_new_tokens": 20, "n": 2}}, timeout=600).json()
    assert [o["output_ids"] for o in outs] == [r["output_ids"] for r in refs]
    tag = {"type": "structural_tag", "triggers": ["<f>"],
           "structures": [{"begin": "<f>", "schema": {"type": "object", "properties": {"a": {"type": "integer"}}},
                           "end": "</f>"}]}
    _same(plain, spec, "Call <f>", max_new_tokens=30, structural_tag=json.dumps(tag))


def test_beam_search_is_refused_with_a_400(servers):
    _, spec = servers
    r = requests.post(spec.url + "/generate", json={"text": "Hi", "sampling_params": {
        "temperature": 0, "max_new_tokens": 8, "beam_width": 2}}, timeout=600)
    assert r.status_code == 400 and "Beam search is not supported with speculative decoding" in r.text
