import asyncio
import pytest

from martlet_molt.core.stream_buffer import StreamBuffer, StreamBufferManager, StreamStatus


@pytest.mark.asyncio
async def test_stream_buffer_basic():
    """Basic buffering."""
    buffer = StreamBuffer(session_id="test-session")
    assert buffer.status == StreamStatus.PENDING
    assert buffer.full_content == ""
    buffer.start()
    assert buffer.status == StreamStatus.STREAMING
    await buffer.put("Hello ")
    await buffer.put("World!")
    assert buffer.full_content == "Hello World!"
    buffer.complete()
    assert buffer.status == StreamStatus.COMPLETED


@pytest.mark.asyncio
async def test_stream_buffer_iter():
    """The stream iterator."""
    buffer = StreamBuffer(session_id="test-session")
    buffer.start()

    async def producer():
        await asyncio.sleep(0.1)
        await buffer.put("Chunk 1")
        await asyncio.sleep(0.1)
        await buffer.put("Chunk 2")
        await asyncio.sleep(0.1)
        buffer.complete()

    task = asyncio.create_task(producer())
    chunks = []
    async for chunk in buffer.stream():
        chunks.append(chunk)
    await task
    assert chunks == ["Chunk 1", "Chunk 2"]
    assert buffer.status == StreamStatus.COMPLETED


@pytest.mark.asyncio
async def test_stream_buffer_disconnect():
    """The frontend disconnects."""
    buffer = StreamBuffer(session_id="test-session")
    buffer.start()

    async def background_task():
        for i in range(10):
            await asyncio.sleep(0.2)
            await buffer.put(f"Chunk {i}")
        buffer.complete()

    task = asyncio.create_task(background_task())
    chunks = []
    async for chunk in buffer.stream():
        chunks.append(chunk)
        if len(chunks) >= 3:
            break  # the frontend disconnects
    await task   # the background task carries on
    assert buffer.status == StreamStatus.COMPLETED
    assert buffer.full_content == "Chunk 0Chunk 1Chunk 2Chunk 3Chunk 4Chunk 5Chunk 6Chunk 7Chunk 8Chunk 9"
