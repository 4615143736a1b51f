"""A mixed request corpus for differential tests of ``prepare_requests``: common lines and odd ones."""

from __future__ import annotations

import json
import random

CHAT = "/v1/chat/completions"
EMB = "/v1/embeddings"
_WORDS = "the batch api takes a file of requests and answers within a day at half price".split()
_EXTRA = ["café", "春天", "emoji🙂", "naïve"]


def _text(rng: random.Random) -> str:
    words = rng.choices(_WORDS, k=rng.randint(3, 20))
    if rng.random() < 0.3:
        words.insert(rng.randrange(len(words)), rng.choice(_EXTRA))
    return " ".join(words)


def _body(rng: random.Random, i: int) -> str:
    model = ("gpt-4o-mini", "gpt-4o", "o3-mini")[i % 3]
    content = json.dumps(_text(rng), ensure_ascii=rng.random() < 0.2)
    extra = ',"temperature":0.2' if i % 5 == 0 else ""
    return f'{{"model":"{model}","messages":[{{"role":"user","content":{content}}}]{extra}}}'


def _full(custom_id: str, body: str, url: str = CHAT, head: str = "") -> str:
    return f'{{{head}"custom_id":{json.dumps(custom_id)},"method":"POST","url":"{url}","body":{body}}}'


