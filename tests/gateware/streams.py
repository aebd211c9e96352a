"""Stream helpers shared by the Amaranth-simulator tests (Glasgow's `stream_put` in spirit)."""


async def stream_put(ctx, stream, payload) -> None:
    """Offer `payload` on `stream` and wait until it is taken; `valid` stays high, so a caller
    sending back to back keeps the stream busy and clears `valid` itself when it goes idle."""
    ctx.set(stream.payload, payload)
    ctx.set(stream.valid, 1)
    await ctx.tick().until(stream.ready)
