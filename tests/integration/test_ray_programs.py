"""Realistic Ray programs, with only the import changed (`import ftqueue as ray`), each run
as its own process on the embedded default (its own Redis and node)."""

from __future__ import annotations

import textwrap

import pytest
from conftest import run_script

MAP_REDUCE = '''
import ftqueue as ray

ray.init(num_cpus=2)

@ray.remote(num_cpus=1)
def count_words(chunk):
    counts = {}
    for word in chunk.split():
        counts[word] = counts.get(word, 0) + 1
    return counts

@ray.remote(num_cpus=0.5)
def merge(*partials):
    total = {}
    for part in partials:
        for word, n in part.items():
            total[word] = total.get(word, 0) + n
    return total

text = ["the quick brown fox", "jumps over the lazy dog", "the end"] * 10
partials = [count_words.remote(chunk) for chunk in text]
result = ray.get(merge.remote(*partials))
assert result["the"] == 30 and result["fox"] == 10, result
assert ray.cluster_resources()["CPU"] == 2
print("ok", len(result))
'''

GENERATOR_PIPELINE = '''
import ftqueue as ray

ray.init(num_cpus=2)

@ray.remote
def read_batches(n):
    for i in range(n):
        yield list(range(i * 10, i * 10 + 10))

@ray.remote
def total(batch):
    return sum(batch)

sums = [total.remote(batch_ref) for batch_ref in read_batches.remote(5)]
assert ray.get(sums) == [sum(range(i * 10, i * 10 + 10)) for i in range(5)]

@ray.remote(num_returns=2)
def split(xs):
    return xs[::2], xs[1::2]

evens, odds = split.remote(list(range(10)))
assert ray.get(evens) == [0, 2, 4, 6, 8] and ray.get(odds) == [1, 3, 5, 7, 9]
print("ok")
'''

ASYNC_WEB_HANDLER = '''
import asyncio
import ftqueue as ray

ray.init(num_cpus=2)

@ray.remote
def predict(x):
    return x * 2

async def handle(reader, writer):
    request = (await reader.readline()).decode()
    x = int(request.split()[1].strip("/"))
    # The handler awaits refs: no thread per request, the event loop stays free.
    doubled, both = await asyncio.gather(predict.remote(x), predict.remote(x + 1))
    body = f"{doubled} {both}"
    writer.write(f"HTTP/1.0 200 OK\\r\\nContent-Length: {len(body)}\\r\\n\\r\\n{body}".encode())
    await writer.drain()
    writer.close()

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async def fetch(x):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /{x} HTTP/1.0\\r\\n\\r\\n".encode())
        await writer.drain()
        data = await reader.read()
        writer.close()
        return data.decode().split("\\r\\n\\r\\n", 1)[1]
    replies = await asyncio.gather(*[fetch(x) for x in range(20)])
    server.close()
    return replies

replies = asyncio.run(main())
assert replies == [f"{2 * x} {2 * x + 2}" for x in range(20)], replies
print("ok")
'''

STARLETTE_HANDLER = '''
import asyncio, threading, time, urllib.request
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
import ftqueue as ray
from ftqueue.embedded import free_port

ray.init(num_cpus=2)

@ray.remote
def predict(x):
    time.sleep(0.05)
    return x * 2

async def handler(request):
    x = int(request.path_params["x"])
    value = await predict.remote(x)                       # awaited in the event loop
    both = await asyncio.gather(predict.remote(x), predict.remote(x + 1))
    return JSONResponse({"value": value, "both": both})

app = Starlette(routes=[Route("/predict/{x}", handler)])
port = free_port()
server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
thread = threading.Thread(target=server.run, daemon=True)
thread.start()
while not server.started:
    time.sleep(0.01)
replies = [None] * 10
def call(i):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/predict/{i}", timeout=60) as r:
        replies[i] = r.read().decode()
callers = [threading.Thread(target=call, args=(i,)) for i in range(10)]
for c in callers:
    c.start()
for c in callers:
    c.join()
server.should_exit = True
thread.join(10)
import json
assert [json.loads(r) for r in replies] == [
    {"value": 2 * i, "both": [2 * i, 2 * i + 2]} for i in range(10)], replies
print("ok")
'''

NESTED_WITH_CPUS = '''
import ftqueue as ray

ray.init(num_cpus=1)

@ray.remote(num_cpus=1)
def leaf(i):
    return i * i

@ray.remote(num_cpus=1)
def middle(n):
    return sum(ray.get([leaf.remote(i) for i in range(n)]))

@ray.remote(num_cpus=1)
def top():
    return ray.get([middle.remote(3), middle.remote(4)])

assert ray.get(top.remote(), timeout=120) == [5, 14]
print("ok")
'''


def run(program: str) -> str:
    result = run_script(textwrap.dedent(program), timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_resource_annotated_map_reduce():
    assert run(MAP_REDUCE).startswith("ok")


def test_generator_pipeline_and_multiple_returns():
    assert run(GENERATOR_PIPELINE).strip() == "ok"


def test_asyncio_web_handler_awaiting_refs():
    assert run(ASYNC_WEB_HANDLER).strip() == "ok"


def test_starlette_handler_awaiting_refs():
    pytest.importorskip("uvicorn", reason="the dashboard extra (starlette, uvicorn) is not "
                                          "installed")
    assert run(STARLETTE_HANDLER).strip() == "ok"


def test_nested_tasks_with_num_cpus_on_a_one_cpu_node():
    assert run(NESTED_WITH_CPUS).strip() == "ok"
