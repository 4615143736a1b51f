"""Synthetic inputs: request files for prepare and the DAG, and result files for the merge."""

from __future__ import annotations

import json
import random
from json.encoder import encode_basestring_ascii
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

_WORDS = (
    "the batch api accepts a jsonl file of requests and returns the results within a day at half "
    "price which suits offline evaluation summarisation classification translation embedding "
    "pipelines nightly jobs and large backfills where latency does not matter but cost does "
    "please answer briefly and cite the paragraph you used when you are not sure say so clearly"
).split()
_EXTRA = ["café", "naïve", "résumé", "春天", "量子力学", "日本語", "Ünïcödé", "emoji🙂"]
_SYSTEMS = [
    "You are a concise assistant.",
    "You are a helpful assistant that answers in French.",
    "Answer with a JSON object.",
    "你是一个写作助手",
]
_MODELS = ["gpt-4o-mini", "gpt-4o-mini", "gpt-4o-mini", "gpt-4o"]


def _texts(rng: random.Random, count: int) -> list[str]:
    texts = []
    for _ in range(count):
        words = rng.choices(_WORDS, k=rng.randint(30, 90))
        if rng.random() < 0.2:
            words.insert(rng.randrange(len(words)), rng.choice(_EXTRA))
        texts.append(" ".join(words))
    return texts


def _body(rng: random.Random, texts: list[str], i: int, models: tuple[str, ...] | list[str] = _MODELS) -> str:
    model = models[i % len(models)]
    user = json.dumps(f"{texts[i % len(texts)]} (#{i})", ensure_ascii=False)
    messages = f'{{"role":"user","content":{user}}}'
    if i % 3 == 0:
        system = json.dumps(_SYSTEMS[i % len(_SYSTEMS)], ensure_ascii=False)
        messages = f'{{"role":"system","content":{system}}},{messages}'
    extra = ',"temperature":0.2' if i % 5 == 0 else ""
    return f'{{"model":"{model}","messages":[{messages}],"max_tokens":{64 + i % 200}{extra}}}'