def odd_lines(rng: random.Random, i: int, prefix: str) -> list[bytes]:
    """Return lines that probe one corner of the format each (some valid, most rejected)."""
    body = _body(rng, i)
    # Nesting near the recursion limit is left out: where that limit falls depends on the caller's
    # stack depth, for any parser.
    deep = 3000 + i % 7
    raw = [
        # The next line's generated id (lines are numbered from 1), taken first by an explicit id.
        _full(f"{prefix}-{i + 2}", body),
        body,
        _full(f"odd-{i}-dupkey", body, head='"custom_id":"shadowed",'),
        f'{{"custom_id":"odd-{i}-dupbody","method":"POST","url":"{CHAT}","body":5,"body":{body}}}',
        f'{{"custom_id":"odd-{i}-dupbody2","method":"POST","url":"{CHAT}","body":{body},"body":5}}',
        _full(f"odd-{i}-dupmsgs", '{"model":"m","messages":[1],"messages":[]}'),
        _full(f"odd-{i}-dupmsgs2", '{"model":"m","messages":"x","messages":[1]}'),
        _full(f"odd-{i}-nan", '{"model":"m","messages":[1],"t":NaN}'),
        _full(f"odd-{i}-inf", '{"model":"m","messages":[-Infinity]}'),
        _full(f"odd-{i}-big", '{"model":"m","messages":[1],"x":1e400}'),
        _full(f"odd-{i}-bigint", '{"model":"m","messages":[' + "7" * 4400 + "]}"),
        _full(f"odd-{i}-bigint-str", '{"model":"m","messages":["' + "7" * 4400 + '"]}'),
        _full(f"odd-{i}-deep", '{"model":"m","messages":[' + "[" * deep + "]" * deep + "]}"),
        _full(f"odd-{i}-deep-ok", '{"model":"m","messages":[' + "[" * 200 + "]" * 200 + "]}"),
        _full(f"odd-{i}-", body).replace("odd-", "odd-\\ud800", 1),
        _full(f"odd-{i}-", body).replace("odd-", "odd-\\u0000", 1),
        _full(f"odd-{i}-", body).replace("odd-", "odd-\\u00e9", 1),
        _full(f"odd-{i}-café", body),
        _full(f"odd-{i}-surrogate-body", '{"model":"m","messages":["\\udc00 x"]}'),
        _full(f"odd-{i}-get", body).replace('"POST"', '"GET"'),
        _full(f"odd-{i}-method-null", body).replace('"POST"', "null"),
        _full(f"odd-{i}-emb", '{"model":"text-embedding-3-small","input":["a","b"]}', url=EMB),
        _full(f"odd-{i}-emb-bad", '{"model":"text-embedding-3-small","input":[]}', url=EMB),
        _full(f"odd-{i}-url", body, url="/v1/nope"),
        f'{{"custom_id":"odd-{i}-nourl","method":"POST","body":{body}}}',
        f'{{"custom_id":"odd-{i}-nomethod","url":"{CHAT}","body":{body}}}',
        f'{{"custom_id":"odd-{i}-nobody","method":"POST","url":"{CHAT}"}}',
        _full(f"odd-{i}-bodystr", '"text"'),
        _full(f"odd-{i}-bodynull", "null"),
        _full(f"odd-{i}-stream", '{"model":"m","messages":[1],"stream":true}'),
        _full(f"odd-{i}-stream-false", '{"model":"m","messages":[1],"stream":false}'),
        _full(f"odd-{i}-nomsgs", '{"model":"m","messages":[]}'),
        _full(f"odd-{i}-model-empty", '{"model":"","messages":[1]}'),
        _full(f"odd-{i}-model-int", '{"model":5,"messages":[1]}'),
        _full(f"odd-{i}-toplevel-msgs", body, head='"messages":"x","model":7,"stream":true,'),
        _full("", body),
        f'{{"custom_id":{i},"method":"POST","url":"{CHAT}","body":{body}}}',
        f"  {_full(f'odd-{i}-padded', body)}  ",
        f"{_full(f'odd-{i}-trailing', body)} x",
        _full(f"odd-{i}-ctrl", '{"model":"m","messages":["a\tb"]}'),
        # Bare bodies ("short lines"): valid, odd and rejected.
        body,
        '{"model":"gpt-4o-mini","messages":[1],"stream":true}',
        '{"model":"gpt-4o-mini","messages":[]}',
        '{"model":"","messages":[1]}',
        '{"messages":[1]}',
        '{"model":"gpt-4o-mini","messages":"x"}',
        '{"model":"gpt-4o-mini","messages":[1],"custom":{"a":[1,2,{"b":null}]}}',
        f"  {body}",
        "[1, 2]",
        '"text"',
        "42",
        "{",
        "not json",
    ]
    out = [line.encode("utf-8", "surrogatepass") for line in raw]
    out += [
        b'{"model":"gpt-4o-mini","messages":["\xff\xfe"]}',
        _full(f"odd-{i}-badutf8", '{"model":"m","messages":[1],"x":"\xc0\x80"}').encode("latin-1"),
        b'{"custom_id":"odd-%d-badutf8-key","\xed\xa0\x80":1,"method":"POST","url":"%s","body":%s}'
        % (i, CHAT.encode(), body.encode()),
        b"   ",
        b"\r",
        b"",
    ]
    return out


def write_corpus(count: int, seed: int = 3, prefix: str = "corpus-0000") -> bytes:
    """Return about ``count`` lines: mostly common full and bare chat lines, odd lines among them.

    Some custom_ids repeat within a chunk of lines and across chunks; some lines end in CRLF.
    """
    rng = random.Random(seed)
    lines: list[bytes] = ['\ufeff{"model":"gpt-4o-mini","messages":[1]}'.encode()]
    ids: list[str] = []
    while len(lines) < count:
        i = len(lines)
        if i % 997 == 0:
            lines.extend(odd_lines(rng, i, prefix))
            continue
        body = _body(rng, i)
        roll = rng.random()
        if roll < 0.3:
            line = body
        elif roll < 0.31 and ids:
            line = _full(rng.choice(ids[-20:]) if rng.random() < 0.5 else rng.choice(ids), body)
        else:
            custom_id = f"req-{i:07d}"
            ids.append(custom_id)
            line = _full(custom_id, body)
        data = line.encode("utf-8")
        lines.append(data + b"\r" if rng.random() < 0.02 else data)
    return b"\n".join(lines)  # the last line has no line break
