"""The benchmarks' event-loop counter counts exactly what the loop runs."""

from __future__ import annotations

import asyncio

from benchmarks._loopcount import run_counted


def test_each_bare_yield_is_one_task_step_and_one_iteration() -> None:
    async def yields() -> str:
        for _ in range(10):
            await asyncio.sleep(0)
        return "done"

    result, counts = run_counted(yields)
    assert result == "done"
    # Each sleep(0) schedules one more step (the step that starts the run is not counted).
    assert counts.kinds["task step"] == 10
    assert counts.kinds["task wake-up"] == 0
    # Every step waits for the next iteration of the loop.
    assert counts.iterations == 10
    assert counts.callbacks == sum(counts.kinds.values())


def test_a_future_set_later_is_one_timer_and_one_wake_up() -> None:
    async def waits() -> int:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        loop.call_later(0.001, future.set_result, 7)
        return await future

    result, counts = run_counted(waits)
    assert result == 7
    assert counts.kinds["timer"] == 1
    assert counts.kinds["task wake-up"] == 1
    assert counts.kinds["task step"] == 0  # the wake-up runs the task's next step itself
    assert counts.callbacks == 2


def test_socket_reads_are_io_callbacks_and_events() -> None:
    async def echo() -> bytes:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(await reader.readexactly(5))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"hello")
        reply = await reader.readexactly(5)
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return reply

    result, counts = run_counted(echo)
    assert result == b"hello"
    assert counts.kinds["I/O"] >= 2  # the server read the request, the client the reply
    assert counts.events >= counts.kinds["I/O"]
    per = counts.per(1)
    assert per["callbacks"] == counts.callbacks
    assert per["events per poll"] == counts.events / counts.iterations
