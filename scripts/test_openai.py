#!/usr/bin/env python3
"""The official `openai` Python client against `ibid serve` (Gemma 3 270M, 1 thread): completions,
chat, both streamed, model listing, and a bad request surfacing as the client's BadRequestError.
Greedy answers must equal `ibid generate` for the same prompt. Drafting is off here so that every
answer is deterministic whatever the server learnt before (tests/model/serve_model.rs checks the
drafting server against `ibid generate`). Exits non-zero on any failure.

Usage: scripts/test_openai.py   (run by scripts/test.sh; needs `pip install openai`)
"""

import os
import signal
import subprocess
import sys
import tempfile

import openai

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import IBID, ROOT, model_path, start_ibid  # noqa: E402


def check(cond, what):
    if not cond:
        print(f'test_openai: FAILED: {what}', file=sys.stderr)
        sys.exit(1)
    print(f'test_openai: ok: {what}')


def main():
    model = model_path()
    env = {**os.environ, 'XDG_CACHE_HOME': tempfile.mkdtemp(prefix='ibid-openai-'), 'IBID_LOG': 'warn'}
    prompt = 'import json\n\ndef load(path):\n'
    cli = subprocess.run([IBID, '--threads', '1', 'generate', '--model', model, '--prompt', prompt,
                          '--max-tokens', '20', '--no-recycle-save', '--draft', 'none'], cwd=ROOT, env=env, capture_output=True,
                         text=True, check=True).stdout
    cli = cli[:-1] if cli.endswith('\n') else cli
    server, url = start_ibid(model, 1, ['--no-recycle-save', '--draft', 'none'], env=env)
    try:
        check(url is not None, 'ibid serve started')
        client = openai.OpenAI(base_url=url + '/v1', api_key='unused', max_retries=0, timeout=300)

        c = client.completions.create(model='gemma', prompt=prompt, max_tokens=20, temperature=0)
        check(c.choices[0].text == cli, f'greedy completion equals ibid generate ({c.choices[0].text!r})')
        check(c.usage.completion_tokens == 20 and c.choices[0].finish_reason == 'length', 'completion usage and finish')

        pieces = [ch.choices[0].text for ch in client.completions.create(
            model='gemma', prompt=prompt, max_tokens=20, temperature=0, stream=True) if ch.choices]
        check(''.join(pieces) == cli and len(pieces) > 1, f'streamed completion ({len(pieces)} chunks) equals it')

        msgs = [{'role': 'user', 'content': 'Write a haiku about the sea.'}]
        chat = client.chat.completions.create(model='gemma', messages=msgs, max_tokens=16, temperature=0)
        text = chat.choices[0].message.content
        check(chat.choices[0].message.role == 'assistant' and text, f'chat answer ({text!r})')
        streamed = client.chat.completions.create(model='gemma', messages=msgs, max_tokens=16, temperature=0,
                                                  stream=True, stream_options={'include_usage': True})
        deltas, usage = [], None
        for ch in streamed:
            if ch.usage:
                usage = ch.usage
            if ch.choices and ch.choices[0].delta.content:
                deltas.append(ch.choices[0].delta.content)
        check(''.join(deltas) == text, 'streamed chat equals the whole answer')
        check(usage is not None and usage.completion_tokens == chat.usage.completion_tokens, 'streamed usage')

        sampled = [client.completions.create(model='gemma', prompt=prompt, max_tokens=12, temperature=0.9,
                                             seed=7).choices[0].text for _ in range(2)]
        check(sampled[0] == sampled[1], 'sampling with a seed repeats')

        check(any(m.id for m in client.models.list().data), 'models list')
        try:
            client.completions.create(model='gemma', prompt=prompt, max_tokens=-3)
            check(False, 'a negative max_tokens is refused')
        except openai.BadRequestError as e:
            check('max_tokens' in str(e), 'a negative max_tokens is a BadRequestError')
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=60)
    check(code == 0, 'SIGTERM stops the server cleanly')


if __name__ == '__main__':
    main()