def write_requests(
    path: Path,
    *,
    target_bytes: int | None = None,
    count: int | None = None,
    short_fraction: float = 0.3,
    invalid_every: int = 20000,
    seed: int = 7,
    models: tuple[str, ...] | list[str] = tuple(_MODELS),
) -> dict[str, Any]:
    """Write a chat-completions request file of about ``target_bytes`` bytes or ``count`` lines.

    Line ``i`` uses ``models[i % len(models)]``.

    About ``short_fraction`` of the lines are bare request bodies, the rest full batch lines;
    one line in ``invalid_every`` is broken JSON (0: none). Returns sizes.
    """
    rng = random.Random(seed)
    texts = _texts(rng, 4096)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    written = 0
    lines = invalid = 0
    short_every = round(1 / short_fraction) if short_fraction else 0
    with tmp.open("wb", buffering=4 * 1024 * 1024) as out:
        chunk: list[str] = []
        i = 0
        while True:
            if count is not None and lines >= count:
                break
            if target_bytes is not None and written >= target_bytes:
                break
            body = _body(rng, texts, i, models)
            if invalid_every and i % invalid_every == invalid_every - 1:
                line = body[: len(body) // 2]
                invalid += 1
            elif short_every and i % short_every == 1:
                line = body
            else:
                head = f'{{"custom_id":"req-{i:09d}","method":"POST","url":"/v1/chat/completions"'
                line = f'{head},"body":{body}}}'
            chunk.append(line)
            i += 1
            lines += 1
            if len(chunk) >= 4096:
                data = ("\n".join(chunk) + "\n").encode("utf-8")
                out.write(data)
                written += len(data)
                chunk = []
        if chunk:
            data = ("\n".join(chunk) + "\n").encode("utf-8")
            out.write(data)
            written += len(data)
    tmp.replace(path)
    return {"path": str(path), "bytes": written, "lines": lines, "invalid": invalid}


def ensure_requests(path: Path, target_bytes: int, **kwargs: Any) -> dict[str, Any]:
    """Generate the file once; reuse it while its recorded parameters match."""
    meta = path.with_suffix(".meta.json")
    wanted = {"target_bytes": target_bytes, **kwargs, "version": 2}
    if path.exists() and meta.exists():
        info = json.loads(meta.read_text())
        if info.get("params") == wanted:
            sizes = dict(info["sizes"])
            if "invalid" not in sizes:  # files written before the count was recorded
                every = kwargs.get("invalid_every", 20000)
                sizes["invalid"] = sizes["lines"] // every if every else 0
            return sizes
    sizes = write_requests(path, target_bytes=target_bytes, **kwargs)
    meta.write_text(json.dumps({"params": wanted, "sizes": sizes}))
    return sizes


def write_small_requests(path: Path, count: int, seed: int = 5) -> dict[str, Any]:
    """Write ``count`` short full batch lines (about 190 bytes each) for the scale row."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    written = 0
    with tmp.open("wb", buffering=4 * 1024 * 1024) as out:
        for start in range(0, count, 8192):
            data = "".join(
                f'{{"custom_id":"req-{i:09d}","method":"POST","url":"/v1/chat/completions","body":'
                f'{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"Summarise ticket {i}."}}],'
                f'"max_tokens":{16 + i % 64}}}}}\n'
                for i in range(start, min(count, start + 8192))
            ).encode()
            out.write(data)
            written += len(data)
    tmp.replace(path)
    return {"path": str(path), "bytes": written, "lines": count, "seed": seed}


def ensure_small_requests(path: Path, count: int) -> dict[str, Any]:
    """Generate the scale row's request file once; reuse it while the count matches."""
    meta = path.with_suffix(".meta.json")
    if path.exists() and meta.exists():
        info = json.loads(meta.read_text())
        if info.get("lines") == count and info.get("version") == 1:
            return dict(info)
    info = write_small_requests(path, count)
    info["version"] = 1
    meta.write_text(json.dumps(info))
    return info


def _completion(rng: random.Random, texts: list[str], i: int, small: bool = False) -> str:
    if small:
        content = f'"Ticket {i}: resolved."'
        return (
            f'{{"id":"chatcmpl-{i:012x}","object":"chat.completion","model":"gpt-4o-mini",'
            f'"choices":[{{"index":0,"message":{{"role":"assistant","content":{content}}},'
            f'"finish_reason":"stop"}}],"usage":{{"prompt_tokens":{12 + i % 40},"completion_tokens":5,'
            f'"total_tokens":{17 + i % 40}}}}}'
        )
    content = json.dumps(texts[i % len(texts)][: 80 + i % 300], ensure_ascii=False)
    prompt, completion = 20 + i % 300, 10 + i % 120
    return (
        f'{{"id":"chatcmpl-{i:012x}","object":"chat.completion","created":1718000000,'
        f'"model":"gpt-4o-mini-2024-07-18","choices":[{{"index":0,"message":{{"role":"assistant",'
        f'"content":{content},"refusal":null}},"logprobs":null,"finish_reason":"stop"}}],'
        f'"usage":{{"prompt_tokens":{prompt},"completion_tokens":{completion},'
        f'"total_tokens":{prompt + completion},"prompt_tokens_details":{{"cached_tokens":0}},'
        f'"completion_tokens_details":{{"reasoning_tokens":0}}}},"system_fingerprint":"fp_0123"}}'
    )


def write_results(
    directory: Path, count: int, *, outputs: int = 4, errors: int = 2, seed: int = 11, small: bool = False
) -> dict[str, Any]:
    """Write ``count`` result lines over several shuffled output and error files, plus ``order.txt``.

    About 3% of the requests end in the error files (expired, 500, 429), in the real envelope.
    """
    rng = random.Random(seed)
    texts = _texts(rng, 2048)
    directory.mkdir(parents=True, exist_ok=True)
    ids = [f"req-{i:09d}" for i in range(count)]
    with (directory / "order.txt").open("w", encoding="utf-8") as order:
        for start in range(0, count, 8192):
            order.write("".join(encode_basestring_ascii(x) + "\n" for x in ids[start : start + 8192]))
    positions = list(range(count))
    rng.shuffle(positions)
    out_files = [(directory / f"output-{n}.jsonl").open("w", encoding="utf-8") for n in range(outputs)]
    err_files = [(directory / f"errors-{n}.jsonl").open("w", encoding="utf-8") for n in range(errors)]
    total = 0
    try:
        for n, i in enumerate(positions):
            custom_id = ids[i]
            kind = i % 100
            if kind >= 3 or not err_files:
                body = _completion(rng, texts, i, small)
                line = (
                    f'{{"id":"batch_req_{i:012x}","custom_id":"{custom_id}","response":{{"status_code":200,'
                    f'"request_id":"req_{i:016x}","body":{body}}},"error":null}}\n'
                )
                target = out_files[n % len(out_files)]
            elif kind == 0:
                line = (
                    f'{{"id":"batch_req_{i:012x}","custom_id":"{custom_id}","response":null,'
                    f'"error":{{"code":"batch_expired","message":"This request could not be executed '
                    f'before the completion window expired."}}}}\n'
                )
                target = err_files[n % len(err_files)]
            else:
                status = 500 if kind == 1 else 429
                code = "server_error" if kind == 1 else "rate_limit_exceeded"
                line = (
                    f'{{"id":"batch_req_{i:012x}","custom_id":"{custom_id}","response":{{"status_code":{status},'
                    f'"request_id":"req_{i:016x}","body":{{"error":{{"message":"injected failure",'
                    f'"type":"{code}","param":null,"code":"{code}"}}}}}},"error":null}}\n'
                )
                target = err_files[n % len(err_files)]
            target.write(line)
            total += len(line.encode("utf-8")) if not line.isascii() else len(line)
    finally:
        for handle in out_files + err_files:
            handle.close()
    files = sorted(str(p) for p in directory.glob("*-*.jsonl"))
    return {"directory": str(directory), "lines": count, "bytes": total, "files": files}


def ensure_results(directory: Path, count: int, small: bool = False) -> dict[str, Any]:
    """Generate the result files once; reuse them while the line count matches."""
    meta = directory / "meta.json"
    if meta.exists():
        info = json.loads(meta.read_text())
        if info.get("lines") == count and info.get("version") == 2 and info.get("small", False) == small:
            return dict(info)
    info = write_results(directory, count, small=small)
    info["small"] = small
    info["version"] = 2
    meta.write_text(json.dumps(info))
    return info
